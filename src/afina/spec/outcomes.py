"""The spec's sections on what becomes of the trials: the samples and metrics that score them, where they are
recorded, what is promoted, the refit's budget and the references they are weighed against."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator, model_validator

from afina.spec.defaults import ARTIFACT_ROOT, MLFLOW_URI, OPTUNA_URI
from afina.spec.trained import MAX_NAME, NAME_RULE, Strict, name_ok


class Prompt(Strict):
    prompt: str
    reference: str | None = None


class Samples(Strict):
    prompts: list[Prompt | str] = []
    path: str | None = None
    """A jsonl of {prompt, reference} rows, used in addition to `prompts`."""
    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0)
    """0 means greedy decoding, so samples are comparable across trials."""
    system: str | None = None


class Judge(Strict):
    """LLM-as-judge: exactly one of model (anything model.ref accepts) or url (OpenAI-compatible)."""

    model: str | None = None
    url: str | None = None
    """Base URL of an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 (POSTs to /chat/completions)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the endpoint's key (the key never goes in the spec)."""
    name: str = "judge"
    """Model name sent to the endpoint."""
    rubric: str = "Is the answer correct, helpful, concise and in the shop's friendly voice?"
    scale: tuple[float, float] = (1, 10)
    show_reference: bool = True
    """Show the judge the reference answer where a prompt has one."""
    max_new_tokens: int = Field(16, ge=1)
    timeout: float = Field(60, gt=0)

    @model_validator(mode="after")
    def _one_judge(self):
        if (self.model is None) == (self.url is None):
            raise ValueError("evaluate.judge needs exactly one of model (e.g. smollm2-135m) or url (an OpenAI-compatible endpoint)")
        if not self.scale[0] < self.scale[1]:
            raise ValueError(f"evaluate.judge.scale {list(self.scale)} must be [low, high] with low < high")
        return self


class Evaluate(Strict):
    """Generation metrics on the samples prompts (plus `path`); any result can be search.objective."""

    metrics: list[str | dict[str, Any]] | None = None
    """rougeL, chrf, exact_match, length, json, {contains: [..]}, {not_contains: [..]}, {regex: ".."}, {custom: "mod:fn"}.
    Default: rougeL and chrf where prompts have references, and length."""
    judge: Judge | None = None
    combine: dict[str, dict[str, float]] = {}
    """Weighted sums usable as objectives, e.g. {quality: {rougeL: 0.7, eval_loss: -0.3}}."""
    path: str | None = None
    """A jsonl of {prompt, reference} rows evaluated (and sampled) besides samples.prompts."""

    @field_validator("combine")
    @classmethod
    def _combine_names(cls, v):
        for name in v:  # each becomes an MLflow metric key
            if not name_ok(name):
                raise ValueError(f"name {str(name)[:80]!r} is not allowed; use {NAME_RULE}")
        return v


class Tracking(Strict):
    experiment: str | None = Field(None, min_length=1, max_length=200)
    """MLflow experiment name; defaults to the spec's name."""
    mlflow_uri: str = MLFLOW_URI
    artifact_root: str = ARTIFACT_ROOT
    optuna_storage: str = OPTUNA_URI
    checkpoint_dir: str = "mlruns/checkpoints"
    """Scratch space for a running trial's checkpoints; the kept one goes to MLflow."""

    @field_validator("artifact_root", "checkpoint_dir")
    @classmethod
    def _local_folder(cls, v: str, info):
        # A local store writes artifacts into a folder; "s3://b/p" would become a folder named "s3:".
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", v)
        if scheme and scheme.group(1).lower() == "file":
            return v[len("file://") :]
        if scheme:
            raise ValueError(
                f"{v!r} is not a local folder; for {scheme.group(1)}:// artifacts run `afina server --artifacts-destination {v}` "
                "and set tracking.mlflow_uri to that server (http://HOST:5000)"
            )
        return v


class Promote(Strict):
    model_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=MAX_NAME)
    """Registered model name; defaults to the spec's name."""
    alias: str = Field("champion", pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$", max_length=MAX_NAME)
    """MLflow reserves `latest` and `v<number>`."""

    @field_validator("alias")
    @classmethod
    def _alias(cls, v: str) -> str:
        if v == "latest" or re.fullmatch(r"v\d+", v):
            raise ValueError(f"{v!r} is reserved by MLflow (latest, v<number>); choose another alias, e.g. champion")
        return v

    margin: float = Field(0.0, ge=0)
    """The candidate must beat the champion by more than this on the promotion set."""
    path: str | list[str] | None = None
    """Held-out promotion set; defaults to the eval set."""
    objective: str | None = None
    """Multi-objective studies: the objective that picks the best trial (or pass --trial N)."""


class Budget(Strict):
    """Training steps for the whole sweep, stated once: the search spends its share, the refit trains
    the winning configuration with the rest (search/winner_refit.py). Without a `budget:` section there is no refit."""

    steps: int | None = Field(None, ge=1)
    """Total training steps of the sweep, search and refit together. The search stops starting trials once its
    share is spent (pruned trials count the steps they trained). Default: whatever the search spends."""
    refit: float = 0.5
    """Share of the total kept for the refit. 0.5: the search only has to rank configurations, which short and
    pruned trials do; the promoted model's quality is bought by the refit's steps. 0: no refit."""

    @field_validator("refit")
    @classmethod
    def _share(cls, v):
        if not 0 <= v < 1:
            raise ValueError(f"{v} is not a share: give a number from 0 (no refit) up to, not including, 1, e.g. 0.5")
        return v


class Baseline(Strict):
    """References besides the untouched base model (evaluated by every sweep)."""

    default_run: bool = False
    """After the search, train one run with the method's documented defaults (TRL's SFTConfig, afina's LoRA)
    on the same data for as many steps as all trials together, evaluated like a trial: was the sweep worth it?"""


class Resources(Strict):
    """What one trial needs where `afina sweep --workers N` places workers on Ray: each worker asks Ray for this,
    so Ray sets its CUDA_VISIBLE_DEVICES and never puts more workers on a GPU or core than it holds."""

    gpus_per_trial: int | None = Field(None, ge=0)
    """GPUs per worker; more than 1 runs the worker's trials under torchrun on them. Default: 1 on a cluster
    with GPUs, else 0."""
    cpus_per_trial: float = Field(1, gt=0)
    """CPU cores per worker (Ray also sets the worker's OMP_NUM_THREADS to it)."""
