"""Survive faults: a graceful first Ctrl-C, MLflow outages, and stores checked before use.

- `install_stop()`: the first Ctrl-C or SIGTERM asks the running trial to checkpoint and stop after
  its current step (the trial is then resumed by the next `afina sweep`); a second one stops at once.
- `Guard`: the MLflow client, except that a write which still fails after MLflow's own HTTP retries
  goes to a local JSONL fallback (one warning), so training never stops for the tracking server.
  A trial that starts while the server is down gets an `offline-…` run id; its run is created
  when the records are replayed, and the study remembers which real run that became.
  The fallback is replayed after each trial once the server answers again, or by `afina sync`.
- `preflight()`: reach both stores and the local folders before the study or a run is created, so a
  bad URL is one line and exit code 2, with nothing half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from afina import tracking
from afina.errors import UserError

STOP = threading.Event()  # set by the first Ctrl-C/SIGTERM; trial._Watch checkpoints and stops


def install_setup_stop():
    """Before the first trial, Ctrl-C or SIGTERM stops the sweep at once, and also sets STOP.

    A KeyboardInterrupt that lands inside a finaliser or callback (a `__del__`, a weakref or GC
    callback during model loading, tokenizing or a store's connection clean-up) is printed by Python as
    "Exception ignored in ..." and dropped, and the sweep went on to run every trial. STOP survives
    that: `check_stop()` between the set-up steps, and the trial loop, see it. Returns the undo function.
    """
    STOP.clear()
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        STOP.set()
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in old.items()]


def check_stop() -> None:
    """Raise the interrupt a library may have swallowed during set-up."""
    if STOP.is_set():
        raise KeyboardInterrupt


def install_stop():
    """First SIGINT/SIGTERM: graceful stop. Second: KeyboardInterrupt now. Returns the undo function.

    STOP is not cleared here: an interrupt during set-up (install_setup_stop) must still stop the sweep."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, frame):
        if STOP.is_set():
            raise KeyboardInterrupt
        STOP.set()
        sys.stderr.write("\nstopping: the running trial saves a checkpoint and stops after this step; press Ctrl-C again to stop at once\n")

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(s, h) for s, h in old.items()]


# --- MLflow outages -------------------------------------------------------------------------------

WRITES = ("log_batch", "set_tag", "set_terminated", "log_text", "log_artifacts", "log_table", "update_run")
OFFLINE = "offline-"  # run ids handed out while the server was down; real ones replace them on replay
# Errors that replaying cannot fix: re-raise them instead of buffering.
PERMANENT = (
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "INVALID_STATE",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "BAD_REQUEST",
)


def fallback_dir(spec) -> Path:
    return Path(spec.tracking.checkpoint_dir).parent / "fallback"


