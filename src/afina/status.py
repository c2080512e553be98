"""`afina status`: the leaderboard of a study, read from Optuna (no MLflow round trips)."""

from __future__ import annotations

import math

from afina.tracking import redact

ORDER = {"COMPLETE": 0, "RUNNING": 1, "PRUNED": 2, "FAIL": 3, "WAITING": 4}


def run_id(trial, study, known: dict[str, str] | None = None) -> str:
    """The trial's MLflow run: an offline id (the server was down when it started) maps to the real run once sent.

    known: the study's map of offline ids, read once by callers that look up many trials (one query each otherwise).
    """
    rid = trial.user_attrs.get("mlflow_run_id", "")
    return (study.user_attrs.get("mlflow_run_ids", {}) if known is None else known).get(rid, rid)


def rows(study) -> list[dict]:
    """One dict per trial, best first: completed by objective, then running, pruned, failed."""
    sign = [1 if d.name == "MINIMIZE" else -1 for d in study.directions]
    known = study.user_attrs.get("mlflow_run_ids", {})
    out = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        values = list(t.values) if t.values else []
        key = [s * v for s, v in zip(sign, values, strict=True)] if values and all(math.isfinite(v) for v in values) else [math.inf]
        out.append(
            {
                "number": t.number,
                "state": t.state.name,
                "values": values,
                "params": t.params,
                "duration": duration,
                "run_id": run_id(t, study, known),
                "reason": redact(t.user_attrs.get("fail_reason", "")),  # studies written before redaction too
                "_key": key,
            }
        )
    out.sort(key=lambda r: (ORDER.get(r["state"], 9), r["_key"], r["number"]))
    return out


def table(study, client=None, limit: int = 50):
    from rich.table import Table

    objectives = study.user_attrs.get("objectives") or [
        f"value{i}" if len(study.directions) > 1 else "objective" for i in range(len(study.directions))
    ]
    all_rows = rows(study)
    params = sorted({k for r in all_rows for k in r["params"]})
    tab = Table(title=f"{study.study_name} · {len(all_rows)} trials", header_style="bold")
    tab.add_column("#", justify="right")
    tab.add_column("state")
    for o in objectives:
        tab.add_column(o, justify="right")
    for p in params:
        tab.add_column(p.removeprefix("train.").removeprefix("lora.").removeprefix("slices."), justify="right")
    tab.add_column("time", justify="right")
    tab.add_column("mlflow run", no_wrap=True, min_width=12)  # the id people copy: never elided
    for r in all_rows[:limit]:
        vals = [f"{v:.4g}" for v in r["values"]] or ["-"] * len(objectives)
        tab.add_row(
            str(r["number"]),
            _state(r),
            *vals,
            *(_fmt(r["params"].get(p)) for p in params),
            f"{r['duration']:.0f}s" if r["duration"] is not None else "-",
            r["run_id"][:12],
        )
    _base_and_front(tab, study, objectives, len(params))
    return tab


def _base_and_front(tab, study, objectives: list[str], n_params: int) -> None:
    """The untouched base model's row, the best trial's gain over it, and the Pareto front (issue 5)."""
    base = study.user_attrs.get("baseline") or {}
    notes = []
    if base:
        if tab.rows:
            tab.rows[-1].end_section = True
        tab.add_row(
            "base",
            "[magenta]BASELINE[/]",
            *(_fmt(base.get(o)) for o in objectives),
            *[""] * n_params,
            "-",
            study.user_attrs.get("baseline_run_id", "")[:12],
        )
    if len(study.directions) > 1:
        try:
            front = sorted(t.number for t in study.best_trials)
        except ValueError:
            front = []
        notes.append(f"Pareto front: trials {', '.join(map(str, front))}" if front else "Pareto front: no completed trial yet")
    else:
        try:
            best = study.best_trial
            if base.get(objectives[0]) is not None:
                notes.append(
                    f"best trial {best.number}: {objectives[0]} {best.value:.4g} vs base {base[objectives[0]]:.4g} "
                    f"({best.value - base[objectives[0]]:+.4g})"
                )
        except ValueError:
            pass
    if notes:
        tab.caption = " · ".join(notes)


def _state(r: dict) -> str:
    colour = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan"}.get(r["state"], "white")
    return f"[{colour}]{r['state']}[/]"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
