"""The first thing a newcomer runs: a tiny sweep, its stores and what it prints."""

import re

import optuna
import pytest
from mlflow import MlflowClient

from helpers.specs import tiny_spec, write_spec


def test_tiny_sweep_runs(project, cli):
    """The smallest real sweep: its leaderboard shows each trial as the stores hold it, best first."""
    path = write_spec(project, tiny_spec())
    code, out, err = cli("sweep", path, "--no-progress")
    assert code == 0, err
    assert "tiny · 3 trials" in out
    study = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    c = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")  # absolute: MLflow caches a store per URI, across tests
    for t in study.trials:
        run = c.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED" and run.data.metrics["best_eval_loss"] == pytest.approx(t.value)
    # the leaderboard's rows: # | state | eval_loss | poesia.include | learning_rate | time | mlflow run
    rows = [cells for line in out.splitlines() if len(cells := [c.strip() for c in line.split("│")[1:-1]]) == 7]
    trials = [r for r in rows if r[0].isdigit()]
    ranked = sorted(study.trials, key=lambda t: (t.value, t.number))
    assert [int(r[0]) for r in trials] == [t.number for t in ranked], rows  # best first
    for (_, state, loss, include, lr, _, run_id), t in zip(trials, ranked, strict=True):
        assert state == "COMPLETE" and run_id == t.user_attrs["mlflow_run_id"][:12]
        assert float(loss) == pytest.approx(t.value, abs=6e-4)
        assert include == str(t.params["slices.poesia.include"]) and float(lr) == pytest.approx(t.params["train.learning_rate"], rel=6e-3)
    base = study.user_attrs["baseline"]["eval_loss"]
    (base_row,) = [r for r in rows if r[0] == "base"]
    assert base_row[1] == "BASELINE" and base_row[6] == study.user_attrs["baseline_run_id"][:12]
    assert float(base_row[2]) == pytest.approx(base, abs=6e-3)
    said = re.search(r"best trial (\d+): eval_loss (\S+) vs base (\S+) \((\S+)\)", out)
    assert said, out[-2000:]
    assert int(said[1]) == study.best_trial.number == ranked[0].number
    assert [float(x) for x in said.groups()[1:]] == pytest.approx([study.best_value, base, study.best_value - base], rel=1e-3)
    assert (project / "mlruns" / "reports" / "tiny.html").is_file() and "Report: mlruns/reports/tiny.html" in out