class Guard:
    """MlflowClient whose writes never raise for an outage: failed ones are kept in `folder`."""

    def __init__(self, client, folder: Path, uri: str):
        self._c, self.folder, self.uri = client, Path(folder), uri
        self._pending: list[tuple[Any, tuple, dict]] = []  # async log_batch calls not yet confirmed
        self._down_at: float | None = None
        self.ids: dict[str, str] = {}  # offline run id -> the real one, once replayed

    def create_run(self, experiment_id: str, **kw):
        """A real run, or while the server is down an offline id whose creation waits in the fallback."""
        from types import SimpleNamespace

        if self._down_at is None or self._back():
            self.settle()
            try:
                return self._c.create_run(experiment_id, **kw)
            except Exception as e:
                self._failed(e, "create_run", (experiment_id,), kw, keep=False)
        run_id = OFFLINE + uuid.uuid4().hex
        self._keep("create_run", (run_id, experiment_id), kw, None)
        return SimpleNamespace(info=SimpleNamespace(run_id=run_id))

    def __getattr__(self, name):
        attr = getattr(self._c, name)
        if name not in WRITES:
            return attr
        return lambda *args, **kw: self._write(name, attr, args, kw)

    def _write(self, name, fn, args, kw):
        run_id = str(kw.get("run_id") or args[0])
        if run_id.startswith(OFFLINE):  # its run exists only once the fallback is replayed
            if run_id not in self.ids:
                return self._keep(name, args, kw, None)
            if "run_id" in kw:
                kw = {**kw, "run_id": self.ids[run_id]}
            else:
                args = (self.ids[run_id], *args[1:])
        if self._down_at is not None and not self._back():
            return self._keep(name, args, kw, None)
        if name == "log_batch" and kw.get("synchronous") is False:
            try:
                self._pending.append((fn(*args, **kw), args, kw))  # MLflow's queue retries in its thread
            except Exception as e:
                self._failed(e, name, args, kw)
            return None
        self.settle()
        try:
            return fn(*args, **kw)
        except Exception as e:
            return self._failed(e, name, args, kw)

    def settle(self) -> None:
        """Wait for queued metric batches; those that failed go to the fallback."""
        pending, self._pending = self._pending, []
        for ops, args, kw in pending:
            try:
                if ops is not None:
                    ops.wait()
            except Exception as e:
                self._failed(e, "log_batch", args, kw)

    def _failed(self, e: Exception, name: str, args, kw, keep: bool = True):
        if getattr(e, "error_code", None) in PERMANENT:
            raise e
        if self._down_at is None:
            first = tracking.redact(str(e).splitlines()[0] if str(e) else type(e).__name__)[:200]
            sys.stderr.write(
                f"warning: MLflow at {tracking.redact(self.uri)} is unreachable ({first}); training goes on and "
                f"its records are kept in {self.folder}; they are sent when it answers again, or run `afina sync`\n"
            )
        self._down_at = time.monotonic()
        return self._keep(name, args, kw, e) if keep else None

    def _back(self) -> bool:
        if time.monotonic() - self._down_at < 10:
            return False
        if reachable(self.uri):
            self._down_at = None
            return True
        self._down_at = time.monotonic()
        return False

    def _keep(self, name: str, args, kw, error) -> None:
        run_id = kw.get("run_id") or args[0]
        rest, kw = list(args[1:]), {k: v for k, v in kw.items() if k != "run_id"}
        if name == "log_batch":
            kw = {
                "metrics": [[m.key, m.value, m.timestamp, m.step] for m in kw.get("metrics", ())],
                "params": [[p.key, p.value] for p in kw.get("params", ())],
                "tags": [[t.key, t.value] for t in kw.get("tags", ())],
            }
        elif name == "log_artifacts":  # the local folder is scratch space that goes away: keep a copy
            copy = self.folder / "files" / uuid.uuid4().hex
            shutil.copytree(rest[0], copy)
            rest[0] = str(copy)
        elif name in ("set_terminated", "create_run"):
            kw.setdefault("end_time" if name == "set_terminated" else "start_time", int(time.time() * 1000))
        elif name == "log_table" and hasattr(rest[0], "to_dict"):
            rest[0] = rest[0].to_dict(orient="list")
        self.folder.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"op": name, "run_id": run_id, "args": rest, "kw": kw}, default=str)
        with (self.folder / f"{run_id}.{os.getpid()}.jsonl").open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        return None

    def flush(self) -> int:
        """After a trial: settle queued batches, then replay the fallback if the server answers."""
        self.settle()
        if self._down_at is not None and not self._back():
            return 0
        try:
            sent, ids = replay(self.folder, self._c)
        except Exception:  # still down: keep everything for later
            return 0
        self.ids |= ids
        return sent


def pending(folder: Path) -> int:
    return sum(1 for p in Path(folder).glob("*.jsonl") for _ in p.open(encoding="utf-8")) if Path(folder).is_dir() else 0


