"""MLflow outages: the outage-safe client and its local spool.

`Guard` is the MLflow client, except that a write which still fails after MLflow's own HTTP retries
goes to a local JSONL fallback (one warning), so training never stops for the tracking server.
A trial that starts while the server is down gets an `offline-…` run id; its run is created
when the records are replayed, and the study remembers which real run that became.
The fallback is replayed after each trial once the server answers again, or by `afina sync`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afina import tracking
from afina.tracking.stores import reachable

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from afina.spec.schema import Spec

# Every write afina makes through the client; anything else passes straight through.
WRITES = ("log_batch", "set_tag", "set_terminated", "log_text", "log_artifact", "log_artifacts", "log_table", "update_run")
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


def fallback_dir(spec: Spec) -> Path:
    return Path(spec.tracking.checkpoint_dir).parent / "fallback"


class Guard:
    """MlflowClient whose writes never raise for an outage: failed ones are kept in `folder`."""

    def __init__(self, client: MlflowClient, folder: Path, uri: str):
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
            except Exception as e:  # an outage: _failed re-raises anything else
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
            except Exception as e:  # an outage: _failed re-raises anything else
                self._failed(e, name, args, kw)
            return None
        self.settle()
        try:
            return fn(*args, **kw)
        except Exception as e:  # an outage: _failed re-raises anything else
            return self._failed(e, name, args, kw)

    def settle(self) -> None:
        """Wait for queued metric batches; those that failed go to the fallback."""
        pending, self._pending = self._pending, []
        for ops, args, kw in pending:
            try:
                if ops is not None:
                    ops.wait()
            except Exception as e:  # an async batch lost in an outage: _failed keeps it
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
        elif name in ("log_artifacts", "log_artifact"):  # local files are scratch space that goes away: keep a copy
            copy = self.folder / "files" / uuid.uuid4().hex
            if name == "log_artifacts":
                shutil.copytree(rest[0], copy)
            else:  # one file, under its own name (the artifact's name)
                copy.mkdir(parents=True)
                copy = Path(shutil.copy2(rest[0], copy))
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


def replay(folder: Path, client: MlflowClient) -> tuple[int, dict[str, str]]:
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
            except Exception:  # the server is gone again (or refuses this record): keep it and the rest for next time
                rest = [json.loads(x) for x in lines[i:]]  # keep the rest, in order, under the real ids made so far
                path.write_text(
                    "".join(json.dumps({**x, "run_id": ids.get(x["run_id"], x["run_id"])}) + "\n" for x in rest), encoding="utf-8"
                )
                claimed.unlink()
                raise
            if r["op"] in ("log_artifacts", "log_artifact"):
                kept = Path(r["args"][0])
                shutil.rmtree(kept if r["op"] == "log_artifacts" else kept.parent, ignore_errors=True)
            sent += 1
        claimed.unlink()
    return sent, ids
