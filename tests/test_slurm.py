"""`afina sweep --workers N --slurm`: the workers of `--workers N` as a Slurm job array through submitit. There is
no Slurm on this machine, so submitit runs the array's tasks as local processes (its local executor); the driver
runs in its own process, as a user starts it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from helpers.files import nothing_written
from helpers.specs import write_spec
from test_fleet import _afina, fleet_spec, runs, trained

pytestmark = pytest.mark.fleet  # submitit's array as local processes: `make test-all`


def test_workers_as_a_slurm_array_through_submitit(project):
    """`--workers 2 --slurm`: the first worker, then the rest as a job array, each the same worker loop. Without
    Slurm on this machine submitit runs them as local processes; the Slurm options are kept for a real cluster."""
    write_spec(project, fleet_spec(3, max_steps=8, eval_steps=4))
    proc = _afina(project, "--workers", "2", "--slurm", "--slurm-args", "partition=gpu,time=30", "--no-progress", log="slurm.log")
    out = (project / "slurm.log").read_text() if proc.wait(timeout=600) == 0 else ""
    assert proc.returncode == 0, (project / "slurm.log").read_text()[-4000:]
    assert "Slurm (local): 2 workers of 0 GPU each" in out and "submitted jobs" in out, out
    assert [t.state.name for t in trained(project)] == ["COMPLETE"] * 3
    assert sorted(int(r.data.tags["afina.trial"]) for r in runs(project)) == [0, 1, 2]
    logs = sorted((project / "mlruns" / "slurm").glob("*/*_log.out"))
    assert len(logs) == 2, logs  # one task log per worker


def test_a_task_given_gpus_that_torch_cannot_see_refuses_in_one_line_and_no_other_task_is_submitted(project):
    """`resources: {gpus_per_trial: 1}` on a machine whose torch sees no CUDA device: submitit gives the first task
    CUDA_VISIBLE_DEVICES=0, the task refuses before it sets the sweep up, and the driver says so in one line, exit 2,
    with no study, run or checkpoint written and the rest of the array never submitted."""
    spec = fleet_spec(2)
    spec["resources"] = {"gpus_per_trial": 1}
    write_spec(project, spec)
    env = {k: v for k, v in os.environ.items() if k != "AFINA_LOGICAL_GPUS"}
    with open(project / "slurm.log", "w") as f:
        code = subprocess.run(
            [sys.executable, "-m", "afina", "sweep", "spec.yaml", "--workers", "2", "--slurm", "--no-progress"],
            cwd=project,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=300,
        ).returncode
    out = (project / "slurm.log").read_text()
    assert code == 2, out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in out, out
    assert "this worker was given 1 GPU(s) (CUDA_VISIBLE_DEVICES='0')" in errors[0] and "sees 0" in errors[0], errors
    assert "submitted jobs" not in out, out
    made = sorted(str(p.relative_to(project)) for p in (project / "mlruns").rglob("*") if p.is_file())
    assert made and all(p.startswith("mlruns/slurm/") for p in made), made  # the first task's own log, nothing else
    assert len(list((project / "mlruns" / "slurm").glob("*/*_log.out"))) == 1


def test_bad_slurm_options_are_one_line(project, cli):
    """In-process: neither refusal imports submitit (in pytest's process it left later tests without a stderr)."""
    write_spec(project, fleet_spec(2))
    with nothing_written(project):
        code, out, err = cli("sweep", "spec.yaml", "--workers", "2", "--slurm", "--slurm-args", "partition")
    assert code == 2 and err.count("\n") == 1 and "--slurm-args 'partition': give Slurm options as key=value" in err, err
    with nothing_written(project):
        code, out, err = cli("sweep", "spec.yaml", "--workers", "2", "--slurm", "--ray", "auto")
    assert code == 2 and "pick one engine" in err, err
    assert "submitit" not in sys.modules
