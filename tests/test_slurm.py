"""`afina sweep --workers N --slurm`: the workers of `--workers N` as a Slurm job array through submitit. There is
no Slurm on this machine, so submitit runs the array's tasks as local processes (its local executor); the driver
runs in its own process, as a user starts it."""

from __future__ import annotations

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


def test_bad_slurm_options_are_one_line(project, cli):
    """In-process: neither refusal imports submitit (in pytest's process it left later tests without a stderr)."""
    import sys

    write_spec(project, fleet_spec(2))
    with nothing_written(project):
        code, out, err = cli("sweep", "spec.yaml", "--workers", "2", "--slurm", "--slurm-args", "partition")
    assert code == 2 and err.count("\n") == 1 and "--slurm-args 'partition': give Slurm options as key=value" in err, err
    with nothing_written(project):
        code, out, err = cli("sweep", "spec.yaml", "--workers", "2", "--slurm", "--ray", "auto")
    assert code == 2 and "pick one engine" in err, err
    assert "submitit" not in sys.modules
