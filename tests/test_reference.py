"""Was the sweep worth it: the opt-in default run at the sweep's total steps, evaluated like a trial.

Real sweeps of the tiny random model on SQLite; results read back from Optuna and MLflow.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from afina.baselines import default_run
from afina.search import study as study_mod
from afina.spec import schema as spec_mod
from helpers.specs import tiny_spec, write_spec


def _study(project):
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{project}/mlruns/optuna.db")


def test_default_run_trains_the_sweeps_steps_with_defaults_and_shows_the_gap(project, cli, tmp_path):
    spec = tiny_spec(
        search={"n_trials": 2, "space": {"train.learning_rate": {"float": [1e-8, 1e-2], "log": True}}},
        baseline={"default_run": True},
    )
    del spec["search"]["pruner"]  # successive halving: the planted bad trial stops at its first evaluation
    path = write_spec(project, spec)
    (project / "mlruns").mkdir()
    planted = optuna.create_study(study_name="tiny", storage=f"sqlite:///{project}/mlruns/optuna.db")
    planted.enqueue_trial({"train.learning_rate": 5e-3})
    planted.enqueue_trial({"train.learning_rate": 1e-8})
    code, out, err = cli("sweep", path, "--no-progress")
    assert code == 0, err

    study = _study(project)
    first, second = study.get_trials()
    assert (first.state.name, second.state.name) == ("COMPLETE", "PRUNED")
    assert (first.user_attrs["steps"], second.user_attrs["steps"]) == (4, 2)
    assert study.user_attrs["steps_spent"] == 6  # pruned steps count: they were spent
    ref = study.user_attrs["reference"]
    assert ref["steps"] == 6 and ref["n"]["eval_loss"] == 8 and ref["n"]["rougeL"] == 1 and ref["n"]["length"] == 2

    c = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    run = c.get_run(ref["run_id"])
    assert run.data.tags["afina.role"] == "reference" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.max_steps"] == "6" and params["train.per_device_train_batch_size"] == "4" and params["train.seed"] == "0"
    assert params["train.learning_rate"] == "0.0002"  # LoRA's documented rate (TRL's PEFT docs), not SFTConfig's 2e-5
    assert params["train.lr_scheduler_type"] == "linear" and params["train.warmup_steps"] == "0"  # TRL's defaults, as trained
    lora = {k: v for k, v in params.items() if k.startswith("lora.")}
    assert lora == {"lora.r": "8", "lora.lora_alpha": "8", "lora.lora_dropout": "0.0", "lora.target_modules": "all-linear"}  # PEFT's
    assert params["rows.poesia"] != "0"  # the spec's own mix: searched values are not applied
    assert run.data.metrics["best_eval_loss"] == pytest.approx(ref["results"]["eval_loss"])
    assert [m.step for m in c.get_metric_history(run.info.run_id, "loss")] == list(range(1, 7))
    table = json.loads(Path(c.download_artifacts(run.info.run_id, "samples.json", str(tmp_path))).read_text(encoding="utf-8"))
    assert len(table["data"]) == 2  # the samples prompts, answered like a trial's
    assert {Path(a.path).name for a in c.list_artifacts(run.info.run_id, "checkpoint")} >= {"adapter_model.safetensors"}

    parent = c.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.tags["afina.reference_run_id"] == ref["run_id"] and parent.data.tags["afina.steps_spent"] == "6"
    gap = parent.data.metrics["gap_vs_reference_eval_loss"]
    assert gap == pytest.approx(first.value - ref["results"]["eval_loss"])
    assert parent.data.metrics["reference_eval_loss"] == pytest.approx(ref["results"]["eval_loss"])
    rows = {g["metric"]: g for g in study_mod.reference_gaps(study)}
    assert set(rows) == {"eval_loss", "rougeL", "chrf", "length"} and rows["eval_loss"]["n"] == 8

    code, out, _ = cli("status", path)
    flat = " ".join(out.split())  # the caption wraps to the terminal's width
    assert code == 0 and "REFERENCE" in out and "vs default run (6 steps, 1 run each): eval_loss" in flat and "n=8)" in flat
    page = Path(parent.data.tags["afina.report"]).read_text(encoding="utf-8")
    assert "Was the sweep worth it?" in page and ref["run_id"] in page

    code, out, err = cli("sweep", path, "--no-progress")  # nothing new: neither trials nor a second reference
    assert code == 0, err
    assert _study(project).user_attrs["reference"]["run_id"] == ref["run_id"]
    exp = c.get_experiment_by_name("tiny")
    assert len(c.search_runs([exp.experiment_id], "tags.`afina.role` = 'reference'")) == 1


def test_reference_is_off_by_default_and_validated(project):
    spec = spec_mod.load(write_spec(project, tiny_spec()))
    assert spec.baseline.default_run is False
    ref = default_run.default_spec(spec_mod.load(write_spec(project, tiny_spec(train={"learning_rate": 1e-3, "max_steps": 4}))), 12)
    kept = {"max_steps": 12, "per_device_train_batch_size": 4, "max_length": 64, "per_device_eval_batch_size": 8, "seed": 0}
    assert ref.train == {**kept, "learning_rate": 2e-4}  # the spec's 1e-3 is not kept; LoRA's documented rate is used
    full = tiny_spec(model={"ref": "tiny-random", "method": "full"}, lora={})
    assert default_run.default_spec(spec_mod.load(write_spec(project, full)), 12).train["learning_rate"] == 2e-5
    assert ref.lora == {} and ref.search.space == {}
    from afina import UserError

    with pytest.raises(UserError, match="baseline.default_rn"):
        spec_mod.load(write_spec(project, tiny_spec(baseline={"default_rn": True})))


def test_a_trial_logs_the_settings_it_trained_with_defaults_included(project, cli):
    """Learning rate, schedule, warmup and LoRA settings are params of every run, also where the spec left them out."""
    spec = tiny_spec(search={"n_trials": 1, "space": {}})
    spec["lora"] = {"r": 4}
    spec["train"]["lr_scheduler_type"] = "constant"
    path = write_spec(project, spec)
    code, _, err = cli("sweep", path, "--no-progress")
    assert code == 0, err

    c = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    exp = c.get_experiment_by_name("tiny")
    (run,) = c.search_runs([exp.experiment_id], "tags.`afina.role` = 'trial'")
    params = run.data.params
    assert params["train.learning_rate"] == "2e-05"  # SFTConfig's default, resolved
    assert params["train.lr_scheduler_type"] == "constant" and params["train.warmup_steps"] == "0"
    assert params["lora.r"] == "4" and params["lora.lora_alpha"] == "8" and params["lora.lora_dropout"] == "0.0"
    assert params["lora.target_modules"] == "all-linear"
