"""The leaderboard of a study as a rich table, read from Optuna (no MLflow round trips):
what `afina status` and the end of `afina sweep` print.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from afina.search import records
from afina.search import study as study_mod

if TYPE_CHECKING:
    import optuna


def as_dict(study: optuna.Study) -> dict:
    """The leaderboard as plain data for scripts and CI (`afina status --json`); non-finite numbers become null."""
    names = study_mod.objectives(study)
    best = study_mod.best(study)
    trials = []
    for r in study_mod.rows(study):
        values = dict(zip(names, map(_finite, r["values"]), strict=True)) if r["values"] else {}
        trials.append({k: v for k, v in r.items() if k != "_key"} | {"values": values})
    base, base_run = study_mod.baseline(study)
    return {
        "study": study.study_name,
        "objectives": names,
        "directions": [d.name.lower() for d in study.directions],
        # the best trial, or the Pareto front of a multi-objective study
        "best": sorted(t.number for t in study_mod.pareto(study)) if len(names) > 1 else [best.number] if best else [],
        "baseline": {"values": {k: _finite(v) for k, v in base.items()}, "run_id": base_run} if base else None,
        "trials": trials,
    }


def _finite(v):
    return v if isinstance(v, int | float) and math.isfinite(v) else None


def table(study: optuna.Study, limit: int = 50):
    from rich.table import Table

    objectives = study_mod.objectives(study)
    all_rows = study_mod.rows(study)
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


def _base_and_front(tab, study: optuna.Study, objectives: list[str], n_params: int) -> None:
    """The untouched base model's row, the default-run reference's, the best trial's gain over the base
    and its gaps to the reference, and the Pareto front (issue 5)."""
    base, base_run = study_mod.baseline(study)
    ref = records.load(study, records.Reference)
    notes = []
    if (base or ref) and tab.rows:
        tab.rows[-1].end_section = True
    if base:
        tab.add_row(
            "base",
            "[magenta]BASELINE[/]",
            *(_fmt(base.get(o)) for o in objectives),
            *[""] * n_params,
            "-",
            base_run[:12],
        )
    if ref:
        tab.add_row(
            "ref",
            f"[magenta]REFERENCE[/] ({ref.steps} steps)",
            *(_fmt(ref.results.get(o)) for o in objectives),
            *["default"] * n_params,
            "-",
            ref.run_id[:12],
        )
    if len(study.directions) > 1:
        front = sorted(t.number for t in study_mod.pareto(study))
        notes.append(f"Pareto front: trials {', '.join(map(str, front))}" if front else "Pareto front: no completed trial yet")
    else:
        best = study_mod.best(study)
        if best is not None and base.get(objectives[0]) is not None:
            notes.append(
                f"best trial {best.number}: {objectives[0]} {best.value:.4g} vs base {base[objectives[0]]:.4g} "
                f"({best.value - base[objectives[0]]:+.4g})"
            )
    if line := study_mod.reference_summary(study):
        notes.append(line)
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
