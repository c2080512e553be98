"""`afina ablate SPEC`: the controlled test of every searched slice on the best trial's configuration.

Budget: `--seeds K` paired training seeds (default: search.ablate.seeds, else 3) and `--steps N` per run
(default: search.ablate.steps, else the best trial's own steps). Cost: (1 + changed slice choices) × K runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from afina import UserError
from afina.attribution import ablation, data_section
from afina.reporting import report, run_descriptions
from afina.search import preflight
from afina.search import study as study_mod
from afina.tracking import logs
from afina.training import stop
from afina.training.context import TrialContext

if TYPE_CHECKING:
    from afina.spec.schema import Spec


def run(spec: Spec, spec_path: str, console, seeds: int | None = None, steps: int | None = None) -> dict:
    if seeds is not None and seeds < 1:
        raise UserError("--seeds must be at least 1 (3 or more for an interval worth reading)")
    if steps is not None and steps < 1:
        raise UserError("--steps must be at least 1")
    logs.quiet(sweep=True)
    study = study_mod.open(spec)  # read-only first: without a study nothing is written
    parent_id = study_mod.parent_id(study)
    if not parent_id:
        raise UserError(f"study {spec.name!r} has no MLflow parent run; run `afina sweep {spec_path}` first")
    prepared, model_dir, prompts = preflight.validate(spec)
    c = study_mod.client(spec)
    experiment_id = c.get_run(parent_id).info.experiment_id
    ctx = TrialContext(spec, prepared, model_dir, study.study_name, spec.search.directions, c, experiment_id, parent_id, prompts)
    restore = stop.install_stop()  # first Ctrl-C: the running ablation run checkpoints and stops; rerun to go on
    try:
        summary = ablation.refresh(ctx, study, console, ablate=True, seeds=seeds, steps=steps, spec_path=spec_path)
    finally:
        restore()
        c.settle()
    run_descriptions.retell(c, study, spec, experiment_id, parent_id, spec_path, trials=False)  # it reads the new verdicts
    for note in summary["ablation"]["notes"]:
        console.print(f"note: {note}")
    data_section.render(console, summary, spec_path)
    if report.refresh_quietly(spec, study, c, parent_id, console):  # the report opens with the new verdicts
        console.print(f"Report: {report.path(spec)}")
    return summary
