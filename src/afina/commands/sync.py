"""`afina sync`: send the MLflow records a sweep kept locally while the tracking server was unreachable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from afina import tracking
from afina.search import study as study_mod
from afina.tracking import spool, stores

if TYPE_CHECKING:
    from afina.spec.schema import Spec


def run(spec: Spec) -> str:
    """Replay the spool; the study learns the real ids of runs created offline. Returns what happened."""
    folder = spool.fallback_dir(spec)
    if not spool.pending(folder):
        return f"nothing to send: {folder} holds no kept MLflow records"
    stores.require_mlflow(spec.tracking.mlflow_uri, "tracking.mlflow_uri")
    sent, ids = spool.replay(folder, tracking.client(spec.tracking.mlflow_uri))
    if ids:  # runs created offline: the study learns their real ids (status, promote)
        study_mod.record_run_ids(study_mod.open(spec), ids)
    return f"sent {sent} kept MLflow records to {tracking.redact(spec.tracking.mlflow_uri)}" + (
        f"; created {len(ids)} runs of trials that started while it was down" if ids else ""
    )