def replay(folder: Path, client) -> tuple[int, dict[str, str]]:
    """Send kept records to MLflow in order; each file is claimed by renaming it, so workers never double-send.

    Returns how many were sent, and the real run ids of runs created offline ({offline id: real id}).
    """
    from mlflow.entities import Metric, Param, RunTag

    sent, ids = 0, {}
    for path in sorted(Path(folder).glob("*.jsonl"), key=lambda p: p.stat().st_mtime):
        claimed = path.with_suffix(f".sending-{os.getpid()}")
        try:
            path.rename(claimed)
        except OSError:
            continue  # another worker took it
        lines = claimed.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            r = json.loads(line)
            r["run_id"] = ids.get(r["run_id"], r["run_id"])
            try:
                if r["op"] == "create_run":
                    ids[r["run_id"]] = client.create_run(*r["args"], **r["kw"]).info.run_id
                elif r["op"] == "log_batch":
                    k = r["kw"]
                    client.log_batch(
                        r["run_id"],
                        metrics=[Metric(*m) for m in k["metrics"]],
                        params=[Param(*p) for p in k["params"]],
                        tags=[RunTag(*t) for t in k["tags"]],
                        synchronous=True,
                    )
                else:
                    getattr(client, r["op"])(r["run_id"], *r["args"], **r["kw"])
            except Exception:
                rest = [json.loads(x) for x in lines[i:]]  # keep the rest, in order, under the real ids made so far
                path.write_text(
                    "".join(json.dumps({**x, "run_id": ids.get(x["run_id"], x["run_id"])}) + "\n" for x in rest), encoding="utf-8"
                )
                claimed.unlink()
                raise
            if r["op"] == "log_artifacts":
                shutil.rmtree(r["args"][0], ignore_errors=True)
            sent += 1
        claimed.unlink()
    return sent, ids


# --- stores checked before use --------------------------------------------------------------------


def reachable(uri: str) -> bool:
    try:
        probe_http(uri, timeout=3)
        return True
    except UserError:
        return False


