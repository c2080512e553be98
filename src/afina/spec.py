"""The experiment spec: one pydantic schema, validated once at load.

Every section rejects unknown keys and names the nearest valid one. `train` takes any TRL
`SFTConfig` field and `lora` any PEFT `LoraConfig` field, so anything those accept can be
fixed or searched. Relative data paths resolve against the spec file's folder.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from afina import metrics
from afina.errors import UserError, hint
from afina.tracking import ARTIFACT_ROOT, MLFLOW_URI, OPTUNA_URI

# Fields afina owns: setting them in `train` would break tracking, checkpoints or pruning.
OWNED_TRAIN_FIELDS = {
    "output_dir",
    "report_to",
    "eval_strategy",
    "save_strategy",
    "load_best_model_at_end",
    "metric_for_best_model",
    "greater_is_better",
    "run_name",
    "logging_dir",
}


# Names that become file names, MLflow keys and dotted search keys: short, and no dots, spaces or slashes.
NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
NAME_RULE = "letters, digits, _ and - (starting with a letter or digit), at most 64 characters"
MAX_NAME = 64
Scalar = str | bool | int | float | None


def _name_ok(name: Any) -> bool:
    return isinstance(name, str) and len(name) <= MAX_NAME and re.fullmatch(NAME, name) is not None


class Strict(BaseModel):
    # allow_inf_nan=False: .inf or .nan anywhere (bounds, weights, timeouts) is a typo, not a setting
    model_config = ConfigDict(extra="forbid", frozen=False, allow_inf_nan=False)


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
            if not _name_ok(name):
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
    """Defaults to minimize for names ending in loss/runtime/tokens/unparsed, maximize otherwise."""
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
            return ["minimize" if o.endswith(("loss", "runtime", "tokens", "unparsed")) else "maximize" for o in self.objectives]
        return [self.direction] if isinstance(self.direction, str) else list(self.direction)

    @model_validator(mode="after")
    def _directions_match(self):
        if not self.objectives:
            raise ValueError("search.objective is empty")
        if len(self.directions) != len(self.objectives):
            raise ValueError(f"search.direction has {len(self.directions)} entries for {len(self.objectives)} objectives")
        return self


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
            if not _name_ok(name):
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
    the winning configuration with the rest (winner.py). Without a `budget:` section there is no refit."""

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


