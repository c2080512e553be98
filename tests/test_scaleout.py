"""Scale-out on real shared stores: PostgreSQL (Optuna + MLflow backend), `afina server`, worker processes.

Faults injected here: a worker killed with SIGKILL mid-trial, and the MLflow server stopped mid-trial.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from afina.commands.sweep import finished
from afina.search.study import skipped
from helpers.services import drop_database, free_port, needs_pg, new_database, start_server, stop, sweep, wait_for
from helpers.specs import tiny_spec, write_spec

pytestmark = needs_pg
SECRET, TOKEN = "pw-s3cr3t-xyz", "hf_tok3n_s3cr3t"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One Optuna database, and one MLflow server on its own PostgreSQL database, for the whole module."""
    root = tmp_path_factory.mktemp("stack")
    (opt_name, opt_url), (ml_name, ml_url) = new_database(), new_database()
    port = free_port()
    server = start_server(ml_url, root / "artifacts", port, root / "server.log")
    # Trust auth ignores the password, so it can be real-looking: it must never show up anywhere.
    storage = opt_url.replace("postgres@", f"postgres:{SECRET}@")
    s = {
        "root": root,
        "storage": storage,
        "uri": f"http://127.0.0.1:{port}",
        "port": port,
        "backend": ml_url,
        "server": server,
        "log": root / "server.log",
    }
    yield s
    stop(s["server"])  # the outage test replaces it
    drop_database(opt_name)
    drop_database(ml_name)


def spec_for(folder: Path, name: str, n_trials: int, heartbeat: int = 2, **train) -> Path:
    spec = tiny_spec(
        name=name,
        search={"n_trials": n_trials, "heartbeat": heartbeat},
        train={"max_steps": 4, "eval_steps": 2, **train},
        samples={"prompts": ["¿Puedo devolver un pedido?"]},
        tracking={"checkpoint_dir": str(folder / "checkpoints")},
    )
    return write_spec(folder, spec, f"{name}.yaml")


def load(stack, name: str):
    if "optuna" not in stack:  # one storage (one connection pool) for all polling
        stack["optuna"] = optuna.storages.RDBStorage(stack["storage"])
    return optuna.load_study(study_name=name, storage=stack["optuna"])


def runs(stack, name: str, role: str = "trial"):
    c = MlflowClient(stack["uri"])
    exp = c.get_experiment_by_name(name)
    return c, c.search_runs([exp.experiment_id], f"tags.`afina.role` = '{role}'", max_results=500)


def test_four_workers_share_one_study(stack, tmp_path):
    n = 12
    path = spec_for(tmp_path, "scale", n, heartbeat=5, max_steps=2, eval_steps=1)
    env = {"AFINA_OPTUNA_STORAGE": stack["storage"], "AFINA_TRACKING_URI": stack["uri"], "HF_TOKEN": TOKEN}
    logs = [tmp_path / f"worker-{i}.log" for i in range(4)]
    workers = [sweep(path, tmp_path, log, **env) for log in logs]
    for w in workers:
        assert w.wait(timeout=400) == 0, "\n".join(log.read_text()[-3000:] for log in logs)

    study = load(stack, "scale")
    trials = study.get_trials()
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(done) == n == finished(study)
    assert len({t.number for t in done}) == n
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    assert len({t.user_attrs["worker"] for t in done}) >= 2  # the work really was shared

    c, children = runs(stack, "scale")
    by_id = {r.info.run_id: r for r in children}
    assert sorted(by_id) == sorted(t.user_attrs["mlflow_run_id"] for t in trials if "mlflow_run_id" in t.user_attrs)
    for t in done:
        r = by_id[t.user_attrs["mlflow_run_id"]]
        assert r.info.status == "FINISHED" and r.data.tags["afina.state"] == "COMPLETE"
        assert float(r.data.params["train.learning_rate"]) == pytest.approx(t.params["train.learning_rate"])
        assert "best_eval_loss" in r.data.metrics
    assert not [r for r in children if r.info.status == "RUNNING"]
    _, parents = runs(stack, "scale", "sweep")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}

    # Secrets: the storage password and the hub token appear in no param, tag, artifact or output.
    seen = [log.read_text() for log in logs]
    for r in [*children, *parents]:
        seen += [str(r.data.params), str(r.data.tags)]
    art = stack["root"] / "artifacts"
    seen += [p.read_text(errors="ignore") for p in art.rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".txt", ".md")]
    assert any("optuna_storage" in s for s in seen)  # the spec artifact was scanned
    for text in seen:
        assert SECRET not in text and TOKEN not in text


