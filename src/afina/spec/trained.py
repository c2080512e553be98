"""The spec's sections on what the trials train and vary: the model, the data slices and eval set, the search space.

Every section rejects unknown keys (`Strict`); the names it takes become file names, MLflow keys and search keys.
"""

from __future__ import annotations

import builtins
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from afina import hint

# Names that become file names, MLflow keys and dotted search keys: short, and no dots, spaces or slashes.
NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
NAME_RULE = "letters, digits, _ and - (starting with a letter or digit), at most 64 characters"
MAX_NAME = 64
Scalar = str | bool | int | float | None


def name_ok(name: Any) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME and re.fullmatch(NAME, name) is not None


LOWER_IS_BETTER = ("loss", "runtime", "tokens", "unparsed", "nll")  # suffixes of the metrics that are minimized
NEUTRAL = ("length",)  # no better direction: an answer's length is reported as higher / lower


def sense(metric: str) -> str | None:
    """Which way a metric improves, the one rule every part of afina uses: "minimize" for names ending in loss,
    runtime, tokens, unparsed or nll, None for a neutral one (length), "maximize" for the rest (chrf, rougeL, judge...)."""
    if metric in NEUTRAL:
        return None
    return "minimize" if metric.endswith(LOWER_IS_BETTER) else "maximize"


class Strict(BaseModel):
    # allow_inf_nan=False: .inf or .nan anywhere (bounds, weights, timeouts) is a typo, not a setting
    # protected_namespaces=(): pydantic 2.9 reserves every "model_" name and warns on promote.model_name
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False, protected_namespaces=())


class Model(Strict):
    ref: str = "smollm2-135m"
    """Hugging Face model id, a local directory, or an embedded name: smollm2-135m, tiny-random."""
    method: Literal["lora", "full"] = "lora"
    trust_remote_code: bool = False
    """Off unless you trust the model's code: it runs arbitrary Python from the model folder."""


class Slice(Strict):
    path: str | list[str]
    """File, glob or list of them (jsonl, json, csv, parquet) or a `datasets.save_to_disk` folder."""
    where: dict[str, Scalar | list[Scalar]] = {}
    """Keep rows whose column equals a value or is in a list, e.g. {category: [REFUND, ORDER]}."""
    format: Literal["auto", "messages", "prompt_completion", "text"] = "auto"
    columns: dict[str, str] = {}
    """Map your columns onto prompt/completion/messages/text, e.g. {prompt: instruction, completion: response}."""
    system: str | None = None
    """System prompt prepended to every conversation of this slice."""
    include: bool = True
    weight: float = Field(1.0, ge=0, le=1)
    """Multiplies this slice's natural share of the mix; 0 drops it."""
    fraction: float = Field(1.0, gt=0, le=1)
    """Share of the slice's rows used (seeded subsample)."""
    max_rows: int | None = Field(None, ge=1)
    language: str | None = None
    """ISO code the slice should be in (checked by `afina check`)."""


class Eval(Strict):
    path: str | list[str] | None = None
    """Held-out file(s), same formats as slices. Or leave empty and use `split`."""
    split: float | None = Field(None, gt=0, lt=1)
    """Seeded share of the included training rows held out for evaluation."""
    format: Literal["auto", "messages", "prompt_completion", "text"] = "auto"
    columns: dict[str, str] = {}
    system: str | None = None
    max_rows: int | None = Field(None, ge=1)
    slices: list[str] | None = None
    """With split: the slices the eval rows come from. Default: every included slice the search does not vary,
    so the search cannot move its own yardstick. Hold out only the task you care about."""

    @model_validator(mode="after")
    def _one_source(self):
        if (self.path is None) == (self.split is None):
            raise ValueError("set exactly one of eval.path or eval.split")
        return self


class Data(Strict):
    slices: dict[str, Slice]
    eval: Eval
    seed: int = 0

    @field_validator("slices")
    @classmethod
    def _not_empty(cls, v):
        if not v:
            raise ValueError("data.slices is empty: name at least one slice, e.g. faq: {path: data/faq.jsonl}")
        for name in v:  # slice names become search keys (slices.NAME.weight), MLflow params and file names
            if not name_ok(name):
                raise ValueError(f"slice name {str(name)[:80]!r} is not allowed; use {NAME_RULE}, e.g. faq_v2")
        return v

    @model_validator(mode="after")
    def _eval_slices(self):
        for name in self.eval.slices or []:
            if name not in self.slices:
                raise ValueError(f"data.eval.slices: unknown slice {name!r}{hint(name, self.slices)}")
        return self


