"""`afina sweep`: validate everything, then create or resume the Optuna study and run trials.

Order matters: spec, data, model and storage URLs are all checked before the first store is
touched, so bad input leaves no study, run or folder behind.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

from afina import check, data, distributed, metrics, models, resilience, tracking
from afina.errors import RunFailed, UserError

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def finished(study) -> int:
    """Trials that used up the budget. A trial that was interrupted, or died and was retried, does not."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    return sum(
        1
        for t in trials
        if t.state.name in FINISHED
        and t.number not in retried
        and not (t.state.name == "FAIL" and (t.user_attrs.get("interrupted") or t.user_attrs.get("surplus")))
    )


def sampler(search):
    import optuna

    from afina import space

    kw: dict[str, Any] = {"seed": search.seed, **search.sampler_args}
    kinds = {"grid": optuna.samplers.GridSampler, "random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler}
    try:
        if search.sampler == "grid":
            return optuna.samplers.GridSampler(space.grid(search.space), **kw)
        return kinds[search.sampler](**kw)
    except (TypeError, ValueError) as e:
        raise UserError(f"search.sampler_args: {e}; see Optuna's {kinds[search.sampler].__name__}") from None


def pruner(search, first_eval: int | None = None):
    """The spec's Optuna pruner. Successive halving puts its first rung on the first evaluation
    (`first_eval` steps) unless pruner_args say otherwise: Optuna's "auto" guesses 1 % of a finished
    trial's steps, which prunes nothing until a trial finishes and then stacks several rungs on the
    first evaluation (BENCHMARKS.md, search).
    """
    import optuna

    kinds = {
        "none": optuna.pruners.NopPruner,
        "median": optuna.pruners.MedianPruner,
        "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
    }
    args = dict(search.pruner_args)
    if search.pruner == "successive_halving" and first_eval:
        args.setdefault("min_resource", first_eval)
    try:
        return kinds[search.pruner](**args)
    except (TypeError, ValueError) as e:
        raise UserError(f"search.pruner_args: {e}; see Optuna's {kinds[search.pruner].__name__}") from None


def storage(url: str, heartbeat: int | None = None, read_only: bool = False):
    """Optuna RDB storage; with a heartbeat, trials of dead workers fail and are retried.

    read_only (status, promote): never create a file or tables, and skip Optuna's schema check,
    whose alembic import alone costs a few hundred milliseconds.
    """
    import optuna
    import sqlalchemy.exc

    kw: dict[str, Any] = {}
    if read_only:
        tracking.check_url(url, "optuna_storage")
        path = tracking.sqlite_path(url)
        if path is not None and not path.is_file():
            raise UserError(f"no Optuna storage at {path}; run `afina sweep` first or pass --storage")
        resilience.probe_sql(url, "optuna_storage")  # a dead server: one line, not Optuna's internal error
        kw = {"skip_compatibility_check": True, "skip_table_creation": True}
    else:
        tracking.prepare_local(url)
    if heartbeat:
        kw |= {
            "heartbeat_interval": heartbeat,
            "grace_period": heartbeat * 3,
            "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
        }
    try:
        for attempt in range(3):  # workers starting together on an empty database race to create its tables
            try:
                return optuna.storages.RDBStorage(
                    url, engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None, **kw
                )
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as e:
                if attempt == 2 or (isinstance(e, sqlalchemy.exc.OperationalError) and "already exists" not in str(e)):
                    raise
                time.sleep(1 + attempt)
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError, ImportError, ValueError) as e:
        raise UserError(
            f"tracking.optuna_storage {tracking.redact(url)!r} is unusable ({str(e).splitlines()[0][:160]}); check the URL, server and credentials"
        ) from None


