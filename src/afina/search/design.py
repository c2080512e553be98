"""The start-up design: every choice of a searched slice is tried early, so even a short sweep can say
something about its data.

A sampler's random start-up can draw the same choice every time: three trials of TPE with seed 17
all drew `slices.poesia.include = true`, and the verdict on that slice was "never varied". So,
before each trial of the start-up, a choice of a searched slice that no trial has had yet is queued
(`study.enqueue_trial` with just those keys fixed; the sampler draws the rest as usual):

- The first trial is the sampler's own. After it, while some categorical `slices.*` dimension (include,
  or a weight, fraction or max_rows given as choices) has a choice no trial has had, the next trial
  fixes one such choice of every dimension that lacks one, in their declared order. A dimension of k
  choices is covered by trial k-1, so n_trials >= the most choices covers them all. The pick is made
  before the sampler draws (a fixed key takes nothing from its random stream), so a seeded sweep's trial 1
  always has the other choice of a true/false slice, and its later draws differ from the sampler's own
  stream; once every choice was tried, nothing more is fixed.
- Only in the start-up: the first max(n_startup_trials, most choices) trials (TPE's n_startup_trials,
  10 unless sampler_args say; the random sampler is treated alike). Later TPE keeps its freedom.
- Not for the grid sampler (it tries every choice by itself), nor for float or int ranges: two draws
  from a range never tie, so a range always varies; whether a slice helps at its extremes (weight 0)
  is `afina ablate`'s question.
- Trials that never trained (a duplicate draw, a surplus one) cover nothing; a failed or pruned one
  was tried and covers its choice.
- Queued only when nothing else waits: requeued interrupted trials and heartbeat retries run first
  (resume order), and two workers rarely queue the same pick (a duplicate pick costs one trial).
  A queued trial skips the duplicate-draw guard (search/distinct.py) and goes first in the surplus
  tie-break (worker_loop.surplus), as every enqueued trial does.

The trial's user attribute `design_pick` lists the keys it fixed, so a reader knows why it has them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from afina.search.study import skipped

if TYPE_CHECKING:
    import optuna

    from afina.spec.schema import Search

ATTR = "design_pick"


def window(search: Search) -> int:
    """How many first trials the design may fix choices in: the sampler's random start-up, at least
    as many as the most choices of a searched slice dimension. 0 for the grid sampler or no such dimension."""
    dims = choices(search.space)
    if search.sampler == "grid" or not dims:
        return 0
    import inspect

    import optuna

    default = inspect.signature(optuna.samplers.TPESampler).parameters["n_startup_trials"].default
    startup = int(search.sampler_args.get("n_startup_trials", default))
    return max(startup, *(len(c) for c in dims.values()))


def choices(space: dict) -> dict[str, list]:
    """The searched slice dimensions given as choices: key -> its choices."""
    return {k: list(d.categorical) for k, d in space.items() if k.startswith("slices.") and d.categorical is not None}


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b  # 1 and True are different choices


def pick(study: optuna.Study, search: Search) -> dict[str, Any] | None:
    """The choices the next trial should fix (key -> choice), or None when the sampler may draw freely."""
    dims = choices(search.space)
    if not dims:
        return None
    trials = study.get_trials(deepcopy=False)
    if any(t.state.name == "WAITING" for t in trials):
        return None  # a requeued, retried or earlier pick runs first
    tried = [t.params for t in trials if not skipped(t)]
    if not tried or len(tried) >= window(search):
        return None  # the first trial is the sampler's; after the start-up, it is TPE's again
    out = {}
    for key, options in dims.items():
        seen = [p[key] for p in tried if key in p]
        left = [c for c in options if not any(_same(c, v) for v in seen)]
        if left:
            out[key] = left[0]
    return out or None


def fill(study: optuna.Study, search: Search) -> dict[str, Any] | None:
    """Queue the next trial with the untried choices `pick` finds; returns what it queued."""
    fixed = pick(study, search)
    if fixed:
        study.enqueue_trial(fixed, user_attrs={ATTR: sorted(fixed)})
    return fixed
