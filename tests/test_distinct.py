"""No repeated trials: per-process sampler streams, duplicate draws skipped, a finite space that runs out.

Real sweeps of the tiny random model on SQLite; the kill test runs `afina sweep` as a subprocess and
kills it with SIGKILL during trial 0.
"""

from __future__ import annotations

import os
import signal

import optuna
import pytest

from afina.commands.sweep import finished
from afina.search import distinct
from helpers.services import sweep, trial_running, wait_for
from helpers.specs import tiny_spec, write_spec


def trials(project, name: str = "tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{project}/mlruns/optuna.db").get_trials()


def key(t) -> tuple:
    return tuple(sorted(t.params.items()))


def trained(ts) -> list:
    return [t for t in ts if not distinct.skipped(t)]


def test_fresh_sweep_is_reproducible_and_a_resume_draws_new_params(tmp_path, cli, monkeypatch):
    """Same seed, fresh study: same first params. Resumed: a new stream, never the earlier draws again."""
    space = {"train.learning_rate": {"float": [1e-4, 1e-2], "log": True}}
    spec = tiny_spec(search={"n_trials": 2, "space": space}, samples={"prompts": []})
    first = {}
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)
        code, _, err = cli("sweep", write_spec(folder, spec), "--no-progress")
        assert code == 0, err
        first[name] = [t.params for t in trials(folder)]
    assert first["a"] == first["b"]  # one fresh worker: reproducible

    monkeypatch.chdir(tmp_path / "a")
    code, _, err = cli("sweep", tmp_path / "a" / "spec.yaml", "--n-trials", "5", "--no-progress")
    assert code == 0, err
    ts = trials(tmp_path / "a")
    assert [t.state.name for t in trained(ts)] == ["COMPLETE"] * 5
    assert len({key(t) for t in trained(ts)}) == 5  # the same seed in a new process used to redraw trials 0 and 1


def test_a_small_space_skips_repeated_draws_then_stops_when_every_set_was_tried(project, cli):
    space = {"slices.poesia.include": {"categorical": [True, False]}, "lora.r": {"categorical": [2, 4]}}
    path = write_spec(project, tiny_spec(search={"n_trials": 6, "space": space}, train={"max_steps": 2}, samples={"prompts": []}))
    code, out, err = cli("sweep", path, "--no-progress")
    assert code == 0, err
    assert "every one of the 4 parameter sets of search.space has been tried" in out
    ts = trials(project)
    done = trained(ts)
    assert len(done) == 4 == finished(optuna.load_study(study_name="tiny", storage=f"sqlite:///{project}/mlruns/optuna.db"))
    assert len({key(t) for t in done}) == 4 and all(t.state.name == "COMPLETE" for t in done)
    dupes = [t for t in ts if distinct.DUPLICATE in t.user_attrs]
    assert dupes, "random draws from 4 sets repeat: some draws must have been skipped"
    for t in dupes:  # skipped before any training or MLflow run
        assert t.state.name == "FAIL" and "mlflow_run_id" not in t.user_attrs
        assert key(t) == key(next(x for x in ts if x.number == t.user_attrs[distinct.DUPLICATE]))
    assert " fail:" not in out  # skipped draws are not reported as failed trials
    code, out, err = cli("status", path)
    assert code == 0 and "4 trials" in out


@pytest.mark.drill
def test_kill_9_during_trial_0_then_resume_repeats_only_the_retry(project, cli):
    """The held-out run's failure: killed during trial 0 and resumed with --n-trials 3, the new process
    drew trial 0's params again and the heartbeat retried trial 0: three trials, one configuration."""
    spec = tiny_spec(search={"n_trials": 1, "heartbeat": 1}, train={"max_steps": 60, "eval_steps": 10}, samples={"prompts": []})
    path = write_spec(project, spec)
    worker = sweep(path, project, project / "run1.log")
    wait_for(trial_running(project, 0), 240, "trial 0 to start")
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=20)

    code, out, err = cli("sweep", path, "--n-trials", "3", "--no-progress")
    assert code == 0, err
    ts = trials(project)
    dead = ts[0]
    assert dead.state.name == "FAIL" and "fail_reason" not in dead.user_attrs  # failed by the heartbeat check
    retries = [t for t in ts if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].params == dead.params and retries[0].state.name == "COMPLETE"
    fresh = [t for t in trained(ts) if t.number != 0 and t not in retries]
    assert len(fresh) == 2 and all(t.state.name == "COMPLETE" for t in fresh)
    keys = [key(t) for t in [dead, *fresh]]
    assert len(set(keys)) == 3, keys  # no fresh draw repeats trial 0 or another fresh one


def test_stream_seed_is_the_spec_seed_only_for_a_fresh_studys_first_worker():
    study = optuna.create_study()
    assert distinct.stream_seed(study, 7) == 7
    second = distinct.stream_seed(study, 7)
    study.ask()
    third = distinct.stream_seed(study, 7)
    assert len({7, second, third}) == 3
    again = optuna.create_study()
    assert distinct.stream_seed(again, 7) == 7 and distinct.stream_seed(again, 7) == second  # derived, not random
