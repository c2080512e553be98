"""`afina sweep`: validate everything, then create or resume the Optuna study and run trials.

Order matters: spec, data, model and storage URLs are all checked before the first store is
touched, so bad input leaves no study, run or folder behind. The trials themselves are taken by
search/worker_loop.py, as one of possibly many workers on the study.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from afina import RunFailed, models, tracking
from afina.baselines import base_model, default_run, payoff
from afina.data import health_report
from afina.evaluation import metrics
from afina.reporting import leaderboard, report, run_descriptions
from afina.search import budget, distinct, winner_refit
from afina.search import study as study_mod
from afina.search.preflight import validate  # also `sweep.validate` for callers
from afina.search.worker_loop import exclusive, finished, requeue_interrupted, surplus, work
from afina.spec import defaults, space
from afina.tracking import logs, samples, spool
from afina.training import device, distributed, schedule, stop
from afina.training.context import TrialContext

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient
    from rich.progress import Progress, TaskID

    from afina.spec.schema import Spec


def run(spec: Spec, spec_path: str, console, progress: bool = True):
    restore = stop.install_setup_stop()  # Ctrl-C during set-up stops the sweep, even if a library swallows it
    try:
        return _run(spec, spec_path, console, progress)
    finally:
        restore()


def _run(spec: Spec, spec_path: str, console, progress: bool = True):
    """The phases, in order: validate, open the study, search, refit, judge against a default run, ablate, report."""
    prepared, model_dir, prompts = _validate(spec)
    if distributed.rank() > 0:
        return _follow(TrialContext(spec, prepared, model_dir, spec.name, spec.search.directions, lead=False))
    ctx, study, length, seed = _open(spec, spec_path, console, prepared, model_dir, prompts)
    bars = _Bars.start(console, spec, finished(study), progress)
    interrupted = False
    restore = stop.install_stop()  # first Ctrl-C/SIGTERM: checkpoint and stop; second: stop now
    try:
        with bars.progress:
            ended = _search(ctx, study, bars, length, seed, spec_path)
            if ended:
                winner_refit.run(ctx, study, bars.progress.console, bars.on_step)  # budget: the winner trained with the rest
        interrupted = stop.STOP.is_set()
        if not interrupted and ended:
            interrupted = _judge(ctx, study, console)
        if not interrupted:
            from afina.attribution import ablation

            ablation.after_sweep(ctx, study, console, spec_path)  # regression; the ablation if search.ablate
    except KeyboardInterrupt:
        interrupted = True
    finally:
        _close(ctx, interrupted, console, spec_path)
        restore()
    return _report(ctx, study, console, spec_path, interrupted)


def _validate(spec: Spec) -> tuple:
    """Everything checked before a store is touched (search/preflight.py); every rank of a torchrun group joins here."""
    logs.quiet(sweep=True)
    distributed.init()  # under torchrun/accelerate: every rank trains, rank 0 alone keeps the books
    if distributed.rank() == 0:
        models.resolve(spec.model.ref)  # in a process group transformers writes files from rank 0 only
    distributed.barrier()
    found = validate(spec)
    stop.check_stop()
    return found


def _open(spec: Spec, spec_path: str, console, prepared, model_dir, prompts) -> tuple[TrialContext, optuna.Study, int, int]:
    """The study (created or resumed), its experiment and parent run, this worker's sampler, and the base model's row."""
    if prepared.report.warnings:
        health_report.render(prepared.report, console, per_kind=3, table=False)
    rows = sum(map(len, prepared.slices.values()))
    length = budget.trial_steps(spec, rows)  # one trial's steps, for the budget
    budget.check(spec, length)
    first_eval = schedule.eval_every(dict(spec.train), rows, len(prepared.eval), spec.model.method == "full")
    study = study_mod.open(spec, create=True, first_eval=first_eval)
    c = study_mod.client(spec)
    # workers starting together share one experiment, parent run and requeue
    with exclusive(spec.tracking.optuna_storage, study.study_name):
        experiment_id = tracking.experiment(c, spec.experiment, spec.tracking.artifact_root, spec.tracking.mlflow_uri)
        parent_id = tracking.parent_run(c, experiment_id, study, spec, spec_path)
        tracking.log_params(
            c,
            parent_id,
            {f"data.{k}": v for k, v in prepared.fingerprints.items()}
            | {f"rows.{n}": len(r) for n, r in prepared.slices.items()}
            | {"rows.eval": len(prepared.eval)},
        )
        health_report.log(prepared.report, c, parent_id)  # check/report.json and .md on the parent run
        run_descriptions.set_view(c, experiment_id, spec, metrics.headline(spec, prompts))  # the runs table's columns (the printed link)
        requeue_interrupted(study)
        seed = distinct.stream_seed(study, spec.search.seed)  # this process's own stream: no repeated draws
        study.sampler = study_mod.sampler(spec.search, seed)
    ctx = TrialContext(spec, prepared, model_dir, study.study_name, spec.search.directions, c, experiment_id, parent_id, prompts)
    stop.check_stop()
    base_model.run(ctx, study, console)  # once per study: the base model is every leaderboard's reference
    stop.check_stop()
    ctx.base_answers = samples.answers(c, study_mod.baseline(study)[1])  # beside each trial's answers
    if finished(study) >= spec.search.n_trials:
        console.print(f"[bold]{spec.name}[/]: all {spec.search.n_trials} trials are done; raise search.n_trials to run more.")
    return ctx, study, length, seed


@dataclass
class _Bars:
    """The live view: trials done of the plan, and the running trial's (or the refit's) steps."""

    progress: Progress
    trials: TaskID
    steps: TaskID

    @classmethod
    def start(cls, console, spec: Spec, done: int, show: bool) -> _Bars:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        bar = Progress(*cols, console=console, disable=not show, transient=False)
        return cls(bar, bar.add_task("trials", total=spec.search.n_trials, completed=done), bar.add_task("steps", total=1, visible=False))

    def on_step(self, step: int, total: int) -> None:
        self.progress.update(self.steps, completed=step, total=total, visible=True)


def _search(ctx: TrialContext, study: optuna.Study, bars: _Bars, length: int, seed: int, spec_path: str) -> bool:
    """This worker's share of the trials (search/worker_loop.py); True when the search is over, not just stopped."""
    from afina.training import trial  # imports transformers: only when a sweep runs

    spec, c, console = ctx.spec, ctx.client, bars.progress.console
    streak = [0]  # duplicate draws in a row

    def objective(t):
        if spec.search.heartbeat and surplus(study, t, spec.search.n_trials):
            t.set_user_attr("surplus", True)  # another worker took the last place at the same moment
            raise RuntimeError("surplus: the budget is already taken by other workers")
        distinct.check(study, t, space.suggest(t, spec.search.space))  # a repeated draw is skipped, untrained
        bars.progress.update(bars.steps, description=f"trial {t.number}", completed=0, visible=True)
        return trial.run(ctx, t, bars.on_step)

    def after(study, frozen) -> None:
        c.flush()  # MLflow records kept during an outage go out once the server answers
        study_mod.record_run_ids(study, c.ids)
        streak[0] = streak[0] + 1 if study_mod.DUPLICATE in frozen.user_attrs else 0
        if study_mod.skipped(frozen):
            return
        if frozen.state.name in ("FAIL", "PRUNED"):
            why = frozen.user_attrs.get("fail_reason") or frozen.user_attrs.get("prune_reason") or ""
            console.print(tracking.redact(f"trial {frozen.number} {frozen.state.name.lower()}: {why}".rstrip(": ")), markup=False)
        bars.progress.update(bars.trials, completed=finished(study), description=f"trials · best {_best_text(study)}")
        _log_best(c, ctx.parent_id, study)
        run_descriptions.retell(c, study, spec, ctx.experiment_id, ctx.parent_id, spec_path, trials=False)
        run_descriptions.tell_trial(c, study, frozen, ctx.experiment_id)  # pruned or failed: why; all ranks are retold at the end
        if frozen.state.name == "COMPLETE":
            report.refresh_quietly(spec, study, c, ctx.parent_id, console, force=False)  # plots + report on the parent run
        if finished(study) >= spec.search.n_trials:
            study.stop()  # other workers may have filled the budget

    why = None
    if finished(study) < spec.search.n_trials and (why := work(study, objective, after, spec, length, streak, seed)):
        console.print(why)
    return not stop.STOP.is_set() and bool(why or finished(study) >= spec.search.n_trials or not budget.room(study, spec, length))


