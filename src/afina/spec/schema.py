"""The experiment spec: one pydantic schema, validated once at load.

Every section rejects unknown keys and names the nearest valid one. `train` takes any TRL
`SFTConfig` field and `lora` any PEFT `LoraConfig` field, so anything those accept can be
fixed or searched. Relative data paths resolve against the spec file's folder.

The sections live in spec/trained.py (model, data, search) and spec/outcomes.py (the rest), the
TRL/PEFT field checks in spec/fields.py, the strict YAML reading in spec/yaml_file.py; this module
ties them into `Spec`, checks what spans sections, and is the entry point: `load`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from afina import UserError, hint
from afina.spec import metric_names, yaml_file
from afina.spec.fields import SLICE_RANGES, check_dim, check_field, check_slice_dim, lora_fields, sft_fields
from afina.spec.outcomes import Baseline, Budget, Evaluate, Promote, Resources, Samples, Tracking
from afina.spec.trained import MAX_NAME, NAME_RULE, Data, Dim, Eval, Model, Search, Strict

__all__ = ["Data", "Dim", "Eval", "Model", "Search", "Spec", "load"]  # callers name the sections through afina.spec


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
    resources: Resources = Resources()
    """What each worker of `afina sweep --workers N` asks Ray for."""
    base_dir: Path = Field(Path("."), exclude=True)
    """Folder of the spec file; relative data paths resolve against it (not a YAML key)."""

    @field_validator("train", "lora")
    @classmethod
    def _known_fields(cls, v, info: ValidationInfo):
        known = sft_fields() if info.field_name == "train" else lora_fields()  # SFTConfig's fields, LoraConfig's
        for key, value in v.items():
            check_field(key, info.field_name, known, value)
        return v

    @model_validator(mode="after")
    def _space_keys(self):
        for key, dim in self.search.space.items():
            section, _, rest = key.partition(".")
            if section == "train":
                check_dim(rest, f"search.space.{key!r}: train", sft_fields(), dim)
            elif section == "lora":
                if self.model.method != "lora":
                    raise ValueError(f"search.space.{key}: lora fields need model.method: lora")
                check_dim(rest, f"search.space.{key!r}: lora", lora_fields(), dim)
            elif section == "slices":
                name, _, attr = rest.partition(".")
                if name not in self.data.slices:
                    raise ValueError(f"search.space.{key}: unknown slice {name!r}{hint(name, self.data.slices)}")
                if attr not in SLICE_RANGES:
                    raise ValueError(
                        f"search.space.{key}: slices can search include, weight or fraction{hint(attr, ['include', 'weight', 'fraction'])}"
                    )
                check_slice_dim(key, attr, dim)
            else:
                raise ValueError(
                    f"search.space.{key}: keys start with train., lora. or slices.{hint(section, ['train', 'lora', 'slices'])}"
                )
        if self.search.sampler == "grid":
            for key, dim in self.search.space.items():
                if dim.float is not None and dim.step is None:
                    raise ValueError(f"search.space.{key}: the grid sampler needs a step or categorical choices")
            from afina.spec import space as space_mod

            if (n := space_mod.grid_size(self.search.space)) > space_mod.MAX_GRID:
                raise ValueError(
                    f"search.space: the grid has {n:.3g} points (at most {space_mod.MAX_GRID}); use larger steps or fewer choices"
                )
        from afina.spec import space  # ranges at the fixed values and at each end of the space (types: `afina sweep`)

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
    def _promote_objective(self):
        """promote.objective picks among the study's objectives: a name that is not one would be ignored."""
        names, chosen = self.search.objectives, self.promote.objective
        if chosen is not None and chosen not in names:
            raise ValueError(
                f"promote.objective {chosen!r} is not one of search.objective{hint(chosen, names)}; use one of: {', '.join(names)}"
            )
        return self

    @model_validator(mode="after")
    def _metrics(self):
        # unknown metrics and unimportable scorers fail at load
        metric_names.parse(self.evaluate.metrics or [], self.base_dir)
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
    raw = yaml_file.read(path)
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
