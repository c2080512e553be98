"""Trials taken as one of possibly many workers on one study: which trials count as finished, the loop
that takes trials while the budget has room, the tie-break between workers that ask at the same moment,
the lock workers hold while they set a sweep up, and the requeue of interrupted trials."""

from __future__ import annotations

import contextlib
import gc
import time
from typing import TYPE_CHECKING

from afina.search import budget, design, distinct
from afina.search import study as study_mod
from afina.training import stop

if TYPE_CHECKING:
    import optuna

    from afina.spec.schema import Spec

FINISHED = ("COMPLETE", "PRUNED", "FAIL")


def finished(study: optuna.Study) -> int:
    """Trials that used up the budget. A trial that was interrupted, died and was retried, or never
    trained (a duplicate draw, a surplus one), does not."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    return sum(
        1
        for t in trials
        if t.state.name in FINISHED
        and t.number not in retried
        and not (t.state.name == "FAIL" and (t.user_attrs.get("interrupted") or study_mod.skipped(t)))
    )


def work(study: optuna.Study, objective, after, spec: Spec, length: int, streak: list[int], seed: int) -> str | None:
    """Take trials until the study holds n_trials or the search's share of the budget is spent
    (search/budget.py: a trial of `length` steps must fit), as one of possibly many workers; returns why it
    stopped early, if it did.

    A trial starts only while finished + running trials leave room for it, so workers do not
    overshoot the budget. With no room, a worker waits while others run: one of them may die, and its
    retry (queued by Optuna's heartbeat check, which this wait runs) needs a taker. When the sampler
    keeps repeating itself, an untried set of a finite space is queued by hand (search/distinct.py); a choice
    of a searched slice that the start-up has not drawn yet is queued too (search/design.py).
    """
    import warnings

    import optuna

    beat, n = spec.search.heartbeat, spec.search.n_trials
    deadline = time.monotonic() + spec.search.timeout if spec.search.timeout else None
    while not stop.STOP.is_set() and finished(study) < n:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return None
        if why := distinct.exhausted(study, spec.search.space):
            return why
        if streak[0] >= distinct.PATIENCE:
            if distinct.size(spec.search.space) is None:
                return f"the sampler drew {streak[0]} already-tried parameter sets in a row; widen search.space or change the sampler"
            if (untried := distinct.untried(study, spec.search.space, seed + len(study.trials))) is not None:
                study.enqueue_trial(untried, user_attrs={"untried_pick": True})
            streak[0] = 0
        # WAITING trials (enqueued, requeued, retries) are not counted: optimize() takes them first.
        live = sum(t.state.name == "RUNNING" for t in study.get_trials(deepcopy=False)) if beat else 0
        fits = budget.room(study, spec, length)
        if finished(study) + live < n and fits:
            design.fill(study, spec.search)  # the start-up tries every choice of a searched slice (search/design.py)
            study.optimize(objective, n_trials=1, timeout=left, catch=(Exception,), callbacks=[after, _collect])
            continue
        if not fits and not live:
            return None  # the budget's search share is spent and no trial is still running
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        time.sleep(min(beat, 5))
    return None


def _collect(study: optuna.Study, t) -> None:
    """Optuna's gc_after_trial, less the draws skipped before training: a full collection costs about 0.5 s
    once torch and transformers are loaded, and a small space can skip dozens of repeated draws."""
    if not study_mod.skipped(t):
        gc.collect()  # the trainer's and model's reference cycles, before the next trial loads its model


def surplus(study, t, n: int) -> bool:
    """Lock-free tie-break for workers that asked for a trial at the same moment: lower numbers win.

    Queued trials (retries of dead workers, requeued interrupted ones) go before fresh ones.
    """
    trials = study.get_trials(deepcopy=False)
    me = next(x for x in trials if x.number == t.number)
    queued = "fixed_params" in me.system_attrs or "failed_trial" in me.system_attrs
    ahead = sum(
        1
        for x in trials
        if x.number != t.number
        and ((x.state.name == "RUNNING" and x.number < t.number) or (x.state.name == "WAITING" and (not queued or x.number < t.number)))
    )
    return finished(study) + ahead >= n


@contextlib.contextmanager
def exclusive(url: str, name: str):
    """A PostgreSQL advisory lock on the study's name, held by one worker at a time (no-op elsewhere).

    Its own connection to the study's database, not Optuna's (whose engine is private).
    """
    import hashlib

    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    if engine.dialect.name != "postgresql":
        yield
        return
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:7], "big")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


def requeue_interrupted(study) -> None:
    """An interrupted trial is run again with the same params by the next sweep."""
    requeued = set(study.user_attrs.get("requeued", []))
    for t in study.get_trials(deepcopy=False):
        if t.state.name == "FAIL" and t.user_attrs.get("interrupted") and t.number not in requeued:
            study.enqueue_trial(t.params, user_attrs={"resumes_trial": t.number})
            requeued.add(t.number)
            study.set_user_attr("requeued", sorted(requeued))
