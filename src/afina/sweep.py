"""`afina sweep`: validate everything, then create or resume the Optuna study and run trials.

Order matters: spec, data, model and storage URLs are all checked before the first store is
touched, so bad input leaves no study, run or folder behind.
"""

from __future__ import annotations

import math
from typing import Any

from afina import data, models, tracking
from afina.errors import UserError

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def finished(study) -> int:
    """Trials that used up the budget. A trial that was interrupted, or died and was retried, does not."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    return sum(1 for t in trials if t.state.name in FINISHED and t.number not in retried
               and not (t.state.name == "FAIL" and t.user_attrs.get("interrupted")))


def sampler(search):
    import optuna

    from afina import space

    kw: dict[str, Any] = {"seed": search.seed, **search.sampler_args}
    if search.sampler == "grid":
        return optuna.samplers.GridSampler(space.grid(search.space), **kw)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(**kw)
    return optuna.samplers.TPESampler(**kw)


def pruner(search):
    import optuna

    kinds = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
             "successive_halving": optuna.pruners.SuccessiveHalvingPruner, "hyperband": optuna.pruners.HyperbandPruner}
    try:
        return kinds[search.pruner](**search.pruner_args)
    except TypeError as e:
        raise UserError(f"search.pruner_args: {e}; see Optuna's {kinds[search.pruner].__name__}") from None


def storage(url: str, heartbeat: int | None = None):
    """Optuna RDB storage; with a heartbeat, trials of dead workers fail and are retried."""
    import optuna
    import sqlalchemy.exc

    tracking.prepare_local(url)
    kw: dict[str, Any] = {}
    if heartbeat:
        kw = {"heartbeat_interval": heartbeat, "grace_period": heartbeat * 3,
              "failed_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3)}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None, **kw)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        raise UserError(f"tracking.optuna_storage {tracking.redact(url)!r} is unusable ({str(e).splitlines()[0][:160]}); check the URL, server and credentials") from None


def open_study(spec, create: bool):
    """The spec's study; `create=False` raises when it does not exist yet."""
    import optuna

    store = storage(spec.tracking.optuna_storage, spec.search.heartbeat if create else None)
    if not create:
        try:
            return optuna.load_study(study_name=spec.name, storage=store)
        except KeyError:
            raise UserError(f"no study named {spec.name!r} in {tracking.redact(spec.tracking.optuna_storage)}; run `afina sweep` first") from None
    study = optuna.create_study(storage=store, study_name=spec.name, sampler=sampler(spec.search), pruner=pruner(spec.search),
                                directions=spec.search.directions, load_if_exists=True)
    have = [d.name.lower() for d in study.directions]
    if have != spec.search.directions:
        raise UserError(f"study {spec.name!r} exists with directions {have}, the spec asks for {spec.search.directions}; rename the spec or keep its objective")
    if study.user_attrs.get("objectives") != spec.search.objectives:
        study.set_user_attr("objectives", spec.search.objectives)
    return study


def validate(spec) -> tuple[data.Prepared, Any, list[dict]]:
    """Everything that can be wrong with the input, checked before anything is written."""
    tracking.check_url(spec.tracking.mlflow_uri, "mlflow_uri")
    tracking.check_url(spec.tracking.optuna_storage, "optuna_storage")
    prepared = data.prepare(spec)
    prompts = data.prompts(spec)
    model_dir = models.resolve(spec.model.ref)
    return prepared, model_dir, prompts