class Spec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=MAX_NAME)
    """Study name, and the default MLflow experiment and registered model name."""
    description: str = ""
    model: Model = Model()
    data: Data
    train: dict[str, Any] = {}
    lora: dict[str, Any] = {}
    search: Search
    samples: Samples = Samples()
    evaluate: Evaluate = Evaluate()
    tracking: Tracking = Tracking()
    promote: Promote = Promote()
    budget: Budget | None = None
    """Total training steps and the refit's share; None: the search alone, no refit."""
    baseline: Baseline = Baseline()
    base_dir: Path = Field(Path("."), exclude=True)
    """Folder of the spec file; relative data paths resolve against it (not a YAML key)."""

    @field_validator("train")
    @classmethod
    def _train_fields(cls, v):
        for key, value in v.items():
            _check_field(key, "train", sft_fields(), value)
        return v

    @field_validator("lora")
    @classmethod
    def _lora_fields(cls, v):
        for key, value in v.items():
            _check_field(key, "lora", lora_fields(), value)
        return v

    @model_validator(mode="after")
    def _space_keys(self):
        for key, dim in self.search.space.items():
            section, _, rest = key.partition(".")
            if section == "train":
                _check_dim(rest, f"search.space.{key!r}: train", sft_fields(), dim)
            elif section == "lora":
                if self.model.method != "lora":
                    raise ValueError(f"search.space.{key}: lora fields need model.method: lora")
                _check_dim(rest, f"search.space.{key!r}: lora", lora_fields(), dim)
            elif section == "slices":
                name, _, attr = rest.partition(".")
                if name not in self.data.slices:
                    raise ValueError(f"search.space.{key}: unknown slice {name!r}{hint(name, self.data.slices)}")
                if attr not in SLICE_RANGES:
                    raise ValueError(
                        f"search.space.{key}: slices can search include, weight or fraction{hint(attr, ['include', 'weight', 'fraction'])}"
                    )
                _check_slice_dim(key, attr, dim)
            else:
                raise ValueError(
                    f"search.space.{key}: keys start with train., lora. or slices.{hint(section, ['train', 'lora', 'slices'])}"
                )
        if self.search.sampler == "grid":
            for key, dim in self.search.space.items():
                if dim.float is not None and dim.step is None:
                    raise ValueError(f"search.space.{key}: the grid sampler needs a step or categorical choices")
            from afina import space as space_mod

            if (n := space_mod.grid_size(self.search.space)) > space_mod.MAX_GRID:
                raise ValueError(
                    f"search.space: the grid has {n:.3g} points (at most {space_mod.MAX_GRID}); use larger steps or fewer choices"
                )
        from afina import space  # ranges at the fixed values and at each end of the space (types: `afina sweep`)

        for where, params in space.points(self):
            train, lora, _ = space.apply(self, params)
            space.check_values(train, lora if self.model.method == "lora" else {}, None, where, ValueError)
        return self

    @model_validator(mode="after")
    def _budget_fits(self):
        """A search share smaller than one trial could start nothing (checked here when max_steps is fixed)."""
        b, steps = self.budget, self.train.get("max_steps", -1)
        if b and b.steps and isinstance(steps, int) and steps > 0 and "train.max_steps" not in self.search.space:
            if b.steps * (1 - b.refit) < steps:
                raise ValueError(
                    f"budget.steps {b.steps} leaves the search {int(b.steps * (1 - b.refit))} steps, less than one trial's "
                    f"train.max_steps {steps}; raise budget.steps or lower budget.refit"
                )
        return self

    @model_validator(mode="after")
    def _metrics(self):
        # unknown metrics and unimportable scorers fail at load
        metrics.parse(self.evaluate.metrics or [], self.base_dir)
        return self

    @model_validator(mode="after")
    def _eval_unmoved(self):
        """A split held out of a searched slice lets the search move the eval set: name the slices instead."""
        ev = self.data.eval
        if ev.split is not None and ev.slices is None and not self.eval_slices:
            searched = ", ".join(sorted(self.searched_slices))
            raise ValueError(
                f"data.eval: every slice is searched ({searched}), so a split would hold out rows the search varies; "
                "name the slices of the task to measure in data.eval.slices, or point data.eval.path at held-out rows"
            )
        return self

    @property
    def searched_slices(self) -> set[str]:
        """Slices whose include, weight or fraction the search varies."""
        return {key.split(".")[1] for key in self.search.space if key.startswith("slices.")}

    @property
    def eval_slices(self) -> list[str]:
        """The slices a data.eval.split holds rows out of: eval.slices, else every included unsearched slice."""
        if self.data.eval.slices is not None:
            return sorted(self.data.eval.slices)
        return sorted(n for n, s in self.data.slices.items() if n not in self.searched_slices and s.include and s.weight > 0)

    def path(self, p: str) -> Path:
        return (self.base_dir / p).expanduser()

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def model_name(self) -> str:
        return self.promote.model_name or self.name


@functools.cache
def sft_fields() -> dict[str, Any]:
    """SFTConfig field name -> default value, minus the fields afina owns."""
    fields = _fields("trl", "trl:SFTConfig")
    return {k: v for k, v in fields.items() if k not in OWNED_TRAIN_FIELDS}


@functools.cache
def lora_fields() -> dict[str, Any]:
    fields = _fields("peft", "peft:LoraConfig")
    return {k: v for k, v in fields.items() if k not in ("task_type", "peft_type")}


