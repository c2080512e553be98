"""The start-up design (search/design.py): a searched slice is tried both ways, in a real TPE sweep and on in-memory studies."""

from __future__ import annotations

import json

import optuna

from afina.search import design
from afina.spec import space
from afina.spec.trained import Search
from helpers.specs import tiny_spec, write_spec

LR = {"float": [1e-4, 1e-2], "log": True}
SEED = 17  # TPE's random start-up with this seed draws slices.poesia.include = true for trials 0, 1 and 2


def search(**kw) -> Search:
    return Search(**{"space": {"train.learning_rate": LR, "slices.poesia.include": {"categorical": [True, False]}}, "seed": SEED, **kw})


def drawn(s: Search, n: int, with_design: bool) -> optuna.Study:
    """n trials of an in-memory study under the spec's sampler, the design queueing its picks first when asked."""
    from afina.search import study as study_mod

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=study_mod.sampler(s))
    for _ in range(n):
        if with_design:
            design.fill(study, s)
        t = study.ask()  # takes a queued trial first
        space.suggest(t, s.space)
        study.tell(t, 1.0)
    return study


def includes(study: optuna.Study) -> list[bool]:
    return [t.params["slices.poesia.include"] for t in study.get_trials()]


def test_the_sampler_alone_draws_one_choice_and_the_design_adds_the_other():
    s = search(n_trials=3)
    assert includes(drawn(s, 3, with_design=False)) == [True, True, True]  # the held-out failure: "never varied"
    study = drawn(s, 3, with_design=True)
    assert includes(study) == [True, False, True]  # trial 0 is the sampler's own; trial 1 fixes the untried choice
    picked = [t for t in study.get_trials() if design.ATTR in t.user_attrs]
    assert [t.number for t in picked] == [1] and picked[0].user_attrs[design.ATTR] == ["slices.poesia.include"]
    lrs = [t.params["train.learning_rate"] for t in study.get_trials()]
    assert len(set(lrs)) == 3  # the sampler still draws the other dimensions of a design trial


def test_once_every_choice_was_tried_the_sampler_draws_freely():
    s = search(seed=0)  # seed 0's own draws: true, then false
    study = drawn(s, 6, with_design=True)
    assert includes(study)[:2] == includes(drawn(s, 2, with_design=False)) == [True, False]
    assert [t.number for t in study.get_trials() if design.ATTR in t.user_attrs] == [1]  # the pick came before the draw


def test_several_slices_are_covered_together_by_the_trial_of_the_most_choices():
    s = Search(
        space={
            "slices.poesia.include": {"categorical": [True, False]},
            "slices.faq.weight": {"categorical": [0.25, 0.5, 1.0]},
            "slices.productos.weight": {"float": [0.0, 1.0]},  # a range varies by itself: never fixed
            "lora.r": {"categorical": [2, 4, 8, 16]},  # not a slice: left to the sampler
        },
        seed=SEED,
    )
    study = drawn(s, 3, with_design=True)
    ts = study.get_trials()
    assert {t.params["slices.poesia.include"] for t in ts} == {True, False}
    assert {t.params["slices.faq.weight"] for t in ts} == {0.25, 0.5, 1.0}
    for t in ts:
        fixed = set(t.system_attrs.get("fixed_params", {}))
        assert fixed == set(t.user_attrs.get(design.ATTR, [])) and fixed <= {"slices.poesia.include", "slices.faq.weight"}


def test_no_pick_for_a_grid_a_queued_trial_a_fresh_study_or_after_the_start_up():
    study = drawn(search(), 1, with_design=False)
    assert design.pick(study, search()) == {"slices.poesia.include": False}
    assert design.pick(study, search(sampler="grid")) is None  # a grid tries every choice by itself
    assert design.pick(study, Search(space={"slices.poesia.weight": {"float": [0.0, 1.0]}})) is None
    assert design.pick(drawn(search(), 0, with_design=False), search()) is None  # the first trial is the sampler's
    # after the start-up (n_startup_trials, at least the most choices) TPE keeps its freedom
    late = drawn(search(sampler_args={"n_startup_trials": 2}), 2, with_design=False)
    assert includes(late) == [True, True] and design.pick(late, search(sampler_args={"n_startup_trials": 2})) is None
    assert design.window(search(sampler_args={"n_startup_trials": 1})) == 2  # never fewer than the choices to cover
    study.enqueue_trial({"slices.poesia.include": True}, user_attrs={"resumes_trial": 0})
    assert design.pick(study, search()) is None  # a requeued trial runs first (resume order); then the pick


def test_skipped_trials_cover_nothing_and_failed_ones_do():
    s = search()
    study = drawn(s, 1, with_design=False)  # include=True
    dup = study.ask()
    space.suggest(dup, s.space)
    dup.set_user_attr("duplicate_of", 0)  # a draw that never trained: the design cannot count it
    study.tell(dup, state=optuna.trial.TrialState.FAIL)
    # force the missing choice onto a trial that then fails: it was tried, so nothing is left to pick
    assert design.pick(study, s) == {"slices.poesia.include": False}
    study.enqueue_trial({"slices.poesia.include": False})
    t = study.ask()
    space.suggest(t, s.space)
    study.tell(t, state=optuna.trial.TrialState.FAIL)
    assert design.pick(study, s) is None


def test_a_short_tpe_sweep_trains_the_slice_both_ways(project, cli):
    """The held-out failure: a budgeted TPE sweep whose start-up drew include=true every time; now one
    trial trains without the slice, the MLflow runs show it, and the trial says why."""
    n = 3
    spec = tiny_spec(
        search={"n_trials": n, "sampler": "tpe", "seed": SEED, "space": search().model_dump()["space"]},
        train={"max_steps": 2},
        samples={"prompts": []},
    )
    s = Search(**spec["search"])
    assert set(includes(drawn(s, n, with_design=False))) == {True}  # without the design: one choice only
    code, _, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 0, err
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{project}/mlruns/optuna.db")
    ts = study.get_trials()
    assert [t.state.name for t in ts] == ["COMPLETE"] * n
    assert includes(study)[:2] == [True, False]
    assert [t.number for t in ts if t.user_attrs.get(design.ATTR) == ["slices.poesia.include"]] == [1]
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    runs = [c.get_run(t.user_attrs["mlflow_run_id"]) for t in ts]
    trained = {json.loads(r.data.params["slices.poesia.include"]): int(r.data.params["rows.poesia"]) for r in runs}
    assert set(trained) == {True, False} and trained[True] > 0 and trained[False] == 0
