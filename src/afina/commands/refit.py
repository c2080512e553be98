"""`afina refit SPEC [--trial N]`: train, or resume, just the refit of a swept study's winner.

`afina sweep` runs the refit by itself once the search is done; this command is for a refit that
was killed (it resumes from its last checkpoint), a multi-objective study's pick (`--trial N`),
or a budget added to the spec after the sweep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from afina import UserError, data, models, tracking
from afina.baselines import payoff
from afina.evaluation import metrics
from afina.reporting import report, run_descriptions
from afina.search import study as study_mod
from afina.search import winner_refit
from afina.tracking import logs
from afina.training import stop
from afina.training.context import TrialContext

if TYPE_CHECKING:
    from afina.spec.schema import Spec


def run(spec: Spec, console, number: int | None = None) -> dict | None:
    logs.quiet(sweep=True)
    if spec.budget is None or spec.budget.refit <= 0:
        raise UserError("the spec has no refit: add `budget: {refit: 0.5}` (or budget.steps and budget.refit) and run again")
    study = study_mod.open(spec)
    parent_id = study_mod.parent_id(study)
    if not parent_id:
        raise UserError(f"study {spec.name!r} has no sweep run yet; run `afina sweep` first")
    winner_refit.pick(study, spec, number)  # a bad --trial or a study without a winner fails before any loading
    prepared = data.prepare(spec)
    model_dir = models.resolve(spec.model.ref)
    c = study_mod.client(spec)
    experiment_id = c.get_run(parent_id).info.experiment_id
    ctx = TrialContext(
        spec, prepared, model_dir, study.study_name, spec.search.directions, c, experiment_id, parent_id, metrics.prompts(spec)
    )
    restore = stop.install_stop()  # Ctrl-C/SIGTERM: checkpoint and stop; `afina refit` again resumes
    try:
        done = winner_refit.run(ctx, study, console, number=number)
    except KeyboardInterrupt:
        console.print("Interrupted. Run `afina refit` (or `afina sweep`) again to resume the refit from its checkpoint.")
        raise
    finally:
        restore()
        c.settle()
    if done:  # the sweep's description now leads with the refit when promote will take it
        payoff.record_quietly(spec, study, c, parent_id, console)  # the refit is now the sweep's model
        spec_path = c.get_run(parent_id).data.tags.get(tracking.SPEC, "SPEC")
        run_descriptions.retell(c, study, spec, experiment_id, parent_id, spec_path, trials=False)
    report.refresh_quietly(spec, study, c, parent_id, console)
    for line in payoff.lines(study):
        console.print(line)
    return done