def _judge(ctx: TrialContext, study: optuna.Study, console) -> bool:
    """The search and refit are over: a default run of their total steps, and whether the sweep beat it. True if stopped."""
    default_run.record_spent(study)
    if distributed.active() and ctx.spec.baseline.default_run:
        console.print("the default-run reference is not trained under torchrun; run `afina sweep` in one process to add it")
    else:
        default_run.run(ctx, study, console)
    payoff.record_quietly(ctx.spec, study, ctx.client, ctx.parent_id, console)  # the sweep's model vs the default run, once both exist
    return stop.STOP.is_set()


def _close(ctx: TrialContext, interrupted: bool, console, spec_path: str) -> None:
    """The parent run is closed even if Ctrl-C is pressed again now; the other ranks' sweep ends with this one."""
    c = ctx.client
    with stop.shield():
        distributed.share(None)
        c.set_terminated(ctx.parent_id, status="KILLED" if interrupted else "FINISHED")
        c.settle()
    if kept := spool.pending(c.folder):
        console.print(
            f"[yellow]warning:[/] {kept} MLflow records are kept in {c.folder}; run `afina sync {spec_path}` when the server is back"
        )


def _report(ctx: TrialContext, study: optuna.Study, console, spec_path: str, interrupted: bool) -> optuna.Study:
    """Final ranks in every description, the leaderboard, the report, the did-it-pay lines and where to look."""
    spec, c = ctx.spec, ctx.client
    run_descriptions.retell(c, study, spec, ctx.experiment_id, ctx.parent_id, spec_path)
    console.print(leaderboard.table(study))
    if report.refresh_quietly(spec, study, c, ctx.parent_id, console):
        console.print(f"Report: {report.path(spec)}")
    for line in payoff.lines(study):  # the refit, and whether the sweep beat a default run of equal compute
        console.print(line)
    if interrupted:
        console.print(f"Interrupted. Run `afina sweep {spec_path}` again to resume.")
        raise KeyboardInterrupt
    ui = (
        "afina ui"
        if spec.tracking.mlflow_uri == defaults.MLFLOW_URI
        else f"afina ui --tracking-uri {tracking.redact(spec.tracking.mlflow_uri)}"
    )
    console.print(f"Open the runs: [bold]{ui}[/], then {run_descriptions.link(ctx.experiment_id)}", soft_wrap=True)
    if why := all_failed(study):
        raise RunFailed(why)
    return study