def test_four_workers_never_train_the_same_params_twice(stack, tmp_path):
    """4 workers started together on 8 trials of a 12-set space: 8 distinct parameter sets. With one seed
    for every process their first draws were identical; with random draws from 12 sets, repeats happen
    by chance too, and are skipped untrained."""
    from afina.search import distinct

    spec = tiny_spec(
        name="distinct",
        search={
            "n_trials": 8,
            "heartbeat": 5,
            "space": {
                "train.learning_rate": {"categorical": [1e-4, 1e-3, 1e-2]},
                "lora.r": {"categorical": [2, 4]},
                "slices.poesia.include": {"categorical": [True, False]},
            },
        },
        train={"max_steps": 2, "eval_steps": 1},
        samples={"prompts": []},
        tracking={"checkpoint_dir": str(tmp_path / "checkpoints")},
    )
    path = write_spec(tmp_path, spec, "distinct.yaml")
    env = {"AFINA_OPTUNA_STORAGE": stack["storage"], "AFINA_TRACKING_URI": stack["uri"]}
    logs = [tmp_path / f"worker-{i}.log" for i in range(4)]
    workers = [sweep(path, tmp_path, log, **env) for log in logs]
    for w in workers:
        assert w.wait(timeout=400) == 0, "\n".join(log.read_text()[-3000:] for log in logs)
    study = load(stack, "distinct")
    trained = [t for t in study.get_trials() if not distinct.skipped(t)]
    assert [t.state.name for t in trained] == ["COMPLETE"] * 8 and finished(study) == 8
    assert len({tuple(sorted(t.params.items())) for t in trained}) == 8
    assert study.user_attrs["workers"] == 4  # each process got its own stream
    assert len({t.user_attrs["worker"] for t in trained}) >= 2


def test_killed_worker_is_retried_from_its_checkpoint(stack, tmp_path):
    n = 3
    path = spec_for(tmp_path, "kill", n, max_steps=40, eval_steps=5)
    env = {"AFINA_OPTUNA_STORAGE": stack["storage"], "AFINA_TRACKING_URI": stack["uri"]}
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    workers = {w.pid: w for w in (sweep(path, tmp_path, log, **env) for log in logs)}
    ckpts = tmp_path / "checkpoints" / "kill"

    def victim():
        try:
            study = load(stack, "kill")
        except Exception:  # not created yet
            return None
        for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            pid = int(t.user_attrs.get("worker", ":0").rsplit(":", 1)[1])
            if pid in workers and list((ckpts / f"trial-{t.number}").glob("checkpoint-*/trainer_state.json")):  # a complete one
                return t.number, pid
        return None

    number, pid = wait_for(victim, 240, "a running trial with a checkpoint")
    os.kill(pid, signal.SIGKILL)
    workers[pid].wait(timeout=20)
    saved = sorted(int(p.parent.name.split("-")[1]) for p in (ckpts / f"trial-{number}").glob("checkpoint-*/trainer_state.json"))
    (survivor,) = [w for p, w in workers.items() if p != pid]
    assert survivor.wait(timeout=300) == 0, "\n".join(log.read_text()[-3000:] for log in logs)

    study = load(stack, "kill")
    trials = {t.number: t for t in study.get_trials()}
    assert trials[number].state.name == "FAIL"
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == number]
    assert retry.state.name == "COMPLETE" and retry.params == trials[number].params
    assert Path(retry.user_attrs["resumed_from"]).parent == ckpts / f"trial-{number}"
    resumed_at = int(Path(retry.user_attrs["resumed_from"]).name.split("-")[1])
    assert resumed_at in saved and resumed_at >= 5
    assert sum(t.state.name == "COMPLETE" for t in trials.values()) == n == finished(study)
    assert not (ckpts / f"trial-{number}").exists()  # consumed by the retry

    c = MlflowClient(stack["uri"])
    history = c.get_metric_history(retry.user_attrs["mlflow_run_id"], "loss")
    assert min(m.step for m in history) > resumed_at  # it continued, not started over
    dead = c.get_run(trials[number].user_attrs["mlflow_run_id"])
    assert dead.info.status == "FAILED" and "died" in dead.data.tags["afina.reason"]
    _, children = runs(stack, "kill")
    assert not [r for r in children if r.info.status == "RUNNING"]


