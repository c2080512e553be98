"""`afina status`: the leaderboard of a study, read from Optuna (no MLflow round trips)."""

from __future__ import annotations

import math

ORDER = {"COMPLETE": 0, "RUNNING": 1, "PRUNED": 2, "FAIL": 3, "WAITING": 4}


def rows(study) -> list[dict]:
    """One dict per trial, best first: completed by objective, then running, pruned, failed."""
    sign = [1 if d.name == "MINIMIZE" else -1 for d in study.directions]
    out = []
    for t in study.get_trials(deepcopy=False):
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else None
        values = list(t.values) if t.values else []
        key = [s * v for s, v in zip(sign, values)] if values and all(math.isfinite(v) for v in values) else [math.inf]
        out.append({"number": t.number, "state": t.state.name, "values": values, "params": t.params, "duration": duration,
                    "run_id": t.user_attrs.get("mlflow_run_id", ""), "reason": t.user_attrs.get("fail_reason", ""), "_key": key})
    out.sort(key=lambda r: (ORDER.get(r["state"], 9), r["_key"], r["number"]))
    return out


def table(study, client=None, limit: int = 50):
    from rich.table import Table

    objectives = study.user_attrs.get("objectives") or [f"value{i}" if len(study.directions) > 1 else "objective" for i in range(len(study.directions))]
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
    tab.add_column("mlflow run")
    for r in all_rows[:limit]:
        vals = [f"{v:.4g}" for v in r["values"]] or ["-"] * len(objectives)
        tab.add_row(str(r["number"]), _state(r), *vals, *(_fmt(r["params"].get(p)) for p in params),
                    f"{r['duration']:.0f}s" if r["duration"] is not None else "-", r["run_id"][:12])
    return tab


def _state(r: dict) -> str:
    colour = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan"}.get(r["state"], "white")
    return f"[{colour}]{r['state']}[/]"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
