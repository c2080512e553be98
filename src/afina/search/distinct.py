"""No repeated trials: each worker process samples from its own stream, and a draw equal to an
earlier trial's parameters is never trained.

A seeded sampler in a new process repeats the draws of the first one: a resumed sweep re-ran
trial 0's parameters, and N workers started together drew identical first trials. So each process
derives its sampler's seed from `search.seed`, the trials already in the study and its ordinal
among the workers that ever joined the study (counted in the study). The first worker of a fresh
study keeps `search.seed` itself, so a single fresh sweep stays reproducible.

Equal draws can still happen (a small categorical space, two workers at one moment). Such a
trial is marked `duplicate_of` and fails at once, before any run or training; it does not count
towards n_trials and the next draw is asked for. Deliberate repeats pass: trials enqueued by hand,
requeued after Ctrl-C, or retried after their worker died. A finite space whose every parameter
set has been tried ends the sweep with a message.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from typing import Any

from afina.search.study import DUPLICATE, skipped
from afina.spec import space as space_mod

PATIENCE = 20  # duplicate draws in a row before the sweep picks an untried set itself (finite) or stops


class Duplicate(Exception):
    """The trial's parameters equal an earlier trial's; it is skipped, not trained."""


def stream_seed(study, seed: int) -> int:
    """This process's sampler seed. Call once per process, while holding the study's lock if there is one."""
    ordinal = int(study.user_attrs.get("workers", 0))
    study.set_user_attr("workers", ordinal + 1)
    n = len(study.get_trials(deepcopy=False))
    if ordinal == 0 and n == 0:
        return seed  # a fresh study's first worker: the spec's seed, reproducible
    return int.from_bytes(hashlib.sha256(f"{seed}:{n}:{ordinal}".encode()).digest()[:4], "big")


def check(study, trial, params: dict[str, Any]) -> None:
    """Raise Duplicate (and mark the trial) when a fresh draw repeats an earlier trial's params."""
    trials = study.get_trials(deepcopy=False)
    me = next(t for t in trials if t.number == trial.number)
    if "fixed_params" in me.system_attrs or "failed_trial" in me.system_attrs:
        return  # enqueued, requeued or retried on purpose
    if not params:
        return  # `space: {}` trains the fixed settings n_trials times: every trial repeats on purpose
    for t in trials:
        # earlier trials only: of two equal draws at one moment, the lower number trains
        if t.number < trial.number and t.params == params and not skipped(t):
            trial.set_user_attr(DUPLICATE, t.number)
            raise Duplicate(f"parameters equal trial {t.number}'s; drawing again")


def size(space: dict) -> int | None:
    """Number of distinct parameter sets of a finite space (None: a float range without step)."""
    if any(d.float is not None and d.step is None for d in space.values()):
        return None
    return math.prod(len(v) for v in space_mod.grid(space).values())


def tried(study) -> set[tuple]:
    return {tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False) if t.params and not skipped(t)}


def untried(study, space: dict, seed: int) -> dict[str, Any] | None:
    """A random parameter set of a finite space that no trial has had yet (None when all have)."""
    grid = space_mod.grid(space)
    seen = tried(study)
    keys = sorted(grid)
    left = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
    left = [p for p in left if tuple(sorted(p.items())) not in seen]
    return random.Random(seed).choice(left) if left else None


def exhausted(study, space: dict) -> str | None:
    """A message when every parameter set of a finite space has been tried."""
    n = size(space)
    if any(t.state.name == "WAITING" for t in study.get_trials(deepcopy=False)):
        return None  # queued trials (enqueued by hand, retries) run even when every set has been tried
    if n is not None and len(tried(study)) >= n:
        return f"every one of the {n} parameter sets of search.space has been tried; widen search.space to run more trials"
    return None