def probe_http(uri: str, timeout: float = 10) -> None:
    """An MLflow server answers a search with our credentials (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN)."""
    import requests

    if not uri.startswith(("http://", "https://")):
        return
    auth = (
        (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
        if os.environ.get("MLFLOW_TRACKING_USERNAME")
        else None
    )
    headers = {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"} if os.environ.get("MLFLOW_TRACKING_TOKEN") else {}
    where = f"tracking.mlflow_uri {tracking.redact(uri)!r}"
    try:
        r = requests.post(
            uri.rstrip("/") + "/api/2.0/mlflow/experiments/search", json={"max_results": 1}, auth=auth, headers=headers, timeout=timeout
        )
    except requests.RequestException as e:
        raise UserError(f"{where} is unreachable ({type(e).__name__}); start the server (`afina server`) or fix the URL") from None
    if r.status_code in (401, 403):
        raise UserError(
            f"{where} refused the credentials (HTTP {r.status_code}); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    try:
        ok = r.status_code == 200 and isinstance(r.json(), dict)
    except ValueError:
        ok = False
    if not ok:
        raise UserError(f"{where} does not answer like an MLflow server (HTTP {r.status_code}); check the host, port and path")


def probe_sql(url: str, what: str) -> None:
    """Connect to a database URL (a SQLite file only when it exists: connecting would create it)."""
    import sqlalchemy

    path = tracking.sqlite_path(url)
    label = what if what.startswith("-") else f"tracking.{what}"
    if path is not None and not path.exists():
        writable(path.parent, f"{label} {url}")
        return
    where = f"{label} {tracking.redact(url)!r}"
    kw = {"connect_args": {"connect_timeout": 5}} if url.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(url, **kw)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT count(*) FROM sqlite_master" if path is not None else "SELECT 1"))
        engine.dispose()
    except ImportError as e:
        raise UserError(f"{where}: its database driver is not installed ({e}); pip install it or use another driver in the URL") from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise UserError(f"{where}: unknown database dialect or driver; use e.g. postgresql://user:pass@host:5432/db") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
        msg = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise UserError(
            f"{where} is unusable ({tracking.redact(msg[0] if msg else type(e).__name__)[:200]}); check the host, port, database and credentials"
        ) from None


def writable(folder: Path, what: str) -> None:
    """The folder, or its nearest existing parent, accepts new files (read-only mounts too, even for root)."""
    p = Path(folder).resolve()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise UserError(f"{what}: {p} is a file, not a folder; choose another path")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"{what}: {p} is not writable; choose a writable folder")
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return
    if free < 1 << 20:
        raise UserError(f"{what}: no space left under {p} ({free} bytes free); free some space or choose another folder")


def preflight(spec) -> None:
    """Every store and folder the sweep will write to, checked before any is written."""
    t = spec.tracking
    if t.mlflow_uri.startswith(("http://", "https://")):
        probe_http(t.mlflow_uri)
    elif not t.mlflow_uri.startswith("databricks"):
        probe_sql(t.mlflow_uri, "mlflow_uri")
        writable(Path(t.artifact_root), "tracking.artifact_root")
    probe_sql(t.optuna_storage, "optuna_storage")
    writable(Path(t.checkpoint_dir), "tracking.checkpoint_dir")


# --- dead and interrupted trials ------------------------------------------------------------------


def resume_point(spec, trial, c) -> tuple[Path | None, list[Path]]:
    """The checkpoint this trial continues from, and the trial folders it consumes when it ends.

    A retry of a dead worker's trial (Optuna's `failed_trial`/`retry_history`) or a requeued
    interrupted one (`resumes_trial`) has the same params; it picks up the newest checkpoint any of
    its predecessors left. Whoever retries a dead trial also closes that trial's MLflow run.
    """
    trials = {x.number: x for x in trial.study.get_trials(deepcopy=False)}
    t = trials[trial.number]
    history = list(t.system_attrs.get("retry_history", []))
    sources, todo = [], [*history, *([t.user_attrs["resumes_trial"]] if "resumes_trial" in t.user_attrs else [])]
    while todo:  # every predecessor: a retry of a resumed trial may find the newest checkpoint further back
        n = todo.pop()
        if n in sources or n not in trials:
            continue
        sources.append(n)
        p = trials[n]
        todo += [*p.system_attrs.get("retry_history", []), *([p.user_attrs["resumes_trial"]] if "resumes_trial" in p.user_attrs else [])]
    if history and t.user_attrs.get("mlflow_run_id"):  # the user attrs were copied from the dead trial
        dead = t.user_attrs["mlflow_run_id"]
        try:
            if c.get_run(dead).info.status == "RUNNING":
                tracking.finish(
                    c,
                    dead,
                    "FAIL",
                    f"worker {t.user_attrs.get('worker', '?')} died (no heartbeat); trial {history[-1]} is retried as trial {trial.number}",
                )
        except Exception:  # noqa: S110 - the run may be gone with a wiped store; nothing to close
            pass
    root = Path(spec.tracking.checkpoint_dir) / trial.study.study_name
    folders = [root / f"trial-{n}" for n in sources]
    found = [(int(p.name.split("-")[-1]), p) for f in folders for p in f.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return (max(found)[1] if found else None), [f for f in folders if f.is_dir()]


def worker_id() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def check_model(model_dir: Path, ref: str, trust_remote_code: bool) -> None:
    """The model folder has a readable config, a tokenizer and safetensors weights (never pickles)."""
    from transformers import AutoConfig, AutoTokenizer

    where = f"model.ref {ref!r}"
    if not list(Path(model_dir).glob("*.safetensors")):
        pickles = [p.name for p in Path(model_dir).glob("*.bin")] + [p.name for p in Path(model_dir).glob("*.pt*")]
        how = (
            f"it has only {pickles[0]}, which afina never unpickles; re-save it with save_pretrained(safe_serialization=True)"
            if pickles
            else "no *.safetensors weights in that folder"
        )
        raise UserError(f"{where}: {how}")
    try:
        AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises OSError, ValueError, JSONDecodeError... for broken folders
        raise UserError(
            f"{where}: cannot be loaded ({type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); "
            "point it at a folder saved with save_pretrained"
        ) from None