def open_study(spec, create: bool, first_eval: int | None = None):
    """The spec's study; `create=False` raises when it does not exist yet."""
    import optuna

    store = storage(spec.tracking.optuna_storage, spec.search.heartbeat if create else None, read_only=not create)
    if not create:
        try:
            return optuna.load_study(study_name=spec.name, storage=store)
        except KeyError:
            raise UserError(
                f"no study named {spec.name!r} in {tracking.redact(spec.tracking.optuna_storage)}; run `afina sweep` first"
            ) from None
    study = optuna.create_study(
        storage=store,
        study_name=spec.name,
        sampler=sampler(spec.search),
        pruner=pruner(spec.search, first_eval),
        directions=spec.search.directions,
        load_if_exists=True,
    )
    have = [d.name.lower() for d in study.directions]
    if have != spec.search.directions:
        raise UserError(
            f"study {spec.name!r} exists with directions {have}, the spec asks for {spec.search.directions}; rename the spec or keep its objective"
        )
    if study.user_attrs.get("objectives") != spec.search.objectives:
        study.set_user_attr("objectives", spec.search.objectives)
    return study


def validate(spec) -> tuple[data.Prepared, Any, list[dict]]:
    """Everything that can be wrong with the input, checked before anything is written."""
    tracking.check_url(spec.tracking.mlflow_uri, "mlflow_uri")
    tracking.check_url(spec.tracking.optuna_storage, "optuna_storage")
    check_space(spec)  # values every trial would fail on, at the space's edges
    sampler(spec.search), pruner(spec.search)  # bad *_args fail here, before the study exists
    resilience.preflight(spec)  # both stores answer and the folders take files, before anything is created
    prepared = data.prepare(spec, collect=True)  # unmappable rows become check errors, listed together
    prompts = metrics.prompts(spec)
    model_dir = models.resolve(spec.model.ref)
    resilience.check_model(model_dir, spec.model.ref, spec.model.trust_remote_code)  # safetensors only, loadable
    metrics.validate(spec, prompts)  # metric names vs references, objectives, judge
    prepared.report = check.run(spec, prepared, models.load_tokenizer(model_dir, spec.model.trust_remote_code))
    if prepared.report.errors:
        first = prepared.report.errors[0]
        raise UserError(
            f"the data has {len(prepared.report.errors)} errors (first: {first}); run `afina check` on the spec to see them all"
        )
    return prepared, model_dir, prompts


def check_space(spec) -> None:
    """Build the real SFTConfig and LoraConfig at the fixed settings and at each end of every dimension
    (every categorical choice), after checking types and ranges the config classes leave to training."""
    import warnings
    from pathlib import Path

    from peft import LoraConfig
    from trl import SFTConfig

    from afina import space, trial

    types = {"train": space.field_types(SFTConfig), "lora": space.field_types(LoraConfig)}
    scratch = Path(spec.tracking.checkpoint_dir) / "afina-check"  # never created: the configs only name it
    for where, params in space.points(spec):
        train_kw, lora_kw, _ = space.apply(spec, params)
        space.check_values(train_kw, lora_kw if spec.model.method == "lora" else {}, types, where)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial.configs(spec, train_kw, lora_kw, scratch, 1)
        except (TypeError, ValueError, KeyError) as e:
            msg = " ".join(str(e).split())[:300] or type(e).__name__
            raise UserError(f"{where}: TRL/PEFT refuse these settings ({msg}); fix the train/lora values or the search range") from None


def run(spec, spec_path: str, console, progress: bool = True):
    restore = resilience.install_setup_stop()  # Ctrl-C during set-up stops the sweep, even if a library swallows it
    try:
        return _run(spec, spec_path, console, progress)
    finally:
        restore()


