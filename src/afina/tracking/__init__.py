"""MLflow glue: the store, the sweep's parent run, child runs and what goes into them.

Runs are addressed by id through the client, never through the fluent active-run stack, so a
worker's state cannot leak from one trial into the next.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from afina import UserError
from afina.tracking.redaction import SECRET_KEY, mask, redact, scrub  # noqa: F401 - callers say tracking.redact

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from afina.spec.schema import Spec

# Tag names: the ones written or read in more than one place live here (users and tests filter on them).
TAG = "afina."  # prefix of every tag afina writes
NOTE = "mlflow.note.content"  # a run's description in the UI
PARENT = "mlflow.parentRunId"  # a child run's sweep run
ROLE = f"{TAG}role"  # trial | baseline | sweep | promotion | ...: what a run is
STUDY = f"{TAG}study"
TRIAL = f"{TAG}trial"  # the trial's number
STATE = f"{TAG}state"  # COMPLETE | PRUNED | FAIL | RUNNING: finer than MLflow's status
SPEC = f"{TAG}spec"  # on the sweep's run: the spec file that ran it
CHECK = f"{TAG}check"  # on the sweep's run: `afina check`'s summary
CHECKPOINT = f"{TAG}checkpoint"
DATA_FINGERPRINT = f"{TAG}data_fingerprint"
REFIT_OF = f"{TAG}refit_of"  # the trial a refit retrains
REFIT_OF_RUN_ID = f"{TAG}refit_of_run_id"
REFIT_RUN_ID = f"{TAG}refit_run_id"
RUN_ID = f"{TAG}run_id"  # on a model version: the run that trained it
FORMAT = f"{TAG}format"  # on a model version: adapter | full | merged
GATE_DECISION = f"{TAG}gate.decision"  # the promotion gate's: promoted | forced | refused
GATE_METRIC = f"{TAG}gate.metric"
GATE_SCORE = f"{TAG}gate.score"
GATE_CHAMPION_SCORE = f"{TAG}gate.champion_score"
GATE_SET_FINGERPRINT = f"{TAG}gate.set_fingerprint"


def sqlite_path(url: str) -> Path | None:
    if not url.startswith("sqlite:///") or url in ("sqlite:///", "sqlite:///:memory:"):
        return None
    return Path(url.removeprefix("sqlite:///").partition("?")[0])


def prepare_local(url: str) -> None:
    """Create the folder a SQLite URL points into (only once the spec has validated)."""
    path = sqlite_path(url)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create {path.parent} for {url} ({e.strerror}); choose a writable folder") from None


def check_url(url: str, what: str, label: str | None = None) -> None:
    label = label or f"tracking.{what}"
    try:
        scheme = urlsplit(url).scheme.split("+")[0]
    except ValueError as e:  # e.g. "Invalid IPv6 URL"
        raise UserError(f"{label} {redact(url)!r} is not a valid URL ({e})") from None
    ok = {
        "mlflow_uri": ("sqlite", "postgresql", "mysql", "http", "https", "databricks"),
        "optuna_storage": ("sqlite", "postgresql", "mysql"),
    }[what]
    if scheme not in ok:
        raise UserError(f"{label} {redact(url)!r}: unsupported scheme {scheme!r}; use one of {', '.join(ok)}")
    if scheme == "sqlite" and (sqlite_path(url) is None or str(sqlite_path(url)) in ("", ":memory:")):
        raise UserError(
            f"{label} {url!r}: an in-memory SQLite store forgets everything at exit; use a file, e.g. sqlite:///mlruns/mlflow.db"
        )
    if scheme in ("postgresql", "mysql"):
        netloc = url.partition("://")[2].partition("/")[0]
        if netloc.count("@") > 1:  # SQLAlchemy would read the rest of the password as the host name
            raise UserError(f"{label} {redact(url)!r}: the password contains '@'; write it as %40 (and '/' as %2F)")


def absolute(url: str) -> str:
    """A relative SQLite URL pinned to the current folder: MLflow caches stores by URL, so a
    relative one would keep pointing at the first project's database within one process."""
    path = sqlite_path(url)
    return f"sqlite:///{path.resolve()}" if path is not None and not path.is_absolute() else url


def client(uri: str):
    import mlflow
    from mlflow import MlflowClient

    from afina.tracking import artifacts

    uri = absolute(uri)
    artifacts.register()  # `mlflow-artifacts:/` resolves beside a SQLite store (a relocatable project)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment(c: MlflowClient, name: str, artifact_root: str, uri: str) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    from afina.tracking import artifacts

    # A server chooses its own artifact root. A local store whose artifacts sit beside it records
    # them relative to itself, so the project folder can be moved; another local root is absolute.
    if uri.startswith("http"):
        location = None
    elif artifacts.relocatable(absolute(uri), artifact_root):
        location = artifacts.ROOT
    else:
        location = Path(artifact_root).resolve().as_uri()
    return c.create_experiment(name, artifact_location=location)


