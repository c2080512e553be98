"""`afina sweep SPEC --workers N --slurm`: N workers of one study as a Slurm job array, through submitit.

Each array task runs the same worker as `--workers N` on Ray (ray_workers.worker): the one-process sweep loop, so the
Optuna study stays the single record of trials. On a machine without Slurm, submitit runs the tasks as local
processes (its local executor), which is how the tests drive this path.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from afina import UserError
from afina.cli import ray_workers

if TYPE_CHECKING:
    from afina.spec.schema import Spec

MINUTES = 24 * 60  # a task's time limit unless --slurm-args sets time=...


def run(spec: Spec, spec_path: str, console, workers: int, slurm_args: str | None, overrides: dict, progress: bool = True):
    """Validate, submit the first worker, the rest as an array once it has set the sweep up, wait for all."""
    from rich.live import Live

    extra = parse(slurm_args)  # before submitit is imported: a bad option is one line, whatever is installed
    try:
        import submitit
    except ImportError:
        raise UserError("--slurm submits workers with submitit, which is not installed; pip install 'afina[slurm]'") from None
    from afina.commands import sweep

    sweep.validate(spec)  # bad input: one line and exit 2, before anything is submitted or written
    folder = Path(spec.tracking.checkpoint_dir).parent / "slurm"
    executor = submitit.AutoExecutor(folder=folder / "%j")
    if executor.cluster == "slurm":
        ray_workers.shared_stores(spec)  # the array's tasks run on other machines
    gpus = spec.resources.gpus_per_trial if spec.resources.gpus_per_trial is not None else int(executor.cluster == "slurm")
    try:
        executor.update_parameters(
            name=f"afina-{spec.name}",
            timeout_min=MINUTES,
            gpus_per_node=gpus,
            cpus_per_task=max(1, round(spec.resources.cpus_per_trial)),
            slurm_array_parallelism=workers,
            **{f"slurm_{k}": v for k, v in extra.items()},
        )
    except (ValueError, TypeError) as e:
        raise UserError(f"--slurm-args: {e}; give Slurm options as key=value, e.g. 'partition=gpu,time=240'") from None
    here, path = os.getcwd(), str(Path(spec_path).resolve())
    console.print(f"Slurm ({executor.cluster}): {workers} workers of {gpus} GPU each; task logs in {folder}")
    jobs = [executor.submit(task, path, overrides, gpus, 0, here)]
    try:
        while not jobs[0].done() and not ray_workers.set_up(spec):  # the first worker sets the sweep up alone
            time.sleep(ray_workers.POLL)
        if jobs[0].done() and isinstance(refused := _result(jobs[0]), UserError) and not ray_workers.set_up(spec):
            raise refused  # it refused to start (GPUs torch cannot see): nothing is written, no other task submitted
        with executor.batch():  # the others as one array
            rest = [executor.submit(task, path, overrides, gpus, i, here) for i in range(1, workers)]
        jobs += rest
        console.print(f"submitted jobs {', '.join(str(j.job_id) for j in jobs)}")
        with Live(console=console, auto_refresh=False) as live:
            while not all(j.done() for j in jobs):
                time.sleep(ray_workers.POLL)
                if progress:
                    live.update(ray_workers.fleet(spec), refresh=True)
    except KeyboardInterrupt:
        console.print(f"Cancelling {len(jobs)} jobs: each checkpoints its trial and closes its run")
        for job in jobs:
            job.cancel(check=False)  # Slurm's SIGTERM, the local executor's SIGINT: the sweep's own stop
        raise
    ray_workers.outcome(spec, spec_path, console, [_result(job) for job in jobs])


def task(spec_path: str, overrides: dict, gpus: int, index: int, cwd: str) -> str | UserError | None:
    """ray_workers.worker as an array task. A refusal to start comes back as itself: submitit hands the driver
    only a failed task's traceback text, which is no one-line error for the user."""
    try:
        return ray_workers.worker(spec_path, overrides, gpus, index, cwd)
    except UserError as e:
        return e


def _result(job) -> str | UserError | None:
    try:
        return job.result()
    except Exception as e:  # submitit re-raises a task's failure with its log: keep the last line
        lines = str(e).strip().splitlines()
        return f"job {job.job_id} failed: {lines[-1][:300] if lines else type(e).__name__}"


def parse(args: str | None) -> dict[str, str | int]:
    """'partition=gpu,time=240 account=lab' → {'partition': 'gpu', 'time': 240, 'account': 'lab'}."""
    out: dict[str, str | int] = {}
    for item in (args or "").replace(",", " ").split():
        key, eq, value = item.partition("=")
        if not eq or not key or not value:
            raise UserError(f"--slurm-args {item!r}: give Slurm options as key=value, e.g. 'partition=gpu,time=240'")
        out[key.replace("-", "_")] = int(value) if value.isdigit() else value
    return out