def _run(spec, spec_path: str, console, progress: bool = True):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from afina import compare, report, status, trial

    _quiet()
    distributed.init()  # under torchrun/accelerate: every rank trains, rank 0 alone keeps the books
    if distributed.rank() == 0:
        models.resolve(spec.model.ref)  # in a process group transformers writes files from rank 0 only
    distributed.barrier()
    prepared, model_dir, prompts = validate(spec)
    resilience.check_stop()
    if distributed.rank() > 0:
        return _follow(spec, prepared, model_dir)
    if prepared.report.warnings:
        check.render(prepared.report, console, per_kind=3, table=False)
    study = open_study(
        spec,
        create=True,
        first_eval=trial.eval_every(
            dict(spec.train), sum(map(len, prepared.slices.values())), len(prepared.eval), spec.model.method == "full"
        ),
    )
    c = resilience.Guard(
        tracking.client(spec.tracking.mlflow_uri, must_exist=False), resilience.fallback_dir(spec), spec.tracking.mlflow_uri
    )
    with _exclusive(study):  # workers starting together share one experiment, parent run and requeue
        experiment_id = tracking.experiment(c, spec.experiment, spec.tracking.artifact_root, spec.tracking.mlflow_uri)
        parent_id = tracking.parent_run(c, experiment_id, study, spec, spec_path)
        tracking.log_params(
            c,
            parent_id,
            {f"data.{k}": v for k, v in prepared.fingerprints.items()}
            | {f"rows.{n}": len(r) for n, r in prepared.slices.items()}
            | {"rows.eval": len(prepared.eval)},
        )
        check.log(prepared.report, c, parent_id)  # check/report.json and .md on the parent run
        _requeue_interrupted(study)
    ctx = {"client": c, "experiment_id": experiment_id, "parent_id": parent_id, "model_dir": model_dir, "prompts": prompts}
    resilience.check_stop()
    compare.baseline(spec, prepared, ctx, study, console)  # once per study: the base model is every leaderboard's reference
    resilience.check_stop()
    done = finished(study)
    remaining = spec.search.n_trials - done
    if remaining <= 0:
        console.print(f"[bold]{spec.name}[/]: all {spec.search.n_trials} trials are done; raise search.n_trials to run more.")
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
        transient=False,
    )
    trials_task = bar.add_task("trials", total=spec.search.n_trials, completed=done)
    steps_task = bar.add_task("steps", total=1, visible=False)

    def on_step(step: int, total: int) -> None:
        bar.update(steps_task, completed=step, total=total, visible=True)

    def objective(t):
        if spec.search.heartbeat and _surplus(study, t, spec.search.n_trials):
            t.set_user_attr("surplus", True)  # another worker took the last place at the same moment
            raise RuntimeError("surplus: the budget is already taken by other workers")
        bar.update(steps_task, description=f"trial {t.number}", completed=0, visible=True)
        return trial.run(spec, prepared, t, ctx, on_step)

    def after(study, frozen) -> None:
        c.flush()  # MLflow records kept during an outage go out once the server answers
        record_run_ids(study, c.ids)
        if frozen.user_attrs.get("surplus"):
            return
        if frozen.state.name in ("FAIL", "PRUNED"):
            why = frozen.user_attrs.get("fail_reason") or frozen.user_attrs.get("prune_reason") or ""
            bar.console.print(tracking.redact(f"trial {frozen.number} {frozen.state.name.lower()}: {why}".rstrip(": ")), markup=False)
        bar.update(trials_task, completed=finished(study), description=f"trials · best {_best_text(study)}")
        _log_best(c, parent_id, study)
        if frozen.state.name == "COMPLETE":
            report.refresh_quietly(spec, study, c, parent_id, bar.console, force=False)  # plots + report on the parent run
        if finished(study) >= spec.search.n_trials:
            study.stop()  # other workers may have filled the budget

    interrupted = False
    restore = resilience.install_stop()  # first Ctrl-C/SIGTERM: checkpoint and stop; second: stop now
    try:
        with bar:
            if remaining > 0:
                _work(study, objective, after, spec)
        interrupted = resilience.STOP.is_set()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        distributed.share(None)  # the other ranks' sweep ends with this one
        restore()
        c.set_terminated(parent_id, status="KILLED" if interrupted else "FINISHED")
        c.settle()
        if kept := resilience.pending(c.folder):
            console.print(
                f"[yellow]warning:[/] {kept} MLflow records are kept in {c.folder}; run `afina sync {spec_path}` when the server is back"
            )
    console.print(status.table(study, c))
    if report.refresh_quietly(spec, study, c, parent_id, console):
        console.print(f"Report: {report.path(spec)}")
    ui = (
        "afina ui"
        if spec.tracking.mlflow_uri == "sqlite:///mlruns/mlflow.db"
        else f"afina ui --tracking-uri {tracking.redact(spec.tracking.mlflow_uri)}"
    )
    if interrupted:
        console.print(f"Interrupted. Run `afina sweep {spec_path}` again to resume.")
        raise KeyboardInterrupt
    console.print(f"Open the runs: [bold]{ui}[/] (then http://127.0.0.1:5000)")
    if why := all_failed(study):
        raise RunFailed(why)
    return study