def _fields(package: str, target: str) -> dict[str, Any]:
    """Field names and simple defaults of a config dataclass, cached per installed version.

    Importing TRL takes seconds; reading its field list from a small cache keeps `afina status`
    and `afina check` fast while still validating against the installed version.
    """
    import importlib
    import importlib.metadata
    import json
    import os

    cache = Path(os.environ.get("AFINA_CACHE", Path.home() / ".cache" / "afina")).expanduser()
    path = cache / "fields" / f"{target.replace(':', '.')}-{importlib.metadata.version(package)}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    module, _, name = target.partition(":")
    cls = getattr(importlib.import_module(module), name)
    # Only bool/number/str defaults matter (type checks); others are kept as None.
    simple = (bool, int, float, str, type(None))
    fields = {f.name: f.default if isinstance(f.default, simple) else None for f in dataclasses.fields(cls)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(fields))
        tmp.replace(path)
    except OSError:  # a read-only cache only costs speed
        pass
    return fields


# Secret-holding config fields (hub_token, ...): refused, so a secret never reaches a run, an artifact or a pickle.
SECRET_FIELDS = re.compile(r"(^|_)(hub|auth|access|api)_?(token|key)$|passw|secret|credential", re.I)


def _check_field(key: str, where: str, valid: dict[str, Any], value: Any = None) -> None:
    if key in OWNED_TRAIN_FIELDS and where.endswith("train"):
        raise ValueError(f"{where}.{key} is managed by afina; remove it")
    if SECRET_FIELDS.search(key):
        raise ValueError(
            f"{where}.{key} holds a secret, which afina never writes into a spec or run; remove it (afina never uploads to a hub)"
        )
    if key not in valid:
        raise ValueError(f"{where}.{key} is not a known field{hint(key, valid)}")
    default = valid[key]
    # The dataclasses carry no runtime type checks, so catch the common slips here.
    if isinstance(default, bool) and value is not None and not isinstance(value, bool):
        raise ValueError(f"{where}.{key} must be true or false, not {value!r}")
    if isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}.{key} must be a number, not {value!r}")


# What a searched slice attribute may take, the same bounds as the fixed Slice fields.
SLICE_RANGES = {"include": None, "weight": (0.0, 1.0, "between 0 and 1"), "fraction": (0.0, 1.0, "above 0 and at most 1")}


def _check_slice_dim(key: str, attr: str, dim: Dim) -> None:
    values = dim.categorical if dim.categorical is not None else list(dim.float or dim.int or ())
    if attr == "include":
        if dim.categorical is None or not all(isinstance(v, bool) for v in values):
            raise ValueError(f"search.space.{key}: include takes {{categorical: [true, false]}}")
        return
    low, high, words = SLICE_RANGES[attr]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high or (attr == "fraction" and v == 0):
            raise ValueError(f"search.space.{key}: {v!r} is out of range; a slice's {attr} is {words}")


def _check_dim(key: str, where: str, valid: dict[str, Any], dim: Dim) -> None:
    """The field exists, and every value the dimension can take has the field's type."""
    _check_field(key, where, valid)
    if dim.categorical is not None:
        for value in dim.categorical:
            _check_field(key, where, valid, value)
        return
    default = valid[key]
    if isinstance(default, bool) or isinstance(default, str):
        raise ValueError(f"{where}.{key} is {'true/false' if isinstance(default, bool) else 'text'}; search it with categorical: [..]")


def _nearest_key(model: type[BaseModel], loc: tuple) -> str:
    """Walk the schema along `loc` to suggest a valid key for an unknown one."""
    cls: Any = model
    for part in loc[:-1]:
        field = cls.model_fields.get(part) if isinstance(part, str) and hasattr(cls, "model_fields") else None
        if field is None:  # a dict key such as slices.<name>: keep the value's model
            continue
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else (args[-1] if args else cls)
    return hint(str(loc[-1]), getattr(cls, "model_fields", {}).keys())


