"""The study: the Optuna study together with its MLflow parent run, objectives and trials' runs.

The one place that knows how they fit together. A study is a plain `optuna.Study`; this module
opens it (create, or read-only with the store checks), names its objectives, maps its trials to
MLflow run ids, finds the best trial / Pareto front and the runs of each role (baseline, ...), and
hands out the outage-safe MLflow client every write goes through.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from afina import UserError, tracking
from afina.search import records
from afina.spec import metric_names, space
from afina.tracking import spool, stores

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from afina.spec.schema import Search, Spec

ORDER = {"COMPLETE": 0, "RUNNING": 1, "PRUNED": 2, "FAIL": 3, "WAITING": 4}  # leaderboard order of states


DUPLICATE = "duplicate_of"  # user attr of a draw that repeated trial N's params; it is never trained


def sampler(search: Search, seed: int | None = None):
    """The spec's Optuna sampler, seeded with `seed` (this process's own stream, search/distinct.py) or search.seed."""
    import optuna

    kw: dict[str, Any] = {"seed": search.seed if seed is None else seed, **search.sampler_args}
    kinds = {"grid": optuna.samplers.GridSampler, "random": optuna.samplers.RandomSampler, "tpe": optuna.samplers.TPESampler}
    try:
        if search.sampler == "grid":
            return optuna.samplers.GridSampler(space.grid(search.space), **kw)
        return kinds[search.sampler](**kw)
    except (TypeError, ValueError) as e:
        raise UserError(f"search.sampler_args: {e}; see Optuna's {kinds[search.sampler].__name__}") from None


def pruner(search: Search, first_eval: int | None = None):
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
        stores.require_optuna(url)
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
            f"tracking.optuna_storage {tracking.redact(url)!r} is unusable ({str(e).splitlines()[0][:160]}); "
            "check the URL, server and credentials"
        ) from None


def open(spec: Spec, create: bool = False, first_eval: int | None = None) -> optuna.Study:
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
            f"study {spec.name!r} exists with directions {have}, the spec asks for {spec.search.directions}; "
            "rename the spec or keep its objective"
        )
    if study.user_attrs.get("objectives") != spec.search.objectives:
        study.set_user_attr("objectives", spec.search.objectives)
    return study


def client(spec: Spec) -> spool.Guard:
    """The MLflow client whose writes survive an outage (kept in the spool, sent later)."""
    return spool.Guard(tracking.client(spec.tracking.mlflow_uri), spool.fallback_dir(spec), spec.tracking.mlflow_uri)


def reader(uri: str):
    """A plain MLflow client for commands that only read (and write nothing a sweep depends on);
    a missing SQLite store is an error, not a new empty one."""
    stores.require_mlflow(uri)
    return tracking.client(uri)


# --- objectives -----------------------------------------------------------------------------------


def objectives(study: optuna.Study) -> list[str]:
    """The objective names the sweep recorded (value0, value1... or "objective" for older studies)."""
    n = len(study.directions)
    return study.user_attrs.get("objectives") or (["objective"] if n == 1 else [f"value{i}" for i in range(n)])


def signs(study: optuna.Study) -> list[int]:
    """+1 for an objective to minimize, -1 to maximize: `sign * value` sorts best first."""
    return [1 if d.name == "MINIMIZE" else -1 for d in study.directions]


def done(study: optuna.Study) -> list:
    """COMPLETE trials with finite values."""
    return [
        t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.values and all(math.isfinite(v) for v in t.values)
    ]


def best(study: optuna.Study, index: int = 0):
    """The best COMPLETE trial on objective `index` (lowest number on ties), or None."""
    trials = done(study)
    sign = signs(study)[index]
    return min(trials, key=lambda t: (sign * t.values[index], t.number)) if trials else None


def skipped(t) -> bool:
    """Trials that never trained: a draw that repeated an earlier trial's params (search/distinct.py), or a
    surplus one that lost the race for the last place in the budget."""
    return DUPLICATE in t.user_attrs or bool(t.user_attrs.get("surplus"))


def rows(study: optuna.Study) -> list[dict]:
    """One dict per trial, best first: completed by objective, then running, pruned, failed.
    Trials that never trained are left out."""
    sign, known = signs(study), run_ids(study)
    out = []
    for t in study.get_trials(deepcopy=False):
        if skipped(t):
            continue
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
                "reason": tracking.redact(t.user_attrs.get("fail_reason", "")),  # studies written before redaction too
                "_key": key,
            }
        )
    out.sort(key=lambda r: (ORDER.get(r["state"], 9), r["_key"], r["number"]))
    return out


def pareto(study: optuna.Study) -> list:
    """The Pareto front of a multi-objective study ([] for one objective or none complete)."""
    if len(study.directions) < 2:
        return []
    try:
        return study.best_trials
    except ValueError:
        return []


# --- trials and their MLflow runs -----------------------------------------------------------------


def run_id(trial, study: optuna.Study, known: dict[str, str] | None = None) -> str:
    """The trial's MLflow run: an offline id (the server was down when it started) maps to the real run once sent.

    known: the study's map of offline ids, read once by callers that look up many trials (one query each otherwise).
    """
    rid = trial.user_attrs.get("mlflow_run_id", "")
    return (run_ids(study) if known is None else known).get(rid, rid)


def run_ids(study: optuna.Study) -> dict[str, str]:
    """{offline run id: real run id} of runs created while the server was down."""
    return study.user_attrs.get("mlflow_run_ids", {})


def record_run_ids(study: optuna.Study, ids: dict[str, str]) -> None:
    """Remember which real MLflow runs the offline ones became (finished trials' attributes are frozen)."""
    known = run_ids(study)
    if ids and not ids.items() <= known.items():
        study.set_user_attr("mlflow_run_ids", {**known, **ids})


def parent_id(study: optuna.Study) -> str | None:
    return study.user_attrs.get("mlflow_parent_run_id")


def baseline(study: optuna.Study) -> tuple[dict[str, float], str]:
    """The untouched base model's results and its run id ({} and "" before it ran)."""
    return study.user_attrs.get("baseline") or {}, study.user_attrs.get("baseline_run_id", "")


def set_baseline(study: optuna.Study, results: dict[str, float], run_id: str) -> None:
    study.set_user_attr("baseline", results)
    study.set_user_attr("baseline_run_id", run_id)


def runs_by_role(c: MlflowClient, study: optuna.Study, role: str, experiment_ids: list[str]) -> list:
    """The study's MLflow runs tagged afina.role=ROLE (trial, baseline, ...), newest first."""
    return c.search_runs(
        experiment_ids,
        filter_string=f"tags.`{tracking.ROLE}` = '{role}' and tags.`{tracking.STUDY}` = '{study.study_name}'",
        order_by=["attributes.start_time DESC"],
    )


# --- the default-run reference (baselines/default_run.py trains it) -------------------------------------------


def reference_gaps(study: optuna.Study) -> list[dict]:
    """[{metric, best, reference, gap, n, trial}]: the best trial against the default-run reference on the
    objective and every generation metric (single-objective studies; [] without a reference)."""
    ref = records.load(study, records.Reference)
    best_trial = best(study)
    if not ref or len(study.directions) > 1 or best_trial is None:
        return []
    mine = best_trial.user_attrs.get("results") or {}
    names = objectives(study)
    names = [*names, *(k for k in sorted(ref.results) if k not in names and k not in metric_names.TRAINING)]
    return [
        {
            "metric": k,
            "best": mine[k],
            "reference": ref.results[k],
            "gap": mine[k] - ref.results[k],
            "n": ref.n.get(k),
            "trial": best_trial.number,
        }
        for k in names
        if k in mine and k in ref.results and math.isfinite(mine[k]) and math.isfinite(ref.results[k])
    ]


def reference_summary(study: optuna.Study) -> str:
    """One line: the best trial against the reference, every metric with its n."""
    rows = reference_gaps(study)
    if not rows:
        return ""
    parts = [f"{g['metric']} {g['best']:.4g} vs {g['reference']:.4g} ({g['gap']:+.4g}, n={g['n']})" for g in rows]
    steps = records.load(study, records.Reference).steps
    return f"best trial {rows[0]['trial']} vs default run ({steps} steps, 1 run each): " + "; ".join(parts)