def all_failed(study) -> str | None:
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


def record_run_ids(study, ids: dict[str, str]) -> None:
    """Remember which real MLflow runs the offline ones became (finished trials' attributes are frozen)."""
    known = study.user_attrs.get("mlflow_run_ids", {})
    if ids and not ids.items() <= known.items():
        study.set_user_attr("mlflow_run_ids", {**known, **ids})


def _follow(spec, prepared, model_dir) -> None:
    """Ranks > 0: train what rank 0 hands out, in step with it, until it says the sweep is over."""
    from afina import compare, trial

    restore = resilience.install_stop()  # Ctrl-C reaches every rank; rank 0 decides when all of them stop
    try:
        while (msg := distributed.share(None)) is not None:
            try:
                if msg["kind"] == "baseline":
                    compare.eval_loss_of_base(spec, prepared, model_dir)
                else:
                    trial.follow(spec, prepared, msg, model_dir)
            except (Exception, KeyboardInterrupt):  # pruned, failed or stopped: rank 0 records why
                pass
    finally:
        restore()


def _work(study, objective, after, spec) -> None:
    """Take trials until the study holds n_trials, as one of possibly many workers.

    A trial starts only while finished + running trials leave room for it, so workers do not
    overshoot the budget. With no room, a worker waits while others run: one of them may die, and its
    retry (queued by Optuna's heartbeat check, which this wait runs) needs a taker.
    """
    import warnings

    import optuna

    beat, n = spec.search.heartbeat, spec.search.n_trials
    deadline = time.monotonic() + spec.search.timeout if spec.search.timeout else None
    while not resilience.STOP.is_set() and finished(study) < n:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        # WAITING trials (enqueued, requeued, retries) are not counted: optimize() takes them first.
        live = sum(t.state.name == "RUNNING" for t in study.get_trials(deepcopy=False)) if beat else 0
        if finished(study) + live < n:
            study.optimize(objective, n_trials=1, timeout=left, catch=(Exception,), callbacks=[after], gc_after_trial=True)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        time.sleep(min(beat, 5))


def _surplus(study, t, n: int) -> bool:
    """Lock-free tie-break for workers that asked for a trial at the same moment: lower numbers win.

    Queued trials (retries of dead workers, requeued interrupted ones) go before fresh ones.
    """
    trials = study.get_trials(deepcopy=False)
    me = next(x for x in trials if x.number == t.number)
    queued = "fixed_params" in me.system_attrs or "failed_trial" in me.system_attrs
    ahead = sum(
        1
        for x in trials
        if x.number != t.number
        and ((x.state.name == "RUNNING" and x.number < t.number) or (x.state.name == "WAITING" and (not queued or x.number < t.number)))
    )
    return finished(study) + ahead >= n


@contextlib.contextmanager
def _exclusive(study):
    """A PostgreSQL advisory lock on the study's name, held by one worker at a time (no-op elsewhere)."""
    import hashlib

    import sqlalchemy

    store = getattr(study._storage, "_backend", study._storage)
    engine = getattr(store, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        yield
        return
    key = int.from_bytes(hashlib.sha256(study.study_name.encode()).digest()[:7], "big")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


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
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


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
        from afina import status

        c.set_tag(parent_id, f"{tracking.TAG}best_run_id", status.run_id(best, study))