def parent_run(c: MlflowClient, experiment_id: str, study, spec: Spec, spec_path: str) -> str:
    """The sweep's run: reused on resume (its id lives in the study's user attributes)."""
    run_id = study.user_attrs.get("mlflow_parent_run_id")
    if run_id:
        try:
            c.get_run(run_id)
            c.update_run(run_id, status="RUNNING")
            return run_id
        except Exception:  # the MLflow store was wiped; start a fresh parent
            pass
    run = c.create_run(
        experiment_id,
        run_name=f"sweep-{spec.name}",
        tags={
            ROLE: "sweep",
            STUDY: study.study_name,
            SPEC: spec_path,
            NOTE: redact(spec.description) or f"afina sweep of {spec.name}",
        },
    )
    study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
    log_params(
        c,
        run.info.run_id,
        {
            "model.ref": spec.model.ref,
            "model.method": spec.model.method,
            "search.n_trials": spec.search.n_trials,
            "search.sampler": spec.search.sampler,
            "search.pruner": spec.search.pruner,
            "search.objective": ",".join(spec.search.objectives),
        },
    )
    c.log_text(run.info.run_id, dump_spec(spec), "spec.yaml")
    return run.info.run_id


def child_run(c: MlflowClient, experiment_id: str, parent_id: str, study_name: str, number: int, role: str = "trial") -> str:
    """A run under the sweep's run, named ROLE-N and tagged afina.role=ROLE (trial, refit, reference...)."""
    run = c.create_run(
        experiment_id,
        run_name=f"{role}-{number}",
        tags={
            PARENT: parent_id,
            ROLE: role,
            STUDY: study_name,
            TRIAL: str(number),
            STATE: "RUNNING",
            **placement(),
        },
    )
    return run.info.run_id


def placement() -> dict[str, str]:
    """Where this run trains: the worker process, its machine and the GPUs it sees (CUDA_VISIBLE_DEVICES, which
    Ray sets for each worker of `afina sweep --workers`), so a fleet's runs say where each one ran."""
    import socket

    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    return {f"{TAG}worker": f"{socket.gethostname()}:{os.getpid()}", f"{TAG}node": socket.gethostname(), f"{TAG}gpu": gpus or "none"}


def log_params(c: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, redact(_short(mask(k, v)))) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):  # MLflow's batch limit
        c.log_batch(run_id, params=items[i : i + 100], synchronous=True)


def log_metrics(c: MlflowClient, run_id: str, metrics: dict[str, float], step: int, synchronous: bool = False) -> None:
    import time

    log_steps(c, run_id, [(step, int(time.time() * 1000), metrics)], synchronous)


def reserve(c: MlflowClient, run_id: str, names: list[str]) -> None:
    """Log `names` as NaN at step 0, before any curve. MLflow's run page lists metrics in the order they were
    first logged (SQLite keeps a row's place when it is updated), so the results written when training ends
    come first instead of after every curve. A trial that stops early keeps NaN: not measured."""
    import time

    from mlflow.entities import Metric

    ms = int(time.time() * 1000)
    c.log_batch(run_id, metrics=[Metric(k, math.nan, ms, 0) for k in names], synchronous=True)


def log_steps(c: MlflowClient, run_id: str, rows: list[tuple[int, int, dict[str, float]]], synchronous: bool = False) -> None:
    """Many (step, time in ms, metrics) rows in as few writes as MLflow allows (1000 metrics per batch)."""
    from mlflow.entities import Metric

    batch = [
        Metric(k, float(v), ms, step)
        for step, ms, metrics in rows
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and math.isfinite(v)
    ]
    for i in range(0, len(batch), 1000):
        c.log_batch(run_id, metrics=batch[i : i + 1000], synchronous=synchronous)


def finish(c: MlflowClient, run_id: str, state: str, reason: str | None = None) -> None:
    """Close a trial run: afina.state says COMPLETE/PRUNED/FAIL; MLflow status follows."""
    status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}.get(state, "KILLED")
    c.set_tag(run_id, STATE, state)
    if reason:
        c.set_tag(run_id, f"{TAG}reason", redact(reason)[:4000])
    c.set_terminated(run_id, status=status)


def _short(v: Any) -> str:
    s = v if isinstance(v, str) else json.dumps(v, default=str)
    return s if len(s) <= 6000 else s[:5997] + "..."


def dump_spec(spec: Spec, overrides: dict[str, Any] | None = None) -> str:
    import yaml

    data = scrub(spec.model_dump(mode="json", exclude={"base_dir"}))
    if overrides:
        data["trial_params"] = scrub(overrides)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def log_datasets(c: MlflowClient, run_id: str, spec: Spec, prepared, counts: dict[str, int] | None = None) -> None:
    """The data slices a run used, as MLflow dataset inputs (the runs table's Dataset column).

    `counts`: rows used per slice (a trial); None logs the eval set alone (the baseline). Best effort:
    the column is a convenience, and a failure here (an outage) must not fail the trial.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    def one(name: str, key: str, source, rows: int, context: str):
        profile = json.dumps({"num_rows": rows})
        ds = Dataset(name, prepared.fingerprints.get(key, "")[:36], "local", json.dumps({"path": str(source)}), None, profile)
        return DatasetInput(ds, [InputTag("mlflow.data.context", context)])

    inputs = [
        one(n, f"slice.{n}", spec.data.slices[n].path, rows, "training")
        for n, rows in (counts or {}).items()
        if rows and n in spec.data.slices
    ]
    inputs.append(one("eval", "eval", getattr(spec.data.eval, "path", None) or "held-out split", len(prepared.eval), "eval"))
    try:
        c.log_inputs(run_id, datasets=inputs)
    except Exception:  # only the runs table's Dataset column: a store that refuses inputs loses no result
        pass
