"""`train` and `lora` keys checked against the installed TRL `SFTConfig` and PEFT `LoraConfig`, and the
search space's values against the fields they set."""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afina import hint

if TYPE_CHECKING:
    from afina.spec.trained import Dim

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


def check_field(key: str, where: str, valid: dict[str, Any], value: Any = None) -> None:
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


def check_slice_dim(key: str, attr: str, dim: Dim) -> None:
    values = dim.categorical if dim.categorical is not None else list(dim.float or dim.int or ())
    if attr == "include":
        if dim.categorical is None or not all(isinstance(v, bool) for v in values):
            raise ValueError(f"search.space.{key}: include takes {{categorical: [true, false]}}")
        return
    low, high, words = SLICE_RANGES[attr]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high or (attr == "fraction" and v == 0):
            raise ValueError(f"search.space.{key}: {v!r} is out of range; a slice's {attr} is {words}")


def check_dim(key: str, where: str, valid: dict[str, Any], dim: Dim) -> None:
    """The field exists, and every value the dimension can take has the field's type."""
    check_field(key, where, valid)
    if dim.categorical is not None:
        for value in dim.categorical:
            check_field(key, where, valid, value)
        return
    default = valid[key]
    if isinstance(default, bool) or isinstance(default, str):
        raise ValueError(f"{where}.{key} is {'true/false' if isinstance(default, bool) else 'text'}; search it with categorical: [..]")
