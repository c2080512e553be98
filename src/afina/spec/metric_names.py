"""The metric grammar: what `evaluate.metrics` accepts and what each entry names (the scoring is in
evaluation/metrics.py). Here so the spec checks metric names at load without importing the scorers."""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from afina import hint

# What a trial measures besides generation metrics; anything here may be a search objective.
TRAINING = ("train_loss", "train_runtime", "train_tokens")  # how training went: not a quality of the answers
TRAIN_RESULTS = ("eval_loss", *TRAINING)
REFERENCE_BASED = {"rougeL", "chrf", "exact_match"}
PLAIN = {"rougeL", "chrf", "exact_match", "length", "json"}
WITH_ARG = {"contains", "not_contains", "regex", "custom"}


@dataclass
class Metric:
    name: str
    kind: str
    arg: Any = None
    fn: Callable | None = None

    @property
    def needs_reference(self) -> bool:
        return self.kind in REFERENCE_BASED


def parse(entries: list, base_dir: Path | str = ".") -> list[Metric]:
    """Spec entries -> metrics; ValueError (turned into a one-line UserError by spec.load) on bad ones."""
    out: list[Metric] = []
    for i, entry in enumerate(entries):
        where = f"evaluate.metrics[{i}]"
        if isinstance(entry, str):
            if entry not in PLAIN:
                near = hint(entry, PLAIN | WITH_ARG)
                raise ValueError(
                    f"{where}: unknown metric {entry!r}{near}; "
                    f"known: {', '.join(sorted(PLAIN))}, or {{contains|not_contains|regex|custom: ...}}"
                )
            out.append(Metric(entry, entry))
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: a metric is a name or a mapping such as {{contains: [word]}}")
        kinds = [k for k in entry if k != "name"]
        if len(kinds) != 1 or kinds[0] not in WITH_ARG:
            raise ValueError(
                f"{where}: a mapping needs exactly one of {', '.join(sorted(WITH_ARG))} (plus an optional name), got {sorted(entry)}"
            )
        kind, arg = kinds[0], entry[kinds[0]]
        name = entry.get("name")
        if kind in ("contains", "not_contains"):
            arg = [arg] if isinstance(arg, str) else arg
            if not isinstance(arg, list) or not arg or not all(isinstance(w, str) and w for w in arg):
                raise ValueError(f"{where}.{kind}: give a keyword or a list of keywords")
        elif kind == "regex":
            try:
                re.compile(arg)
            except (re.error, TypeError) as e:
                raise ValueError(f"{where}.regex {arg!r} is not a valid regular expression ({e})") from None
        else:
            fn = load_scorer(arg, base_dir, where)
            name = name or fn.__name__
            out.append(Metric(name, kind, arg, fn))
            continue
        out.append(Metric(name or kind, kind, arg))
    names = [m.name for m in out]
    for i, name in enumerate(names):  # each becomes an MLflow metric key and a report column
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name):
            raise ValueError(
                f"evaluate.metrics[{i}]: name {str(name)[:80]!r} is not allowed; use letters, digits, _ and - (at most 64 characters)"
            )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"evaluate.metrics: the name {dupes[0]!r} is used twice; give one of them `name: ...`")
    return out


def load_scorer(ref: Any, base_dir: Path | str, where: str = "custom") -> Callable:
    """`module:function`, importable from the spec's folder or the environment."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise ValueError(f"{where}.custom must be 'module:function', e.g. my_scorers:politeness")
    mod_name, fn_name = ref.split(":")
    folder = str(Path(base_dir).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)  # scorers may live next to the spec
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # any import-time error is the user's to fix
        raise ValueError(
            f"{where}.custom: cannot import {mod_name!r} ({type(e).__name__}: {e}); put {mod_name}.py next to the spec or install it"
        ) from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"{where}.custom: {mod_name!r} has no function {fn_name!r}")
    return fn
