"""afina promote / rollback / generate / export against a real MLflow SQLite registry and tiny-random trials."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers.specs import tiny_spec, write_spec

LOW, HIGH = 1e-5, 3e-2  # a learning rate that barely moves the model, and one that learns in 4 steps


def _spec(project, lrs, **over):
    spec = tiny_spec(search={"space": {"train.learning_rate": {"categorical": lrs}}, "sampler": "grid", "n_trials": len(lrs)}, **over)
    return write_spec(project, spec)


def _client(project):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _study(project, name="tiny"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{project / 'mlruns' / 'optuna.db'}")


def _by_lr(study, lr):
    return next(t for t in study.trials if t.params["train.learning_rate"] == lr)


def _versions(c, name="tiny"):
    return sorted(int(v.version) for v in c.search_model_versions(f"name='{name}'"))


def _alias(c, alias, name="tiny"):
    return int(c.get_model_version_by_alias(name, alias).version)


def test_promote_gate_aliases_rollback_pyfunc(project, cli):
    import mlflow

    from afina import models
    from afina.evaluation import textgen
    from afina.models import loader

    path = _spec(project, [LOW, 1e-3, HIGH])
    assert cli("sweep", path, "--no-progress")[0] == 0
    study, c = _study(project), _client(project)
    good, bad = _by_lr(study, HIGH), _by_lr(study, LOW)
    assert good.value < bad.value and study.best_trial.number == good.number

    code, out, err = cli("promote", path)
    assert code == 0, err
    assert "answer_nll" in out and "no @champion yet" in out
    mv = c.get_model_version_by_alias("tiny", "champion")
    t = mv.tags
    # logged from the promotion run (its page lists the version); the lineage leads back to the trial
    promo = c.get_run(mv.run_id)
    assert int(mv.version) == 1 and promo.data.tags["afina.role"] == "promotion" and promo.data.tags["afina.version"] == "1"
    assert t["afina.study"] == "tiny" and t["afina.trial"] == str(good.number) and t["afina.run_id"] == good.user_attrs["mlflow_run_id"]
    assert float(t["afina.objective.eval_loss"]) == pytest.approx(good.value, rel=1e-5)
    assert not [k for k in t if not k.startswith("afina.")] and json.loads(t["afina.params"]) == good.params  # no param copies
    assert mv.description.startswith("**Gate: promoted**") and f"trial {good.number}" in mv.description
    assert "@champion" in c.get_registered_model("tiny").description
    assert "no champion yet (first promotion)" in promo.data.tags["mlflow.note.content"]
    assert "models:/tiny@champion</code> is version 1" in (project / "mlruns" / "reports" / "tiny.html").read_text(encoding="utf-8")
    assert t["afina.data_fingerprint"] == good.user_attrs["data_fingerprint"]
    assert set(json.loads(t["afina.slices"])) == {"faq", "productos", "poesia"}
    assert t["afina.base_model"] == "tiny-random"
    assert t["afina.base_sha256"] == models.fingerprint(models.resolve("tiny-random"))
    assert t["afina.format"] == "adapter" and t["afina.gate.decision"] == "promoted" and t["afina.gate.champion_score"] == "none"

    # A worse candidate is refused: exit 1, registry unchanged, the comparison still logged.
    code, out, _ = cli("promote", path, "--trial", bad.number)
    assert code == 1 and "refused" in out
    assert _versions(c) == [1] and _alias(c, "champion") == 1
    assert "previous" not in c.get_registered_model("tiny").aliases
    promos = c.search_runs([c.get_run(mv.run_id).info.experiment_id], "tags.`afina.role` = 'promotion'")
    refused = next(r for r in promos if r.data.tags["afina.gate.decision"] == "refused")
    assert refused.data.metrics["candidate_score"] > refused.data.metrics["champion_score"]
    assert refused.data.params["set_fingerprint"] == t["afina.gate.set_fingerprint"]

    # --force installs the bad one; the good one then beats it and moves both aliases.
    code, out, _ = cli("promote", path, "--trial", bad.number, "--force")
    assert code == 0 and "--force" in out
    assert (_alias(c, "champion"), _alias(c, "previous")) == (2, 1)
    code, out, _ = cli("promote", path)
    assert code == 0, out
    assert (_alias(c, "champion"), _alias(c, "previous")) == (3, 2)
    assert c.get_model_version("tiny", "3").tags["afina.gate.decision"] == "promoted"
    code, out, _ = cli("promote", path)  # promoting the champion again changes nothing
    assert code == 0 and "already @champion" in out and _versions(c) == [1, 2, 3]

    code, out, err = cli("rollback", "tiny", "--reason", "answers got worse")
    assert code == 0, err
    assert (_alias(c, "champion"), _alias(c, "previous")) == (2, 3)
    assert json.loads(c.get_model_version("tiny", "3").tags["afina.rolled_back"])["reason"] == "answers got worse"
    assert json.loads(c.get_registered_model("tiny").tags["afina.last_rollback"])["to"] == "2"
    assert _versions(c) == [1, 2, 3]  # nothing deleted

    # MLflow's own loader: prompts in, the same greedy answers afina gives.
    mlflow.set_tracking_uri(c._tracking_client.tracking_uri)
    mlflow.set_registry_uri(c._tracking_client.tracking_uri)
    prompts = ["¿Puedo devolver un pedido?", "Describe una camiseta básica blanca"]
    answers = mlflow.pyfunc.load_model("models:/tiny@champion").predict(prompts, params={"max_new_tokens": 6})
    assert isinstance(answers, list) and len(answers) == 2 and all(isinstance(a, str) for a in answers)
    with loader.fetched("models:/tiny/2") as d:
        model, tok = loader.load(d)
    assert answers == textgen.generate(model, tok, prompts, max_new_tokens=6)


def test_merge_export_generate_serve(project, cli):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from afina.models import loader

    path = _spec(project, [HIGH])
    assert cli("sweep", path, "--no-progress")[0] == 0
    c = _client(project)
    assert cli("promote", path)[0] == 0
    code, out, err = cli("promote", path, "--merge", "--force")  # same trial, merged: a new version
    assert code == 0, err
    assert c.get_model_version("tiny", "2").tags["afina.format"] == "merged"
    uri = c._tracking_client.tracking_uri

    prompt = [{"role": "user", "content": "¿Cuánto tarda el envío?"}]
    with loader.fetched("models:/tiny/1", uri) as d:  # the adapter version, through PEFT
        adapter, tok = loader.load(d)
    with loader.fetched("models:/tiny@champion", uri) as d:  # the merged one: plain transformers
        assert not (d / "adapter_config.json").exists() and (d / "model.safetensors").is_file()
        merged = AutoModelForCausalLM.from_pretrained(d, use_safetensors=True)
    ids = tok.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        assert torch.allclose(adapter(ids).logits, merged(ids).logits, atol=1e-4)
        greedy = adapter.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        assert torch.equal(greedy, merged.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id))

    code, out, err = cli("export", "models:/tiny/1", "--out", project / "tienda-model")
    assert code == 0, err
    exported = AutoModelForCausalLM.from_pretrained(project / "tienda-model", use_safetensors=True)
    ex_tok = AutoTokenizer.from_pretrained(project / "tienda-model")
    assert ex_tok.chat_template and not (project / "tienda-model" / "adapter_config.json").exists()
    with torch.no_grad():
        assert torch.equal(greedy, exported.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id))
    assert cli("export", "models:/tiny/1", "--out", project / "tienda-model")[0] == 2  # never overwrites

    from afina.evaluation import textgen

    want = textgen.generate(exported, ex_tok, ["hola", "¿Puedo devolver?"], max_new_tokens=5)
    code, out, err = cli("generate", "models:/tiny@champion", "hola", "--max-new-tokens", "5", "--tracking-uri", uri)
    assert code == 0, err
    assert out.strip() == want[0]
    (project / "prompts.jsonl").write_text('{"prompt": "hola"}\n{"prompt": "¿Puedo devolver?"}\n', encoding="utf-8")
    code, out, err = cli("generate", project / "tienda-model", project / "prompts.jsonl", "--max-new-tokens", "5")
    assert code == 0, err
    assert [json.loads(line)["output"] for line in out.strip().splitlines()] == want

    # `mlflow models serve` on the champion, on a free loopback port. Plain MLflow finds the model's files
    # beside the SQLite store (`mlflow-artifacts:/`) through afina's entry point, installed with afina.
    from importlib.metadata import entry_points

    assert any(e.value == "afina.tracking.artifacts:repository" for e in entry_points(group="mlflow.artifact_repository")), (
        "afina's mlflow.artifact_repository entry point is not installed; run `pip install -e .` again"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # MLflow starts the scoring server as `uvicorn` from PATH: the environment's bin folder, as when it is activated.
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_REGISTRY_URI": uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            "models:/tiny@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        body = json.dumps({"inputs": ["hola", "¿Puedo devolver?"], "params": {"max_new_tokens": 5}}).encode()
        for _ in range(240):
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as r:
                    served = json.loads(r.read())["predictions"]
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                time.sleep(0.5)
        else:
            pytest.fail("mlflow models serve did not answer within 120 s")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert served == want


def test_bad_input_exits_2_and_leaves_registry_alone(project, cli):
    import optuna
    from optuna.distributions import FloatDistribution

    from afina import tracking

    path = write_spec(project, tiny_spec())
    code, _, err = cli("promote", path)  # no stores at all
    assert code == 2 and "no study" in err and err.count("\n") == 1
    assert not (project / "mlruns").exists()

    store = f"sqlite:///{project / 'mlruns' / 'optuna.db'}"
    (project / "mlruns").mkdir()
    c = tracking.client(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    exp = c.create_experiment("tiny")
    optuna.create_study(study_name="other", storage=store)
    code, _, err = cli("promote", path)
    assert code == 2 and "no study named 'tiny'" in err

    study = optuna.create_study(study_name="tiny", storage=store)
    for state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED):
        study.tell(study.ask(), state=state)
    code, _, err = cli("promote", path)
    assert code == 2 and "no COMPLETE trial" in err
    code, _, err = cli("promote", path, "--trial", "1")
    assert code == 2 and "trial 1 is PRUNED" in err
    code, _, err = cli("promote", path, "--trial", "9")
    assert code == 2 and "no trial 9" in err

    dist = {"train.learning_rate": FloatDistribution(1e-4, 1e-2, log=True)}
    empty_run = c.create_run(exp).info.run_id  # a real run without a checkpoint artifact
    study.add_trial(
        optuna.trial.create_trial(
            params={"train.learning_rate": 1e-3}, distributions=dist, value=1.0, user_attrs={"mlflow_run_id": empty_run}
        )
    )
    code, _, err = cli("promote", path)
    assert code == 2 and "no checkpoint/ artifact" in err
    study.add_trial(optuna.trial.create_trial(params={"train.learning_rate": 1e-3}, distributions=dist, value=0.5))
    code, _, err = cli("promote", path)
    assert code == 2 and "has no MLflow run" in err

    multi = write_spec(project, tiny_spec(name="multi", search={"objective": ["eval_loss", "train_runtime"]}), "multi.yaml")
    mo = optuna.create_study(study_name="multi", storage=store, directions=["minimize", "minimize"])
    mo.add_trial(optuna.trial.create_trial(params={"train.learning_rate": 1e-3}, distributions=dist, values=[1.0, 2.0]))
    code, _, err = cli("promote", multi)
    assert code == 2 and "promote.objective" in err

    assert c.search_registered_models() == []  # the registry was never touched
    code, _, err = cli("rollback", "nope")
    assert code == 2 and "no registered model named 'nope'" in err
    code, _, err = cli("generate", "models:/nope@champion", "hola")
    assert code == 2 and "models:/nope@champion" in err
    code, _, err = cli("export", "models:/nope/1", "--out", project / "out")
    assert code == 2 and not (project / "out").exists()
    code, _, err = cli("export", project / "nowhere", "--out", project / "out")
    assert code == 2 and "not a model folder" in err
    code, _, err = cli("rollback", "tiny", "--tracking-uri", f"sqlite:///{project / 'elsewhere.db'}")
    assert code == 2 and not (project / "elsewhere.db").exists()
    assert c.search_registered_models() == []

    c.create_registered_model("solo")
    code, _, err = cli("rollback", "solo")
    assert code == 2 and "no @champion" in err