def run(spec, spec_path: str, console, progress: bool = True):
    import optuna
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from afina import status, trial

    prepared, model_dir, prompts = validate(spec)
    _quiet()
    study = open_study(spec, create=True)
    c = tracking.client(spec.tracking.mlflow_uri)
    experiment_id = tracking.experiment(c, spec.experiment, spec.tracking.artifact_root, spec.tracking.mlflow_uri)
    parent_id = tracking.parent_run(c, experiment_id, study, spec, spec_path)
    tracking.log_params(c, parent_id, {f"data.{k}": v for k, v in prepared.fingerprints.items()}
                        | {f"rows.{n}": len(r) for n, r in prepared.slices.items()} | {"rows.eval": len(prepared.eval)})
    _requeue_interrupted(study)
    ctx = {"client": c, "experiment_id": experiment_id, "parent_id": parent_id, "model_dir": model_dir, "prompts": prompts}
    done = finished(study)
    remaining = spec.search.n_trials - done
    if remaining <= 0:
        console.print(f"[bold]{spec.name}[/]: all {spec.search.n_trials} trials are done; raise search.n_trials to run more.")
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, disable=not progress, transient=False)
    trials_task = bar.add_task("trials", total=spec.search.n_trials, completed=done)
    steps_task = bar.add_task("steps", total=1, visible=False)

    def on_step(step: int, total: int) -> None:
        bar.update(steps_task, completed=step, total=total, visible=True)

    def objective(t):
        bar.update(steps_task, description=f"trial {t.number}", completed=0, visible=True)
        return trial.run(spec, prepared, t, ctx, on_step)

    def after(study, frozen) -> None:
        if frozen.state.name in ("FAIL", "PRUNED"):
            why = frozen.user_attrs.get("fail_reason") or frozen.user_attrs.get("prune_reason") or ""
            bar.console.print(f"trial {frozen.number} {frozen.state.name.lower()}: {why}".rstrip(": "))
        bar.update(trials_task, completed=finished(study), description=f"trials · best {_best_text(study)}")
        _log_best(c, parent_id, study)
        if finished(study) >= spec.search.n_trials:
            study.stop()  # other workers may have filled the budget

    interrupted = False
    try:
        with bar:
            if remaining > 0:
                study.optimize(objective, n_trials=remaining, timeout=spec.search.timeout, catch=(Exception,),
                               callbacks=[after], gc_after_trial=True)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        c.set_terminated(parent_id, status="KILLED" if interrupted else "FINISHED")
    console.print(status.table(study, c))
    ui = "afina ui" if spec.tracking.mlflow_uri == "sqlite:///mlruns/mlflow.db" else f"afina ui --tracking-uri {tracking.redact(spec.tracking.mlflow_uri)}"
    if interrupted:
        console.print(f"Interrupted. Run `afina sweep {spec_path}` again to resume.")
        raise KeyboardInterrupt
    console.print(f"Open the runs: [bold]{ui}[/] (then http://127.0.0.1:5000)")
    return study


def _quiet() -> None:
    """Our progress display and MLflow are the output: silence library chatter and per-trial tracebacks."""
    import logging
    import warnings

    import optuna
    import transformers

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def _requeue_interrupted(study) -> None:
    """An interrupted trial is run again with the same params by the next sweep."""
    requeued = set(study.user_attrs.get("requeued", []))
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "FAIL" and t.user_attrs.get("interrupted") and t.number not in requeued:
            study.enqueue_trial(t.params, user_attrs={"resumes_trial": t.number})
            requeued.add(t.number)
            study.set_user_attr("requeued", sorted(requeued))


def _best_text(study) -> str:
    try:
        if len(study.directions) > 1:
            return f"{len(study.best_trials)} on the Pareto front"
        return f"{study.best_value:.4g} (trial {study.best_trial.number})"
    except ValueError:
        return "-"


def _log_best(c, parent_id: str, study) -> None:
    if len(study.directions) > 1:
        tracking.log_metrics(c, parent_id, {"pareto_size": len(study.best_trials)}, finished(study), synchronous=True)
        return
    try:
        best = study.best_trial
    except ValueError:
        return
    if best.value is not None and math.isfinite(best.value):
        tracking.log_metrics(c, parent_id, {"best_value": best.value}, finished(study), synchronous=True)
        c.set_tag(parent_id, f"{tracking.TAG}best_trial", str(best.number))
        c.set_tag(parent_id, f"{tracking.TAG}best_run_id", best.user_attrs.get("mlflow_run_id", ""))