class Dim(Strict):
    """One search dimension: exactly one of float, int or categorical."""

    # builtins.*: the field names shadow the types inside this class body
    float: tuple[builtins.float, builtins.float] | None = None
    int: tuple[builtins.int, builtins.int] | None = None
    categorical: list[Any] | None = None
    log: bool = False
    step: builtins.float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("float", "int", "categorical") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a search dimension needs exactly one of float: [lo, hi], int: [lo, hi], categorical: [..]")
        if self.log and self.step is not None and not (self.int and self.step == 1):
            raise ValueError("log: true and step cannot be combined (Optuna samples a log scale without steps); drop one")
        if self.int and max(map(abs, self.int)) > 2**31 - 1:  # torch and Optuna overflow on anything bigger
            raise ValueError(f"int bounds {list(self.int)} must lie within ±{2**31 - 1}")
        if self.int and self.step is not None and self.step != builtins.int(self.step):
            raise ValueError(f"an int dimension needs a whole step, not {self.step}")
        if self.categorical and not all(isinstance(c, (str, builtins.int, builtins.float, bool)) for c in self.categorical):
            raise ValueError("categorical choices must be plain values (text, numbers, true/false), not lists or mappings")
        bounds = self.float or self.int
        if bounds and not bounds[0] < bounds[1]:
            raise ValueError(f"bounds {list(bounds)} must be [low, high] with low < high")
        if bounds and self.log and bounds[0] <= 0:
            raise ValueError("log scale needs a positive low bound")
        if self.categorical is not None and not self.categorical:
            raise ValueError("categorical needs at least one choice")
        return self


class Ablate(Strict):
    """The controlled ablation at the end of a sweep (`afina ablate` takes the same as options)."""

    seeds: int = Field(3, ge=1)
    """Paired training seeds per configuration: train.seed, train.seed+1, ... (data.seed stays fixed)."""
    steps: int | None = Field(None, ge=1)
    """Training steps of every ablation run; default: the best trial's own max_steps."""


class Search(Strict):
    space: dict[str, Dim]
    """Dotted keys: train.<SFTConfig field>, lora.<LoraConfig field>, slices.<name>.include|weight|fraction."""
    n_trials: int = Field(10, ge=1)
    timeout: float | None = Field(None, gt=0)
    """Seconds this worker may spend before it stops starting new trials."""
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    sampler_args: dict[str, Any] = {}
    """Extra keyword arguments for the Optuna sampler, e.g. {n_startup_trials: 4}."""
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = "successive_halving"
    """Default chosen by `python bench/run.py search` (BENCHMARKS.md): it reached the unpruned best with the least compute."""
    pruner_args: dict[str, Any] = {}
    """Extra keyword arguments for the Optuna pruner, e.g. {n_startup_trials: 2, n_warmup_steps: 4}."""
    objective: str | list[str] = "eval_loss"
    direction: Literal["minimize", "maximize"] | list[Literal["minimize", "maximize"]] | None = None
    """Defaults to minimize for names ending in loss/runtime/tokens/unparsed/nll, maximize otherwise (`sense`)."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    heartbeat: int | None = Field(60, ge=1)
    """Seconds between a worker's heartbeats; a trial silent for 3 beats is failed and retried."""
    ablate: Ablate | None = None
    """true or {seeds: k, steps: n}: after the trials, retrain the best configuration with each searched slice toggled."""

    @field_validator("ablate", mode="before")
    @classmethod
    def _ablate_flag(cls, v):
        return {} if v is True else None if v is False else v

    @model_validator(mode="before")
    @classmethod
    def _space_given(cls, data):
        # A forgotten space would run n_trials identical trials; searching nothing must be said out loud.
        if isinstance(data, dict) and "space" not in data:
            raise ValueError(
                "search.space is missing: add dimensions, e.g. train.learning_rate: {float: [1.0e-5, 1.0e-3], log: true}, "
                "or write `space: {}` to train the fixed settings n_trials times"
            )
        return data

    @property
    def objectives(self) -> list[str]:
        return [self.objective] if isinstance(self.objective, str) else list(self.objective)

    @property
    def directions(self) -> list[str]:
        if self.direction is None:
            return [sense(o) or "maximize" for o in self.objectives]  # a neutral objective (length): its size is wanted
        return [self.direction] if isinstance(self.direction, str) else list(self.direction)

    @model_validator(mode="after")
    def _directions_match(self):
        if not self.objectives:
            raise ValueError("search.objective is empty")
        if len(self.directions) != len(self.objectives):
            raise ValueError(f"search.direction has {len(self.directions)} entries for {len(self.objectives)} objectives")
        return self
