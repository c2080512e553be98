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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Model(Strict):
    ref: str = "smollm2-135m"
    """Hugging Face model id, a local directory, or an embedded name: smollm2-135m, tiny-random."""
    method: Literal["lora", "full"] = "lora"
    trust_remote_code: bool = False
    """Off unless you trust the model's code: it runs arbitrary Python from the model folder."""


class Slice(Strict):
    path: str | list[str]
    """File, glob or list of them (jsonl, json, csv, parquet) or a `datasets.save_to_disk` folder."""
    where: dict[str, Any] = {}
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
    step: builtins.float | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("float", "int", "categorical") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a search dimension needs exactly one of float: [lo, hi], int: [lo, hi], categorical: [..]")
        bounds = self.float or self.int
        if bounds and not bounds[0] < bounds[1]:
            raise ValueError(f"bounds {list(bounds)} must be [low, high] with low < high")
        if bounds and self.log and bounds[0] <= 0:
            raise ValueError("log scale needs a positive low bound")
        if self.categorical is not None and not self.categorical:
            raise ValueError("categorical needs at least one choice")
        return self


class Search(Strict):
    space: dict[str, Dim] = {}
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
    seed: int = 0
    heartbeat: int | None = Field(60, ge=1)
    """Seconds between a worker's heartbeats; a trial silent for 3 beats is failed and retried."""

    @field_validator("space")
    @classmethod
    def _space_not_empty(cls, v):
        if not v:
            raise ValueError(
                "search.space is empty: add at least one dimension, e.g. train.learning_rate: {float: [1e-5, 1e-3], log: true}"
            )
        return v

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


class Tracking(Strict):
    experiment: str | None = None
    """MLflow experiment name; defaults to the spec's name."""
    mlflow_uri: str = MLFLOW_URI
    artifact_root: str = ARTIFACT_ROOT
    optuna_storage: str = OPTUNA_URI
    checkpoint_dir: str = "mlruns/checkpoints"
    """Scratch space for a running trial's checkpoints; the kept one goes to MLflow."""


class Promote(Strict):
    model_name: str | None = None
    """Registered model name; defaults to the spec's name."""
    alias: str = "champion"
    margin: float = Field(0.0, ge=0)
    """The candidate must beat the champion by more than this on the promotion set."""
    path: str | list[str] | None = None
    """Held-out promotion set; defaults to the eval set."""
    objective: str | None = None
    """Multi-objective studies: the objective that picks the best trial (or pass --trial N)."""


class Baseline(Strict):
    """References besides the untouched base model (evaluated by every sweep)."""

    default_run: bool = False
    """After the search, train one run with the method's documented defaults (TRL's SFTConfig, afina's LoRA)
    on the same data for as many steps as all trials together, evaluated like a trial: was the sweep worth it?"""


class Spec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
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
        for key in self.search.space:
            section, _, rest = key.partition(".")
            if section == "train":
                _check_field(rest, f"search.space.{key!r}: train", sft_fields())
            elif section == "lora":
                if self.model.method != "lora":
                    raise ValueError(f"search.space.{key}: lora fields need model.method: lora")
                _check_field(rest, f"search.space.{key!r}: lora", lora_fields())
            elif section == "slices":
                name, _, attr = rest.partition(".")
                if name not in self.data.slices:
                    raise ValueError(f"search.space.{key}: unknown slice {name!r}{hint(name, self.data.slices)}")
                if attr not in ("include", "weight", "fraction"):
                    raise ValueError(
                        f"search.space.{key}: slices can search include, weight or fraction{hint(attr, ['include', 'weight', 'fraction'])}"
                    )
            else:
                raise ValueError(
                    f"search.space.{key}: keys start with train., lora. or slices.{hint(section, ['train', 'lora', 'slices'])}"
                )
        if self.search.sampler == "grid":
            for key, dim in self.search.space.items():
                if dim.float is not None and dim.step is None:
                    raise ValueError(f"search.space.{key}: the grid sampler needs a step or categorical choices")
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


def _check_field(key: str, where: str, valid: dict[str, Any], value: Any = None) -> None:
    if key in OWNED_TRAIN_FIELDS and where.endswith("train"):
        raise ValueError(f"{where}.{key} is managed by afina; remove it")
    if key not in valid:
        raise ValueError(f"{where}.{key} is not a known field{hint(key, valid)}")
    default = valid[key]
    # The dataclasses carry no runtime type checks, so catch the common slips here.
    if isinstance(default, bool) and value is not None and not isinstance(value, bool):
        raise ValueError(f"{where}.{key} must be true or false, not {value!r}")
    if isinstance(default, (int, float)) and not isinstance(default, bool) and value is not None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}.{key} must be a number, not {value!r}")


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


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, which reads 1e-4 as a string; accept it as the float people mean."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d+)[eE][-+]?\d+$|^[-+]?\d[\d_]*\.[\d_]*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


def load(path: str | Path) -> Spec:
    """Read and validate a spec file; raise UserError with one line naming the field and the fix."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such spec file; pass the path of a YAML spec, e.g. experiments/quickstart.yaml")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} is not valid YAML ({getattr(e, 'problem', e)}); fix the syntax") from None
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
        msg = err["msg"].removeprefix("Value error, ")
        raise UserError(f"{path}: {loc}: {msg}" if loc else f"{path}: {msg}") from None
    for key, value in spec.train.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{path}: train.{key} must be a finite number")
    return spec