def all_failed(study: optuna.Study) -> str | None:
    """Why the sweep achieved nothing, when no trial of the study completed or was pruned and some failed."""
    from collections import Counter

    trials = study.get_trials(deepcopy=False)
    if any(t.state.name in ("COMPLETE", "PRUNED") for t in trials):
        return None
    reasons = Counter(
        tracking.redact(t.user_attrs.get("fail_reason") or "no reason recorded")
        for t in trials
        if t.state.name == "FAIL" and not (t.user_attrs.get("surplus") or t.user_attrs.get("interrupted"))
    )
    if not reasons:
        return None
    (reason, n), total = reasons.most_common(1)[0], sum(reasons.values())
    same = "for the same reason" if n == total else f"({n} of them for this reason)"
    return f"all {total} trials failed {same}: {reason}; see error.txt on a trial's MLflow run"


def _follow(ctx: TrialContext) -> None:
    """Ranks > 0: train what rank 0 hands out, in step with it, until it says the sweep is over."""
    import optuna

    from afina.training import trial  # imports transformers

    restore = stop.install_stop()  # Ctrl-C reaches every rank; rank 0 decides when all of them stop
    try:
        while (msg := distributed.share(None)) is not None:
            try:
                if msg["kind"] == "baseline":
                    base_model.eval_loss_of_base(ctx)
                else:
                    ctx.study_name, ctx.directions = msg["study"], msg["directions"]
                    trial.follow(ctx, msg)
            except (optuna.TrialPruned, KeyboardInterrupt) as e:  # rank 0 records why
                device.release(e)  # no optimize() loop collects after a follower's trial: the next must not train beside this one's memory
            except Exception as e:  # rank 0 fails the trial and records the reason; this rank goes on with the next
                logging.getLogger(__name__).warning("rank %d: %s: %s", distributed.rank(), type(e).__name__, e)
                device.release(e)
    finally:
        restore()


def _best_text(study: optuna.Study) -> str:
    if len(study.directions) > 1:
        return f"{len(study_mod.pareto(study))} on the Pareto front"
    best = study_mod.best(study)
    return f"{best.value:.4g} (trial {best.number})" if best is not None else "-"


def _log_best(c: MlflowClient, parent_id: str, study: optuna.Study) -> None:
    if len(study.directions) > 1:
        tracking.log_metrics(c, parent_id, {"pareto_size": len(study_mod.pareto(study))}, finished(study), synchronous=True)
        return
    best = study_mod.best(study)
    if best is not None:
        tracking.log_metrics(c, parent_id, {"best_value": best.value}, finished(study), synchronous=True)
        c.set_tag(parent_id, f"{tracking.TAG}best_trial", str(best.number))
        c.set_tag(parent_id, f"{tracking.TAG}best_run_id", study_mod.run_id(best, study))