def test_mlflow_outage_mid_trial_is_kept_then_synced(stack, tmp_path, cli, monkeypatch):
    """The server dies during trial 0; trial 1 starts while it is down (an offline run); `afina sync` sends both."""
    path = spec_for(tmp_path, "outage", 2, max_steps=30, eval_steps=10)
    env = {
        "AFINA_OPTUNA_STORAGE": stack["storage"],
        "AFINA_TRACKING_URI": stack["uri"],
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    log = tmp_path / "worker.log"
    worker = sweep(path, tmp_path, log, **env)
    c = MlflowClient(stack["uri"])

    def started():
        exp = c.get_experiment_by_name("outage")
        found = exp and c.search_runs([exp.experiment_id], "tags.`afina.role` = 'trial' and metrics.loss > 0")
        return found and found[0].info.run_id

    run_id = wait_for(started, 240, "the trial's first metrics")
    stop(stack["server"], signal.SIGKILL)  # the server vanishes mid-trial
    assert worker.wait(timeout=300) == 0, log.read_text()[-3000:]
    out = log.read_text()
    assert "unreachable" in out and "afina sync" in out
    study = load(stack, "outage")
    t0, t1 = study.get_trials()
    assert t0.state.name == t1.state.name == "COMPLETE"  # training never waited for the server
    assert t0.user_attrs["mlflow_run_id"] == run_id and t1.user_attrs["mlflow_run_id"].startswith("offline-")
    time.sleep(1)
    stack["server"] = start_server(stack["backend"], stack["root"] / "artifacts", stack["port"], stack["log"])

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AFINA_TRACKING_URI", stack["uri"])
    monkeypatch.setenv("AFINA_OPTUNA_STORAGE", stack["storage"])
    code, text, err = cli("sync", path)
    assert code == 0, err
    assert "sent" in text and "created 1 runs" in text
    real = load(stack, "outage").user_attrs["mlflow_run_ids"][t1.user_attrs["mlflow_run_id"]]
    for rid, number in ((run_id, 0), (real, 1)):
        run = c.get_run(rid)
        assert run.info.status == "FINISHED" and run.data.tags["afina.state"] == "COMPLETE"
        assert run.data.tags["afina.trial"] == str(number) and run.data.tags["mlflow.parentRunId"]
        assert sorted({m.step for m in c.get_metric_history(rid, "loss")}) == list(range(1, 31))
        assert "best_eval_loss" in run.data.metrics and run.data.params["world_size"] == "1"
        assert {a.path for a in c.list_artifacts(rid)} >= {"checkpoint", "samples.json"}
    from afina.search import study as study_mod

    assert [r["run_id"] for r in sorted(study_mod.rows(load(stack, "outage")), key=lambda r: r["number"])] == [run_id, real]
    _, children = runs(stack, "outage")
    assert sorted(r.info.run_id for r in children) == sorted([run_id, real])
    _, parents = runs(stack, "outage", "sweep")
    assert parents[0].info.status == "FINISHED"
    assert not list((tmp_path / "fallback").glob("*.jsonl"))
    code, text, _ = cli("sync", path)
    assert code == 0 and "nothing to send" in text


def ray_node(nodes: list, log: Path, env: dict, *args: str) -> None:
    """`ray start ARGS --block` with one CPU and one (logical) GPU, in its own session, added to `nodes`; returns
    once the node runs."""
    cmd = [str(Path(sys.executable).with_name("ray")), "start", *args, "--num-cpus", "1", "--num-gpus", "1"]
    nodes.append(subprocess.Popen([*cmd, "--block"], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True))
    wait_for(lambda: b"Ray runtime started" in log.read_bytes() or nodes[-1].poll() is not None, 120, f"`ray start` ({log.name})")
    assert nodes[-1].poll() is None, log.read_text()[-2000:]


def test_workers_on_a_ray_cluster_at_an_address_share_one_study_on_postgresql(stack, tmp_path):
    """`--workers 2 --ray ADDRESS`: a Ray head and a worker node started apart (as `ray start` on Slurm nodes
    would), the study on PostgreSQL and the runs on `afina server`; each worker takes the (logical) GPU of one node,
    AFINA_LOGICAL_GPUS reaching the nodes' workers from the driver through the task's runtime_env. Ray's
    token authentication is on, with this cluster's own token in a file, shared as README's step 5 says
    (RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH for the head, the node and the driver); a driver without them is
    refused in one line."""
    (tmp_path / "ray_token").write_text(secrets.token_hex(32))
    bare = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    token = {**bare, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "ray_token"), "AFINA_LOGICAL_GPUS": "1"}
    port, nodes = free_port(), []
    path = spec_for(tmp_path, "rayed", 4, max_steps=8, eval_steps=4)
    args = ["--workers", "2", "--ray", f"127.0.0.1:{port}", "--storage", stack["storage"], "--tracking-uri", stack["uri"]]
    cmd = [sys.executable, "-m", "afina", "sweep", str(path), "--no-progress", *args]
    try:
        ray_node(nodes, tmp_path / "head.log", token, "--head", "--port", str(port), "--include-dashboard", "false")
        ray_node(nodes, tmp_path / "node.log", token, "--address", f"127.0.0.1:{port}")
        # Drivers in their own processes: a Ray driver in pytest's process breaks later tests.
        refused = subprocess.run(cmd, cwd=tmp_path, env=bare, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2, (refused.stdout[-2000:], refused.stderr[-2000:])
        assert "gcs_client" not in refused.stderr and "Traceback" not in refused.stderr, refused.stderr  # Ray's 20 lines held back
        why = f"error: the Ray cluster at 127.0.0.1:{port} asks for its token: export RAY_AUTH_MODE=token and put the cluster"
        assert refused.stderr.strip().splitlines()[-1].startswith(why), refused.stderr
        driver = subprocess.run(cmd, cwd=tmp_path, env=token, capture_output=True, text=True, timeout=600)
        out, err = driver.stdout, driver.stderr
        assert driver.returncode == 0, (out[-2000:], err[-2000:], *[(tmp_path / f).read_text()[-2000:] for f in ("head.log", "node.log")])
        assert "Ray: 2 workers of 1 GPU and 1 CPU each, on 2 node(s) with 2 GPUs" in out, out
    finally:
        for node in reversed(nodes):
            node.terminate()  # `ray start` alone stops its node in seconds; SIGTERM to its group made it wait 30 s
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)  # whatever of its session is left
    study = load(stack, "rayed")
    assert [t.state.name for t in study.trials if not skipped(t)] == ["COMPLETE"] * 4  # less surplus asks (never trained)
    _, trial_runs = runs(stack, "rayed")
    assert sorted(int(r.data.tags["afina.trial"]) for r in trial_runs) == [0, 1, 2, 3]
    assert {r.data.tags["afina.gpu"] for r in trial_runs} == {"0"}  # each node's one GPU
    assert SECRET not in out + err
