"""The refit: after the search, train the winning configuration with the rest of the budget.

The search's trials are short (and pruned); the model a user keeps should get the compute the
search did not spend. The refit is the winner's params trained for `budget.refit_steps` steps, as
a child run `refit-N` tagged afina.role=refit and afina.refit_of=N, through `trial.run` with a
FixedTrial: the same data mixture, seed and evaluation as every trial, checkpoints included.

Why a FixedTrial and not an extra Optuna trial: a trial of the study would be seen by the sampler
(a longer run is not a sample of the same objective), judged by the pruner against shorter trials,
counted in n_trials and ranked in the leaderboard as a search result. Kept beside the study it
touches none of that. Its state lives in the study's user attr `refit`; a killed or interrupted
refit leaves its checkpoints in `<checkpoint_dir>/<study>/refit-N`, and the next `afina sweep` (or
`afina refit`) resumes from the newest one (training/trial.py), closing the dead attempt's run.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afina import UserError, tracking
from afina.evaluation import metrics
from afina.search import budget, records
from afina.search import study as study_mod
from afina.training import distributed, resume, schedule

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from afina.spec.schema import Spec
    from afina.training.context import TrialContext


def objective_index(study: optuna.Study, spec: Spec) -> int | None:
    """The objective that picks the winner: the only one, or promote.objective (None: the user must pick)."""
    names = study_mod.objectives(study)
    if len(names) == 1:
        return 0
    return names.index(spec.promote.objective) if spec.promote.objective in names else None


def pick(study: optuna.Study, spec: Spec, number: int | None = None, command: str = "refit"):
    """The trial `afina refit` and `afina promote` start from: `number`, else the winner, the best COMPLETE trial
    on the objective that picks it (objective_index). `command` names the one to rerun with --trial N."""
    trials = study.get_trials(deepcopy=False)
    if number is not None:
        match = [t for t in trials if t.number == number]
        if not match:
            raise UserError(f"study {study.study_name!r} has no trial {number} (trials 0-{len(trials) - 1}); see `afina status`")
        if match[0].state.name != "COMPLETE":
            raise UserError(f"trial {number} is {match[0].state.name}, not COMPLETE; see `afina status`")
        return match[0]
    if not study_mod.done(study):
        raise UserError(f"study {study.study_name!r} has no COMPLETE trial yet; run `afina sweep` until one finishes")
    index = objective_index(study, spec)
    if index is None:
        raise UserError(
            f"study {study.study_name!r} has objectives {study_mod.objectives(study)}; "
            f"set promote.objective or run `afina {command} SPEC --trial N`"
        )
    return study_mod.best(study, index)


def winner(study: optuna.Study, index: int = 0) -> tuple[Any, records.Refit | None] | None:
    """The sweep's model on objective `index`, as `afina promote` takes it: (the best COMPLETE trial, its refit's
    record when the refit beats it, else None); None before any trial completed."""
    best = study_mod.best(study, index)
    return None if best is None else (best, kept_refit(study, best, index))


def kept_refit(study: optuna.Study, trial, index: int = 0) -> records.Refit | None:
    """The refit of `trial` when it beats the trial on objective `index`: then it, not the trial, is the model
    `afina promote` registers. None otherwise."""
    r = state(study)
    if r.state != "COMPLETE" or r.of != trial.number:
        return None
    sign = study_mod.signs(study)[index]
    return r if sign * r.values[index] < sign * trial.values[index] else None


def state(study: optuna.Study) -> records.Refit:
    """The study's refit record (an empty one before any refit started)."""
    return records.load(study, records.Refit) or records.Refit()


