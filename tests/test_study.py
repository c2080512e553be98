"""The study layer's public calls: one configuration trained as a child run (refits, references,
ablations reuse it), runs found by role, and compare loading a trial over the base it was trained on."""

from __future__ import annotations

import json
import math

import optuna
import yaml

from helpers.specs import tiny_spec, write_spec


def test_fixed_trial_runs_as_a_child_run_with_its_role(project):
    """trial.run(FixedTrial) with no study behind it: a `refit-N` child run evaluated like a trial."""
    from afina import tracking
    from afina.commands import sweep
    from afina.search import study as study_mod
    from afina.spec import schema as spec_mod
    from afina.training import trial
    from afina.training.context import TrialContext

    path = write_spec(project, tiny_spec())
    spec = spec_mod.load(path)
    prepared, model_dir, prompts = sweep.validate(spec)
    study = study_mod.open(spec, create=True)
    c = study_mod.client(spec)
    exp = tracking.experiment(c, spec.experiment, spec.tracking.artifact_root, spec.tracking.mlflow_uri)
    parent = tracking.parent_run(c, exp, study, spec, str(path))
    ctx = TrialContext(spec, prepared, model_dir, study.study_name, spec.search.directions, c, exp, parent, prompts)

    fixed = optuna.trial.FixedTrial({"train.learning_rate": 1e-3, "slices.poesia.include": False}, number=7)
    value = trial.run(ctx, fixed, role="refit")

    assert math.isfinite(value)
    run = c.get_run(fixed.user_attrs["mlflow_run_id"])
    assert run.info.run_name == "refit-7" and run.info.status == "FINISHED"
    assert run.data.tags["afina.role"] == "refit" and run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["afina.study"] == "tiny" and run.data.tags["afina.state"] == "COMPLETE"
    assert (
        run.data.params["slices.poesia.include"] == "false"
        and run.data.tags["afina.searched"] == "train.learning_rate, slices.poesia.include"
    )
    assert run.data.metrics["best_eval_loss"] == value
    table = json.loads((project / c.download_artifacts(run.info.run_id, "samples.json", str(project))).read_text())
    assert [r[table["columns"].index("prompt")] for r in table["data"]] == [p["prompt"] for p in prompts]
    assert {a.path for a in c.list_artifacts(run.info.run_id, "checkpoint")} >= {"checkpoint/adapter_model.safetensors"}
    assert [r.info.run_id for r in study_mod.runs_by_role(c, study, "refit", [exp])] == [run.info.run_id]
    assert study.get_trials() == []  # nothing was added to the study


def test_compare_loads_a_trial_over_the_base_it_was_trained_on(project, cli):
    """After the sweep the spec's model.ref moves to another (wider) model: compare must still load
    the trial's adapter over the base it was trained on, as promote does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    from afina import models

    spec = tiny_spec(search={"n_trials": 1, "space": {"train.learning_rate": {"float": [1e-3, 2e-3]}}})
    path = write_spec(project, spec)
    assert cli("sweep", path, "--no-progress")[0] == 0

    tok = AutoTokenizer.from_pretrained(models.resolve("tiny-random"))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    torch.manual_seed(0)
    wide = project / "wide"
    AutoModelForCausalLM.from_config(config).save_pretrained(wide)
    tok.save_pretrained(wide)
    spec["model"] = {**spec["model"], "ref": str(wide)}
    spec["samples"] = {**spec["samples"], "prompts": ["Una pregunta que ningún run contestó"]}  # answered from the checkpoint
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")

    code, out, err = cli("compare", path, "--top", "1")
    assert code == 0, err
    assert "trial 0" in out
