"""The search space as data: map it onto `trial.suggest_*` and apply the picks to a spec."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from afina import UserError

if TYPE_CHECKING:
    from afina.spec.schema import Spec


def suggest(trial, space: dict) -> dict[str, Any]:
    """Ask the trial for one value per dimension; Optuna param names are the dotted spec keys."""
    params = {}
    for key, dim in space.items():
        if dim.categorical is not None:
            params[key] = trial.suggest_categorical(key, dim.categorical)
        elif dim.int is not None:
            params[key] = trial.suggest_int(key, dim.int[0], dim.int[1], step=int(dim.step or 1), log=dim.log)
        else:
            params[key] = trial.suggest_float(key, dim.float[0], dim.float[1], step=dim.step, log=dim.log)
    return params


MAX_GRID = 100_000  # grid points; the grid sampler lists them all in memory


def grid_size(space: dict) -> int:
    """How many points a grid over the space has, counted without listing them."""
    size = 1
    for dim in space.values():
        if dim.categorical is not None:
            size *= len(dim.categorical)
        else:
            low, high = dim.int or dim.float
            size *= math.floor((high - low) / (dim.step or 1) + 1e-9) + 1
    return size


def grid(space: dict) -> dict[str, list]:
    """Grid sampler's search space: every categorical choice, every step of a numeric range."""
    import numpy as np

    out = {}
    for key, dim in space.items():
        if dim.categorical is not None:
            out[key] = list(dim.categorical)
        elif dim.int is not None:
            out[key] = list(range(dim.int[0], dim.int[1] + 1, int(dim.step or 1)))
        else:
            out[key] = [float(v) for v in np.arange(dim.float[0], dim.float[1] + dim.step / 2, dim.step)]
    return out


def apply(spec: Spec, params: dict[str, Any]) -> tuple[dict, dict, dict[str, dict]]:
    """Fixed spec values overridden by the trial's picks: (train kwargs, lora kwargs, slice choices)."""
    train, lora = dict(spec.train), dict(spec.lora)
    slices = {
        n: {"include": s.include, "weight": s.weight, "fraction": s.fraction, "max_rows": s.max_rows} for n, s in spec.data.slices.items()
    }
    for key, value in params.items():
        section, _, rest = key.partition(".")
        if section == "train":
            train[rest] = value
        elif section == "lora":
            lora[rest] = value
        else:
            name, _, attr = rest.partition(".")
            slices[name][attr] = value
    return train, lora, slices


# Ranges SFTConfig and LoraConfig do not check themselves: a value outside fails every trial.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "train.learning_rate": (lambda v: v > 0, "above 0"),
    "train.per_device_train_batch_size": (lambda v: v >= 1, "at least 1"),
    "train.per_device_eval_batch_size": (lambda v: v >= 1, "at least 1"),
    "train.gradient_accumulation_steps": (lambda v: v >= 1, "at least 1"),
    "train.num_train_epochs": (lambda v: v > 0, "above 0"),
    "train.max_steps": (lambda v: v > 0 or v == -1, "above 0 (or -1 to train num_train_epochs)"),
    "train.max_length": (lambda v: v >= 1, "at least 1"),
    "train.eval_steps": (lambda v: v > 0, "above 0"),
    "train.logging_steps": (lambda v: v > 0, "above 0"),
    "train.warmup_steps": (lambda v: v >= 0, "0 or more"),
    "train.weight_decay": (lambda v: v >= 0, "0 or more"),
    "train.max_grad_norm": (lambda v: v >= 0, "0 or more"),
    "train.seed": (lambda v: 0 <= v < 2**32, "between 0 and 2**32 - 1"),
    "lora.r": (lambda v: v >= 1, "at least 1"),
    "lora.lora_alpha": (lambda v: v > 0, "above 0"),
    "lora.lora_dropout": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
}


def field_types(cls) -> dict[str, Any]:
    """Field -> its type annotation, resolved, from a config dataclass (SFTConfig, LoraConfig)."""
    import dataclasses
    import typing

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: keep the ones that are already types
        hints = {}
    return {f.name: hints.get(f.name, f.type if not isinstance(f.type, str) else None) for f in dataclasses.fields(cls)}


_ADAPTERS: dict[str, Any] = {}
_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}


def _fits(hint: Any, value: Any) -> str | None:
    """None when `value` has the annotation's type (strict: no "4" for 4, no 4.5 for an int), else what it should be."""
    from pydantic import TypeAdapter, ValidationError

    key = repr(hint)
    if key not in _ADAPTERS:
        try:
            _ADAPTERS[key] = TypeAdapter(hint)
        except Exception:  # types pydantic cannot check (torch.dtype, callables): the config class decides
            _ADAPTERS[key] = None
    if _ADAPTERS[key] is None:
        return None
    try:
        _ADAPTERS[key].validate_python(value, strict=True)
        return None
    except ValidationError:
        import typing

        args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        return _WORDS.get(args[0]) if len(args) == 1 else "of type " + " or ".join(getattr(a, "__name__", str(a)) for a in args)


def points(spec: Spec) -> list[tuple[str, dict[str, Any]]]:
    """The settings a trial can meet at the edges: the fixed spec, then each dimension at each end
    (numeric: low and the highest reachable value) and at every categorical choice, the others fixed."""
    out: list[tuple[str, dict[str, Any]]] = [("the spec's fixed train/lora settings", {})]
    for key, dim in spec.search.space.items():
        if dim.categorical is not None:
            values = list(dim.categorical)
        else:
            low, high = dim.int or dim.float
            step = dim.step or (1 if dim.int is not None else None)
            top = low + math.floor((high - low) / step + 1e-9) * step if step else high
            values = [low, int(top) if dim.int is not None else float(top)]
        out += [(f"search.space.{key}", {key: v}) for v in values]
    return out


def check_values(train: dict, lora: dict, types: dict[str, dict] | None, where: str, error: type[Exception] = UserError) -> None:
    """Types (when the config classes' field `types` are given) and ranges of one point's settings, in the user's words."""
    for section, values in (("train", train), ("lora", lora)):
        for key, value in values.items():
            name = f"{section}.{key}"
            hint = types[section].get(key) if types else None
            if hint is not None and (want := _fits(hint, value)):
                raise error(f"{where}: {name} must be {want}, not {value!r}")
            rule = RULES.get(name)
            if rule and isinstance(value, (int, float)) and not isinstance(value, bool) and not rule[0](value):
                raise error(f"{where}: {name} = {value!r} is out of range; it must be {rule[1]}")