def run(ctx: TrialContext, study: optuna.Study, console, on_step=None, number: int | None = None) -> records.Refit | None:
    """Train (or resume, or skip when done) the refit; returns its record, None when there is none to run."""
    import optuna

    from afina.training import trial as trial_mod

    spec, c = ctx.spec, ctx.client
    steps = budget.refit_steps(study, spec)
    if steps <= 0:
        if spec.budget is not None and spec.budget.refit > 0:
            console.print(f"no refit: the search spent the whole budget ({budget.spent(study)} of {spec.budget.steps} steps)")
        return None
    if distributed.active():  # the other ranks would train a trial's length in a trial's folder
        console.print("the refit is not trained under torchrun; run `afina refit SPEC` in one process to train it")
        return None
    try:
        best = pick(study, spec, number)
    except UserError as e:
        if number is not None:
            raise
        console.print(f"no refit yet: {e}")  # the sweep's own trials stand
        return None
    old, me = state(study), resume.worker_id()
    if old.state == "COMPLETE" and old.of == best.number and old.steps == steps:
        return old
    if old.state == "RUNNING" and old.worker != me and resume.alive(old.worker, old.beat, spec.search.heartbeat):
        console.print(f"the refit of trial {old.of} is running on {old.worker}; this worker leaves it there")
        return None
    root = Path(spec.tracking.checkpoint_dir) / ctx.study_name
    if old.state and (old.of, old.steps) != (best.number, steps):
        shutil.rmtree(root / f"refit-{old.of}", ignore_errors=True)  # another winner or length: nothing to resume
    _close_dead(c, study, ctx.experiment_id)
    record = records.Refit(of=best.number, of_run_id=study_mod.run_id(best, study), steps=steps, state="RUNNING", worker=me)
    records.save(study, dataclasses.replace(record, beat=time.time()))
    if state(study).worker != me:  # another worker claimed it at the same moment: the last writer keeps it
        return None
    trained = best.user_attrs.get(schedule.STEPS, "?")
    console.print(f"refit of trial {best.number}: its configuration for {steps} steps (the trial trained {trained})")

    refit_spec = spec.model_copy(deep=True)
    refit_spec.train = {**spec.train, "max_steps": steps}
    params = {**best.params, **({"train.max_steps": steps} if "train.max_steps" in best.params else {})}
    fixed = optuna.trial.FixedTrial(params, best.number)
    beat, tagged = resume.pulse(study, records.Refit.ATTR, records.stored(record), spec.search.heartbeat), False

    def step(done: int, total: int) -> None:
        """The refit's heartbeat (other workers leave a live refit alone) and its tags, once its run exists."""
        nonlocal tagged
        if not tagged and fixed.user_attrs.get("mlflow_run_id"):
            _tag(c, fixed.user_attrs["mlflow_run_id"], record)
            tagged = True
        beat(run_id=fixed.user_attrs.get("mlflow_run_id", ""))
        if on_step:
            on_step(done, total)

    try:
        values = trial_mod.run(dataclasses.replace(ctx, spec=refit_spec), fixed, step, role="refit")
    except KeyboardInterrupt:
        records.save(study, dataclasses.replace(record, state="INTERRUPTED", run_id=fixed.user_attrs.get("mlflow_run_id", "")))
        raise
    except Exception as e:  # the sweep's trials stand; the refit is tried again next time
        records.save(study, dataclasses.replace(record, state="FAIL", reason=f"{type(e).__name__}: {e}"[:500]))
        console.print(f"[yellow]refit failed[/]: {type(e).__name__}: {e} (run `afina sweep` or `afina refit` again to retry)")
        return None
    run_id = fixed.user_attrs["mlflow_run_id"]
    _tag(c, run_id, record)
    done = dataclasses.replace(
        record,
        state="COMPLETE",
        run_id=run_id,
        values=list(values) if isinstance(values, list) else [values],
        results=fixed.user_attrs.get("results", {}),
        resumed_from=fixed.user_attrs.get("resumed_from", ""),
        n=sizes(spec, len(ctx.prepared.eval), ctx.prompts),
    )
    records.save(study, done)
    if ctx.parent_id:
        c.set_tag(ctx.parent_id, tracking.REFIT_RUN_ID, run_id)
        c.set_tag(ctx.parent_id, tracking.REFIT_OF, str(best.number))
    console.print(summary(study) or "")
    return done


