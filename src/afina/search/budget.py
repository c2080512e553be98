"""The sweep's step budget: what the search has spent, whether another trial fits, what the refit gets.

`budget: {steps: N, refit: 0.5}` splits N training steps between the search and the refit of the
winner. Every trial records the steps it trained in its own process (user attr `steps`, kept
up to date at each evaluation and checkpoint): a pruned trial counts the steps it ran, a resumed
one counts from its checkpoint on, and its killed predecessor keeps what it had recorded. So the
refit's share is never spent on the search, whatever happens to the trials.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from afina import UserError
from afina.search import records
from afina.training import schedule

if TYPE_CHECKING:
    import optuna

    from afina.spec.schema import Spec


def trial_steps(spec: Spec, n_rows: int) -> int:
    """Steps one trial plans to train (the upper bound when train.max_steps is searched)."""
    dim = spec.search.space.get("train.max_steps")
    if dim is not None:
        return int(max(dim.int or dim.float or dim.categorical))
    return schedule.total_steps(dict(spec.train), n_rows)


def steps(t) -> int:
    """Steps one trial trained; a trial from before afina recorded them counts up to its last evaluation."""
    got = t.user_attrs.get(schedule.STEPS)
    return int(got if got is not None else max(t.intermediate_values, default=0))


def spent(study: optuna.Study) -> int:
    """Steps the search has trained so far: every trial, finished or running, pruned and failed ones too."""
    return sum(steps(t) for t in study.get_trials(deepcopy=False))


def search_share(spec: Spec) -> int | None:
    """Steps the search may spend (None: no step budget, n_trials alone decides)."""
    b = spec.budget
    return None if b is None or b.steps is None else int(b.steps * (1 - b.refit))


def room(study: optuna.Study, spec: Spec, length: int) -> bool:
    """Whether a trial of `length` steps still fits in the search's share, running trials counted at full length."""
    share = search_share(spec)
    if share is None:
        return True
    trials = study.get_trials(deepcopy=False)
    running = sum(1 for t in trials if t.state.name == "RUNNING")
    done = sum(steps(t) for t in trials if t.state.name != "RUNNING")
    return done + running * length + length <= share


def refit_steps(study: optuna.Study, spec: Spec) -> int:
    """Steps of the refit: the budget minus what the search spent; without budget.steps, the refit's share
    of a total the search's spending implies (spent / (1 - refit)). 0: no refit."""
    b = spec.budget
    if b is None or b.refit <= 0:
        return 0
    used = spent(study)
    if b.steps is not None:
        return max(0, b.steps - used)
    return round(used * b.refit / (1 - b.refit))


def sweep_steps(study: optuna.Study) -> int:
    """Steps the whole sweep trained: the search plus the refit once it has run. A default run of equal
    compute (the reference) trains this many."""
    refit = records.load(study, records.Refit)
    return spent(study) + (int(refit.steps) if refit and refit.state == "COMPLETE" else 0)


def check(spec: Spec, length: int) -> None:
    """A search share smaller than one trial would start nothing: say so before anything is written."""
    share = search_share(spec)
    if share is not None and share < length:
        raise UserError(
            f"budget.steps {spec.budget.steps} leaves the search {share} steps, less than one trial's {length}; "
            "raise budget.steps, lower budget.refit or shorten the trials (train.max_steps)"
        )
