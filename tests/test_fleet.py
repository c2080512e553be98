"""`afina sweep --workers N` on a real Ray cluster on this machine (logical GPUs, trials on the CPU): many workers,
one study, each worker on its own GPU, none trained twice; a worker killed with kill -9 is started again by Ray
and its trial resumes from its checkpoint; the embedded cluster on a fresh project's default stores; Ctrl-C
leaves no RUNNING run and no process behind; a cluster of machines refuses SQLite stores in one line.
The same workers as a Slurm job array: tests/test_slurm.py."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import optuna
import pytest
import requests
from mlflow import MlflowClient

from afina.search.study import skipped
from helpers.files import nothing_written
from helpers.services import trial_running, wait_for
from helpers.specs import tiny_spec, write_spec

pytestmark = pytest.mark.fleet  # Ray drivers in their own processes: `make test-all`

# The driver runs in its own process, as a user runs it, on a new local Ray cluster that declares 4 GPUs (Ray hands
# each worker one, as it would real ones; trials train on the CPU, which AFINA_LOGICAL_GPUS=1 allows). A Ray driver
# inside the pytest process left the later tests writing to a closed stderr.
DRIVER = """
import sys
import ray
ray.init(address="local", num_cpus=4, num_gpus=4, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
sys.argv = ["afina", "sweep", "spec.yaml", *sys.argv[1:]]
from afina.cli.app import main
main()
"""


def gpu_driver(project: Path, *args: str, log: str = "driver.log", logical: bool = True) -> subprocess.Popen:
    """`afina sweep spec.yaml ARGS` on a local cluster with 4 logical GPUs, in its own process and session;
    without `logical` the workers are told nothing: GPUs that torch cannot see."""
    env = {k: v for k, v in os.environ.items() if k != "AFINA_LOGICAL_GPUS"} | {"PYTHONUNBUFFERED": "1"}
    with open(project / log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-c", DRIVER, *args],
            cwd=project,
            env=env | ({"AFINA_LOGICAL_GPUS": "1"} if logical else {}),
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def run_driver(project: Path, *args: str, timeout: int = 600, logical: bool = True) -> tuple[int, str]:
    """gpu_driver to its end: its exit code and everything it printed."""
    code = gpu_driver(project, *args, logical=logical).wait(timeout=timeout)
    return code, (project / "driver.log").read_text()


def fleet_spec(n_trials: int, **train) -> dict:
    spec = tiny_spec(samples={"prompts": []})
    spec["search"].update(n_trials=n_trials, heartbeat=1, space={"train.learning_rate": {"float": [1e-4, 1e-2], "log": True}})
    spec["train"].update(train)
    return spec


def study(project: Path) -> optuna.Study:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{project}/mlruns/optuna.db")


def trained(project: Path) -> list:
    """The study's trials less those that never trained: workers asking at one moment for the last place in the
    budget leave a `surplus` trial that fails at once (sweep_work.surplus), as hand-started workers always did."""
    return [t for t in study(project).trials if not skipped(t)]


def runs(project: Path, role: str = "trial") -> list:
    c = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    exp = c.get_experiment_by_name("tiny")
    return [r for r in c.search_runs([exp.experiment_id], max_results=1000) if r.data.tags.get("afina.role") == role]


def test_four_workers_share_a_twelve_trial_study_each_on_its_own_gpu(project):
    write_spec(project, fleet_spec(12, max_steps=24, eval_steps=8))
    code, out = run_driver(project, "--workers", "4", "--no-progress")
    assert code == 0, out[-3000:]
    assert "Ray: 4 workers of 1 GPU and 1 CPU each" in out, out
    trials = trained(project)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 12
    trial_runs = runs(project)
    numbers = sorted(int(r.data.tags["afina.trial"]) for r in trial_runs)
    assert numbers == list(range(12)), numbers  # every trial has its run, and none was trained twice
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in trial_runs}
    gpus: dict[str, set[str]] = {}
    for r in trial_runs:
        gpus.setdefault(r.data.tags["afina.worker"], set()).add(r.data.tags["afina.gpu"])
        assert r.data.tags["afina.node"] and r.data.tags["afina.gpu"] in {"0", "1", "2", "3"}
    assert len(gpus) >= 2, gpus  # the trials were shared out
    assert all(len(g) == 1 for g in gpus.values()), gpus  # a worker keeps its GPU
    seen = [g for gs in gpus.values() for g in gs]
    assert len(seen) == len(set(seen)), gpus  # no two workers on one GPU


def test_a_worker_killed_mid_trial_is_started_again_and_its_trial_resumes_from_its_checkpoint(project):
    write_spec(project, fleet_spec(2, max_steps=60, eval_steps=10))
    driver = gpu_driver(project, "--workers", "1", "--no-progress")
    running = trial_running(project, 0, evaluated=True)
    wait_for(lambda: running() or driver.poll() is not None, 240, "trial 0 to report an evaluation")
    assert driver.poll() is None, (project / "driver.log").read_text()[-3000:]
    first = study(project).trials[0]
    ckpts = project / "mlruns" / "checkpoints" / "tiny" / "trial-0"
    # A complete one: a kill while the first is being written left the retry nothing to resume from.
    wait_for(lambda: any(ckpts.glob("checkpoint-*/trainer_state.json")), 120, "trial 0's first complete checkpoint")
    pid = int(first.user_attrs["worker"].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    assert driver.wait(timeout=400) == 0, (project / "driver.log").read_text()[-3000:]
    trials = study(project).trials
    dead = trials[0]
    assert dead.state.name == "FAIL"
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == dead.params
    assert "checkpoint-" in retry[0].user_attrs.get("resumed_from", ""), retry[0].user_attrs  # from the dead one's checkpoint
    workers = {t.user_attrs["worker"] for t in trials if t.number}
    assert first.user_attrs["worker"] not in workers  # a new process: Ray started the worker again
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
    assert not [r for r in runs(project) if r.info.status == "RUNNING"]


def test_a_worker_given_gpus_that_torch_cannot_see_refuses_before_the_study_exists(project):
    """The same cluster without AFINA_LOGICAL_GPUS is a machine whose torch sees no CUDA device (a CPU-only build, a
    broken driver): the first worker refuses before it sets the sweep up, so nothing is written and no other worker
    starts; the command says why and how to fix it in one line, exit 2. It never trains on the CPU by accident."""
    write_spec(project, fleet_spec(2))
    code, out = run_driver(project, "--workers", "2", "--no-progress", timeout=300, logical=False)
    assert code == 2, out[-3000:]
    assert "Ray: 2 workers of 1 GPU and 1 CPU each" in out, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out, out
    assert "this worker was given 1 GPU(s) (CUDA_VISIBLE_DEVICES=" in errors[0] and "sees 0" in errors[0], errors
    assert "install a CUDA build of torch" in errors[0] and "`resources: {gpus_per_trial: 0}`" in errors[0], errors
    assert not (project / "mlruns").exists(), sorted(map(str, (project / "mlruns").rglob("*")))  # no study, experiment or run


def _session_processes(sid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # field 6 of stat: the session id
            out.append(int(stat.parent.name))
    return out


def _left_behind(sid: int, wait: float = 30) -> list[int]:
    """The session's processes still alive after up to `wait` seconds: the dashboard's module processes end
    about 2 s after the driver that started Ray."""
    deadline = time.monotonic() + wait
    while (left := _session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def _afina(project: Path, *args: str, log: str, **extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    with open(project / log, "w") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "afina", "sweep", "spec.yaml", *args],
            cwd=project,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_embedded_cluster_on_default_stores_then_ctrl_c_leaves_nothing_running(project, monkeypatch):
    """No cluster, no server set up by hand: `--workers 2` starts Ray, runs the study on the project's own
    SQLite stores and stops Ray. Then a longer sweep: the dashboard at the printed link answers while it runs,
    to Ray's token only; Ctrl-C: exit 130, every run closed, no process left (the dashboard's neither)."""
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray's default: a cluster that ray.init starts asks for a token
    write_spec(project, fleet_spec(3, max_steps=8, eval_steps=4))
    proc = _afina(project, "--workers", "2", "--no-progress", log="first.log")
    assert proc.wait(timeout=400) == 0, (project / "first.log").read_text()[-3000:]
    text = (project / "first.log").read_text()
    assert "Ray: 2 workers of 0 GPU and 1 CPU each" in text and "best trial" in text, text[-3000:]
    assert "Ray dashboard: http://127.0.0.1:" in text, text[-3000:]
    assert [t.state.name for t in trained(project)] == ["COMPLETE"] * 3
    assert not _left_behind(proc.pid)  # Ray's processes went with it

    write_spec(project, fleet_spec(6, max_steps=200, eval_steps=10))
    token = secrets.token_hex(32)  # the cluster's own, not the one Ray keeps in ~/.ray/auth_token
    proc = _afina(project, "--workers", "2", "--no-progress", log="second.log", RAY_AUTH_TOKEN=token)
    wait_for(trial_running(project, 4, evaluated=True), 300, "both workers to train (trials 3 and 4 of the resumed study)")
    link = re.search(r"Ray dashboard: (http://\S+)", (project / "second.log").read_text())
    assert link, (project / "second.log").read_text()[-3000:]
    version = requests.get(f"{link[1]}/api/version", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert version.status_code == 200 and version.json()["ray_version"] == metadata.version("ray"), version.text
    assert requests.get(f"{link[1]}/api/version", timeout=30).status_code == 401  # Ray's token guards it
    os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=400) == 130, (project / "second.log").read_text()[-3000:]
    assert not _left_behind(proc.pid), "processes of the sweep are still alive"
    assert not [r for r in runs(project) if r.info.status == "RUNNING"]
    assert not [t for t in study(project).trials if t.state.name == "RUNNING"]


def test_a_cluster_of_machines_refuses_sqlite_stores_in_one_line(project, cli):
    write_spec(project, fleet_spec(2))
    with nothing_written(project):
        code, out, err = cli("sweep", "spec.yaml", "--workers", "2", "--ray", "10.1.2.3:6379")
    assert code == 2 and err.count("\n") == 1, err
    assert "--ray joins a cluster whose machines cannot share tracking.optuna_storage sqlite:///mlruns/optuna.db" in err, err
    with nothing_written(project):
        code, out, err = cli("sweep", "spec.yaml", "--ray", "10.1.2.3:6379")
    assert code == 2 and "add --workers N" in err, err


@pytest.mark.torchrun
def test_a_trial_of_two_gpus_runs_as_one_torchrun_group_per_worker(project):
    """resources.gpus_per_trial 2 on 4 GPUs: two workers, each a torchrun group of 2 ranks on its own pair of GPUs;
    every trial is trained by both ranks of its group and logged once."""
    spec = fleet_spec(2, max_steps=4, eval_steps=2)
    spec["resources"] = {"gpus_per_trial": 2, "cpus_per_trial": 1}
    write_spec(project, spec)
    code, out = run_driver(project, "--workers", "2", "--no-progress")
    assert code == 0, out[-3000:]
    assert "Ray: 2 workers of 2 GPU and 1 CPU each" in out, out
    trials = trained(project)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2, [(t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    trial_runs = runs(project)
    assert sorted(int(r.data.tags["afina.trial"]) for r in trial_runs) == [0, 1]  # one run per trial: rank 1 logs nothing
    assert all(r.data.params["world_size"] == "2" for r in trial_runs)  # both ranks trained every trial
    groups = {(r.data.tags["afina.worker"], r.data.tags["afina.gpu"]) for r in trial_runs}
    ids = [gpu for _, pair in groups for gpu in pair.split(",")]
    assert len(ids) == 2 * len(groups) and len(set(ids)) == len(ids), groups  # Ray gave each group two GPUs of its own