def summary(study: optuna.Study) -> str | None:
    """One line on the refit against the trial it came from, or None before it completed."""
    r = state(study)
    if r.state != "COMPLETE":
        return f"refit of trial {r.of}: {r.state.lower()}" if r.state else None
    trial = next((t for t in study_mod.done(study) if t.number == r.of), None)
    name = study_mod.objectives(study)[0]
    vs = f" vs the trial's {trial.values[0]:.4g} ({r.values[0] - trial.values[0]:+.4g})" if trial is not None else ""
    return f"refit of trial {r.of} ({r.steps} steps, run {r.run_id[:12]}): {name} {r.values[0]:.4g}{vs}"


def sizes(spec: Spec, n_eval: int, prompts: list[dict]) -> dict[str, int]:
    """How many rows each result is measured on: eval rows for losses, prompts (with a reference if needed) otherwise."""
    with_ref = sum(1 for p in prompts if p.get("reference"))
    out = {k: n_eval for k in ("eval_loss", "train_loss")}
    for m in metrics.for_spec(spec, prompts) if prompts else []:
        out[m.name] = with_ref if m.needs_reference else len(prompts)
    if spec.evaluate.judge and prompts:
        out["judge"] = len(prompts)
    return out


# --- promotion ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Refit:
    """The refit as a promotion candidate: the trial's number and params, the refit's run and values."""

    number: int
    values: list[float]
    params: dict[str, Any]
    user_attrs: dict[str, Any]
    record: records.Refit
    state: Any = None


def prefer(study: optuna.Study, spec: Spec, trial, console):
    """The refit of `trial` when it beats the trial on the objective, else the trial itself."""
    r, index = state(study), objective_index(study, spec)
    if r.state != "COMPLETE" or r.of != trial.number or index is None:
        return trial
    name = study_mod.objectives(study)[index]
    mine, theirs = r.values[index], trial.values[index]
    if kept_refit(study, trial, index):
        console.print(
            f"the refit of trial {trial.number} ({r.steps} steps): {name} {mine:.4g} beats the trial's {theirs:.4g}; it is the candidate"
        )
        return Refit(trial.number, list(r.values), dict(trial.params), {**trial.user_attrs, "mlflow_run_id": r.run_id}, r, trial.state)
    console.print(
        f"the refit of trial {trial.number}: {name} {mine:.4g} does not beat the trial's {theirs:.4g}; the trial is the candidate"
    )
    return trial


def lineage(candidate) -> dict[str, str]:
    """Extra version tags when the candidate is a refit: its run and the trial (and run) it came from."""
    if not isinstance(candidate, Refit):
        return {f"{tracking.TAG}source": "trial"}
    r = candidate.record
    return {
        f"{tracking.TAG}source": "refit",
        tracking.REFIT_RUN_ID: r.run_id,
        tracking.REFIT_OF: str(r.of),
        tracking.REFIT_OF_RUN_ID: r.of_run_id,
        f"{tracking.TAG}refit_steps": str(r.steps),
    }


# --- helpers ----------------------------------------------------------------------------------------


def _tag(c: MlflowClient, run_id: str, record: records.Refit) -> None:
    c.set_tag(run_id, tracking.REFIT_OF, str(record.of))
    c.set_tag(run_id, tracking.REFIT_OF_RUN_ID, record.of_run_id)
    c.set_tag(run_id, f"{tracking.TAG}steps", str(record.steps))
    c.set_tag(
        run_id,
        tracking.NOTE,
        f"Refit of trial {record.of}: its configuration trained for {record.steps} steps, the rest of the sweep's budget.",
    )


def _close_dead(c: MlflowClient, study: optuna.Study, experiment_id: str) -> None:
    """Refit runs left RUNNING by a killed worker are closed as FAILED; the new attempt resumes their checkpoint."""
    if not experiment_id:
        return
    for run in study_mod.runs_by_role(c, study, "refit", [experiment_id]):
        if run.info.status == "RUNNING":
            tracking.finish(c, run.info.run_id, "FAIL", "its worker stopped (killed or interrupted); the refit is resumed in a new run")
