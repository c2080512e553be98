"""Every slice and the eval set loaded once per sweep (`prepare`), and each trial's training rows mixed
from them (`mix`).

The pieces below: data/sources.py reads sources into records, data/chat_rows.py maps records onto chat
rows, data/token_cache.py tokenizes rows as TRL does. This module is the data layer's entry point, so
the names callers reach through `afina.data` are kept here.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afina import UserError
from afina.data.chat_rows import Issue, Row, fingerprint, normalize, select
from afina.data.sources import files, prompts, read
from afina.data.token_cache import answer, to_dataset, tokenized

if TYPE_CHECKING:
    from afina.spec.schema import Spec

__all__ = ["Prepared", "answer", "files", "fingerprint", "mix", "prepare", "prompts", "read", "to_dataset", "tokenized"]


@dataclass
class Prepared:
    """All slices and the eval set, loaded once per sweep; trials only mix them."""

    slices: dict[str, list[Row]]
    eval: list[Row]
    fingerprints: dict[str, str]
    issues: list[Issue] = field(default_factory=list)
    """Rows skipped because they could not be mapped (only when prepared with collect=True)."""
    report: Any = None
    """The `afina check` report, when a sweep ran it."""


def load_rows(
    spec: Spec,
    paths,
    label: str,
    fmt="auto",
    columns=None,
    system=None,
    filt=None,
    cache: dict | None = None,
    issues: list[Issue] | None = None,
) -> list[Row]:
    """Rows of one source (file, glob, list, hub id), filtered by `filt` and mapped."""
    cache = {} if cache is None else cache
    rows = []
    for p in files(paths, spec.base_dir):
        if p not in cache:
            cache[p] = read(p)
        recs = select(cache[p], filt or {}, f"{label} ({p.name})")
        # origin numbers refer to the row in the file, so a filter keeps the original index
        index = {id(r): i for i, r in enumerate(cache[p], 1)}
        rows += normalize(recs, p.name, fmt, columns, system, issues, [index[id(r)] for r in recs])
    return rows


def prepare(spec: Spec, collect: bool = False) -> Prepared:
    """Load every slice and the eval set. collect=True reports unmappable rows and empty sets in
    `Prepared.issues` instead of raising, so `afina check` can list them all."""
    cache: dict[Path, list[dict]] = {}
    issues: list[Issue] = []

    def problem(where: str, fld: str, message: str) -> None:
        if not collect:
            raise UserError(f"{where}: {message}")
        issues.append(Issue("error", where, fld, message))

    slices = {}
    for name, s in spec.data.slices.items():
        rows = load_rows(spec, s.path, f"slice {name}", s.format, s.columns, s.system, s.where, cache, issues if collect else None)
        if not rows:
            problem(
                f"slice {name}",
                "where" if s.where else "path",
                f"is empty (no usable rows{' match ' + json.dumps(s.where) if s.where else ''}); fix its path or filter",
            )
        slices[name] = rows
    ev = spec.data.eval
    if ev.path is not None:
        eval_rows = load_rows(spec, ev.path, "eval", ev.format, ev.columns, ev.system, None, cache, issues if collect else None)
    else:
        eval_rows = []
        for name in spec.eval_slices:  # never a slice the search varies, unless the spec names it
            rng = random.Random(f"{spec.data.seed}:{name}")
            rows = slices[name][:]
            rng.shuffle(rows)
            n = max(1, round(len(rows) * ev.split)) if len(rows) > 1 else 0
            eval_rows += rows[:n]
            slices[name] = rows[n:]
        # a cap must not keep only the first slices in name order
        random.Random(f"{spec.data.seed}:eval").shuffle(eval_rows)
    if ev.max_rows:
        eval_rows = eval_rows[: ev.max_rows]
    if not eval_rows:
        problem(
            "data.eval",
            "path" if ev.path else "split",
            "the eval set is empty; point data.eval.path at held-out rows or set data.eval.split: 0.1",
        )
    prints = {f"slice.{n}": fingerprint(r) for n, r in slices.items()} | {"eval": fingerprint(eval_rows)}
    return Prepared(slices, eval_rows, prints, issues)


def mix(prepared: Prepared, choices: dict[str, dict[str, Any]], seed: int) -> tuple[list[Row], dict[str, int]]:
    """The trial's training rows from per-slice include/weight/fraction/max_rows choices.

    fraction and max_rows subsample a slice; weight then scales its natural share of the mix
    (all weights 1: every row once). The total stays the sum of the included slices, so slices
    with weight > their neighbours are upsampled with replacement. Seeded: same choices, same rows.
    """
    base: dict[str, list[Row]] = {}
    for name, rows in prepared.slices.items():
        c = choices[name]
        if not c["include"] or c["weight"] <= 0 or not rows:
            continue
        rng = random.Random(f"{seed}:{name}:take")
        n = max(1, round(len(rows) * c["fraction"]))
        if c.get("max_rows"):
            n = min(n, c["max_rows"])
        base[name] = rng.sample(rows, n) if n < len(rows) else rows[:]
    total = sum(len(r) for r in base.values())
    mass = sum(len(r) * choices[n]["weight"] for n, r in base.items())
    out: list[Row] = []
    counts: dict[str, int] = {n: 0 for n in prepared.slices}
    for name, rows in base.items():
        target = max(1, round(total * len(rows) * choices[name]["weight"] / mass))
        rng = random.Random(f"{seed}:{name}:mix")
        picked = (
            rows[:]
            if target == len(rows)
            else rng.sample(rows, target)
            if target < len(rows)
            else rows + rng.choices(rows, k=target - len(rows))
        )
        counts[name] = len(picked)
        out += picked
    random.Random(f"{seed}:shuffle").shuffle(out)
    return out, counts
