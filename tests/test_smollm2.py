"""The real embedded model, end to end, so that path never rots: GGUF -> cached safetensors,
LoRA training, generation. Slow (about a minute or two on a 2-core CPU); CI runs it too."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from helpers.specs import tiny_spec, write_spec


@pytest.mark.slow
def test_smollm2_one_trial(project, cli, afina_cache, tmp_path):
    spec = tiny_spec(
        name="smol",
        model={"ref": "smollm2-135m", "method": "lora"},
        data={**tiny_spec()["data"], "eval": {**tiny_spec()["data"]["eval"], "max_rows": 2}},
        train={
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "max_length": 96,
            "eval_steps": 2,
            "per_device_eval_batch_size": 2,
            "seed": 0,
        },
        search={"n_trials": 1, "space": {"train.learning_rate": {"float": [1e-4, 1e-3], "log": True}}},
        samples={"prompts": ["Describe una camiseta básica blanca"], "max_new_tokens": 8},
    )
    code, out, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 0, err

    # converted once into the session cache: plain safetensors, no GGUF quantization flags left
    converted = afina_cache / "models" / "smollm2-135m"
    assert (converted / "model.safetensors").is_file() and (converted / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((converted / "config.json").read_text(encoding="utf-8"))

    [trial] = optuna.load_study(study_name="smol", storage="sqlite:///mlruns/optuna.db").get_trials()
    assert trial.state.name == "COMPLETE", trial.user_attrs.get("fail_reason")
    c = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    run = c.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["afina.state"] == "COMPLETE"
    assert run.data.params["model.ref"] == "smollm2-135m"
    assert [m.step for m in c.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    table = json.loads(Path(c.download_artifacts(run.info.run_id, "samples.json", str(tmp_path))).read_text(encoding="utf-8"))
    outputs = [row[table["columns"].index("output")] for row in table["data"]]
    assert len(outputs) == 1 and outputs[0].strip(), outputs  # a real model answers greedily with words
    names = {Path(a.path).name for a in c.list_artifacts(run.info.run_id, "checkpoint")}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "afina-spec.yaml"} <= names