MAX_SPEC_BYTES = 1 << 20  # a spec is a page of YAML; anything bigger is a mistake (or an attack)
MAX_NODES = 100_000  # YAML nodes after expanding aliases: a few anchors are fine, an alias bomb is not


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, stricter: a key twice in one mapping is an error (PyYAML keeps the last one
    silently), and aliases may not expand the document past MAX_NODES nodes (billion laughs) or into
    itself. PyYAML follows YAML 1.1, which reads 1e-4 as a string; accept it as the float people mean."""

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, Any], Any] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"duplicate key {key_node.value!r} (first on line {seen[key].line + 1}); keep one of them",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, sizes: dict[int, int], open_: set[int]) -> int:
    """Nodes in the document with every alias expanded (memoised, so a bomb is measured, not expanded)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it; remove the recursion", node.start_mark)
    open_.add(id(node))
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = node.value
    else:
        children = []
    size = 1 + sum(_expanded_size(c, sizes, open_) for c in children)
    open_.discard(id(node))
    if size > MAX_NODES:
        raise yaml.composer.ComposerError(
            None, None, f"aliases expand this document past {MAX_NODES} values (an alias bomb?); write the values out", node.start_mark
        )
    sizes[id(node)] = size
    return size


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d+)[eE][-+]?\d+$|^[-+]?\d[\d_]*\.[\d_]*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


def _message(err: dict) -> str:
    """One pydantic error as `field: what is wrong`, in the spec's own words where pydantic's are vague."""
    parts = [str(p) for p in err["loc"]]
    if "where" in parts:  # a union of value/list: pydantic lists one error per branch
        loc = ".".join(parts[: parts.index("where") + 2])
        return f"{loc}: give a value or a list of values, e.g. where: {{category: [REFUND, ORDER]}}"
    # union branches show up as extra loc parts such as 'list[str]' or 'function-after[...]'
    loc = ".".join(p for p in parts if "[" not in p)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "string_pattern_mismatch":
        msg = f"{str(err['input'])[:80]!r} is not allowed; use {NAME_RULE}"
    elif err["type"] in ("finite_number",):
        msg = "must be a finite number (not .inf or .nan)"
    return f"{loc}: {msg}" if loc and not msg.startswith(loc) else msg


def load(path: str | Path) -> Spec:
    """Read and validate a spec file; raise UserError with one line naming the field and the fix."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a spec file" if path.is_dir() else "no such spec file"
        raise UserError(f"{path}: {what}; pass the path of a YAML spec, e.g. experiments/quickstart.yaml")
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:
            raise UserError(f"{path}: a spec of {path.stat().st_size} bytes is too big (at most {MAX_SPEC_BYTES}); is it the right file?")
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: is not UTF-8 text (bad byte at offset {e.start}); save the spec as UTF-8") from None
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror}); check the file and its permissions") from None
    try:
        raw = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = " ".join((getattr(e, "problem", None) or str(e)).split())
        if "single document" in f"{getattr(e, 'context', '')} {problem}":
            problem = "it holds several YAML documents (---); keep one spec per file"
        fix = "" if ";" in problem else "; fix the syntax"
        raise UserError(f"{path}:{where} is not valid YAML ({problem}){fix}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a spec is a YAML mapping with name, data and search sections")
    try:
        spec = Spec.model_validate({**raw, "base_dir": path.parent})
    except ValidationError as e:
        # A typo'd key also makes its intended key "missing": report the typo, it names the fix.
        err = next((x for x in e.errors() if x["type"] == "extra_forbidden"), e.errors()[0])
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            hint = _nearest_key(Spec, err["loc"])
            raise UserError(f"{path}: unknown key '{loc}'{hint}") from None
        raise UserError(f"{path}: {_message(err)}") from None
    for key, value in spec.train.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{path}: train.{key} must be a finite number")
    return spec
