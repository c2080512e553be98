"""Dead and interrupted trials: which checkpoint a retried or requeued trial continues from; whether the worker
holding a claimed job still lives."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from afina import tracking

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from afina.spec.schema import Spec


def resume_point(spec: Spec, trial, c: MlflowClient, study_name: str) -> tuple[Path | None, list[Path]]:
    """The checkpoint this trial continues from, and the trial folders it consumes when it ends.

    A retry of a dead worker's trial (Optuna's `failed_trial`/`retry_history`) or a requeued
    interrupted one (`resumes_trial`) has the same params; it picks up the newest checkpoint any of
    its predecessors left. Whoever continues a trial also closes its predecessors' MLflow runs that
    were left RUNNING (a dead worker's, or one whose clean-up a hard stop cut short).
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
    for n in sources:  # each predecessor is over: a dead worker's (retried) or an interrupted one (requeued)
        if dead := trials[n].user_attrs.get("mlflow_run_id"):
            why = (
                f"worker {trials[n].user_attrs.get('worker', '?')} died (no heartbeat); trial {n} is retried as trial {trial.number}"
                if n in history
                else f"interrupted; trial {trial.number} continues it"
            )
            _close(c, dead, why)
    root = Path(spec.tracking.checkpoint_dir) / study_name
    folders = [root / f"trial-{n}" for n in sources]
    return latest(*folders), [f for f in folders if f.is_dir()]


def _close(c: MlflowClient, run_id: str, why: str) -> None:
    try:
        if c.get_run(run_id).info.status == "RUNNING":
            tracking.finish(c, run_id, "FAIL", why)
    except Exception:  # noqa: S110 - the run may be gone with a wiped store; nothing to close
        pass


def latest(*folders: Path) -> Path | None:
    """The newest complete checkpoint (one with its trainer state) in these folders, if any."""
    found = [(int(p.name.split("-")[-1]), p) for f in folders for p in f.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(found)[1] if found else None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# --- a job one worker claims in the study (the refit, the reference run) --------------------------------------


def alive(worker: str, beat: float | None, heartbeat: int | None) -> bool:
    """Whether the worker (`host:pid`) holding a claim still lives: its process when it runs on this host,
    else a heartbeat (`beat`, a time.time()) newer than 3 intervals.

    The one rule for every claim: a claim from another machine needs a fresh heartbeat. Trusting it without
    one (the reference run's old rule) would leave the job of a worker that died there claimed for ever.
    """
    host, _, pid = worker.rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: it exists
            return True
        return True
    return bool(heartbeat) and time.time() - float(beat or 0) < 3 * heartbeat


def pulse(study, attr: str, record: dict, heartbeat: int | None) -> Callable[..., None]:
    """The heartbeat of the claim in the study's user attr `attr`, to call as the job runs: at most once per
    `heartbeat` seconds it rewrites the claim as `record` (plus the fields given) with a fresh `beat`."""
    last = time.monotonic()

    def beat(**fields) -> None:
        nonlocal last
        if heartbeat and time.monotonic() - last >= heartbeat:
            study.set_user_attr(attr, record | fields | {"beat": time.time()})
            last = time.monotonic()

    return beat
