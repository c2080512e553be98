"""What a worker hands every trial: fixed for the sweep (or a benchmark), built once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from afina.data import Prepared
    from afina.spec.schema import Spec
    from afina.tracking.spool import Guard


@dataclass
class TrialContext:
    """The worker's fixed state. A follower rank under torchrun has `lead=False` and no client:
    it trains in step with rank 0, which alone logs and scores."""

    spec: Spec
    prepared: Prepared
    model_dir: Path
    study_name: str  # runs, checkpoint folders and tags are named after it (also for a FixedTrial)
    directions: list[str]  # "minimize" | "maximize" per objective; pruning needs the first
    client: Guard | None = None  # the outage-safe MLflow client; None on follower ranks
    experiment_id: str = ""
    parent_id: str = ""  # the sweep's MLflow run: every trial run is its child
    prompts: list[dict] = field(default_factory=list)  # evaluation prompts ({prompt, reference})
    base_answers: dict[str, str] = field(default_factory=dict)  # the base model's answer per prompt (the baseline run's)
    lead: bool = True  # False on follower ranks: no logging, decisions come from rank 0
    reuse: bool = True  # False: load the model and tokenize from scratch each trial (benchmarks)
    model_print: str | None = None  # fingerprint of model_dir, computed by the first trial that needs it
