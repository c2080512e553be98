"""samples.json: a run's table of answers to the evaluation prompts (prompt, reference, base, output, one
column per metric), written by each trial, the base model and the reference run; read and copied here only."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

NAME = "samples.json"  # at the run's artifact root, where MLflow's Evaluation view finds it
_ANSWERS: dict[str, dict[str, str]] = {}  # run id -> {prompt: output}; a finished run's samples never change


def read(c: MlflowClient, run_id: str) -> dict[str, list]:
    """A run's samples table as {column: [one value per prompt]}; {} when it has none (a failed run, no prompts)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # quiet inside the sweep's display
    try:
        with tempfile.TemporaryDirectory() as tmp:
            table = json.loads(Path(c.download_artifacts(run_id, NAME, tmp)).read_text(encoding="utf-8"))
    except Exception:  # a run without a samples table (the base model's, a failed trial's): no per-prompt answers
        return {}
    return {name: [row[i] for row in table["data"]] for i, name in enumerate(table["columns"])}


def answers(c: MlflowClient, run_id: str) -> dict[str, str]:
    """{prompt: output} from a run's samples table ({} when it has none), kept once the run has finished."""
    if not run_id:
        return {}
    if run_id in _ANSWERS:
        return _ANSWERS[run_id]
    table = read(c, run_id)
    if not table:  # no samples (failed run, no prompts): nothing to show
        return {}
    found = dict(zip(table["prompt"], table["output"], strict=True))
    if c.get_run(run_id).info.status != "RUNNING":
        _ANSWERS[run_id] = found
    return found


def copy(c: MlflowClient, src_run: str, dst_run: str) -> bool:
    """A run's samples table onto another run, replacing any earlier copy; False without one.

    Not `log_table`, which appends to an existing table; the tag it sets is what MLflow's Evaluation view reads.
    """
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = c.download_artifacts(src_run, NAME, tmp)
        except Exception:  # no such table (a failed trial, no prompts)
            return False
        c.log_artifact(dst_run, local)
    logged = json.loads(c.get_run(dst_run).data.tags.get("mlflow.loggedArtifacts", "[]"))
    if {"path": NAME, "type": "table"} not in logged:
        c.set_tag(dst_run, "mlflow.loggedArtifacts", json.dumps([*logged, {"path": NAME, "type": "table"}]))
    return True
