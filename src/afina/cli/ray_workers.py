"""`afina sweep SPEC --workers N`: N workers of one study, placed by Ray.

Ray places the workers (one task each, asking for the spec's `resources:`, so Ray sets CUDA_VISIBLE_DEVICES and
never puts two workers on one GPU) and runs a worker again when its process dies. Each worker runs exactly the
loop a hand-started `afina sweep` runs, so the Optuna study stays the single record of trials: pruning,
heartbeats, resume from checkpoints, the refit and the verdicts work as they do for one process. Without
`--ray` (or RAY_ADDRESS) the command starts a local Ray cluster and stops it at the end.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from afina import RunFailed, UserError, tracking
from afina.cli import ray_cluster

if TYPE_CHECKING:
    from afina.spec.schema import Spec

RETRIES = 3  # a worker whose process dies (kill -9, OOM killer, a lost node) is started again this often
POLL = 2.0  # seconds between two looks at the study for the fleet view
GRACE = 300  # seconds the workers get after Ctrl-C to checkpoint their trials and close their runs


def run(spec: Spec, spec_path: str, console, workers: int, address: str | None, overrides: dict, progress: bool = True):
    """Validate, start or join the cluster, run `workers` workers to the end, then print the study's outcome."""
    ray = ray_cluster.load()
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        shared_stores(spec)
    from afina.commands import sweep

    sweep.validate(spec)  # bad input: one line and exit 2, before a cluster starts or a store is written
    started = not ray.is_initialized()
    dashboard = ray_cluster.connect(ray, address) if started else None
    try:
        gpus = _gpus(spec, ray)
        _say_where(console, ray, workers, gpus, spec.resources.cpus_per_trial)
        if dashboard:
            console.print(dashboard)
        task = ray.remote(worker).options(
            num_gpus=gpus, num_cpus=spec.resources.cpus_per_trial, max_retries=RETRIES, runtime_env=_runtime_env()
        )
        here, path = os.getcwd(), str(Path(spec_path).resolve())  # the workers' stores and data resolve from here
        results = _watch(ray, lambda i: task.remote(path, overrides, gpus, i, here), workers, spec, console, progress)
    finally:
        if started:
            ray.shutdown()
    outcome(spec, spec_path, console, results)


def shared_stores(spec: Spec) -> None:
    """Workers on other machines cannot reach this machine's SQLite files: a cluster needs shared stores."""
    t = spec.tracking
    local = [
        (k, u)
        for k, u in (("optuna_storage", t.optuna_storage), ("mlflow_uri", t.mlflow_uri))
        if not u.split("://")[0].startswith(("postgresql", "mysql", "http"))
    ]
    if local:
        key, url = local[0]
        raise UserError(
            f"--ray joins a cluster whose machines cannot share tracking.{key} {tracking.redact(url)}; "
            "point tracking.optuna_storage at PostgreSQL and tracking.mlflow_uri at an `afina server` (README: Scaling out)"
        )


def worker(spec_path: str, overrides: dict, gpus: int, index: int, cwd: str) -> str | None:
    """One worker: the spec's sweep loop, in this Ray worker process (under torchrun on its GPUs when a trial
    takes more than one), in the driver's folder where this machine has it (the spec's relative paths: its
    SQLite stores and checkpoints on one machine). Returns why the whole study failed, or None."""
    from afina.cli import options
    from afina.training import device

    if Path(cwd).is_dir():
        os.chdir(cwd)
    options.offline_defaults()
    device.require_gpus(gpus)  # before the study exists: the first worker sets it up
    if gpus > 1:
        return _torchrun(spec_path, overrides, gpus)
    from rich.console import Console

    from afina.commands import sweep

    spec = options.load_spec(Path(spec_path), overrides.get("storage"), overrides.get("tracking_uri"))
    if overrides.get("n_trials"):
        spec.search.n_trials = overrides["n_trials"]
    try:
        sweep.run(spec, spec_path, Console(file=sys.stderr, width=160), progress=False)
    except RunFailed as e:
        return str(e)
    return None


def _runtime_env() -> dict | None:
    """The driver's settings its workers need: those on a cluster started apart do not inherit its environment."""
    from afina.training import device

    env = {k: os.environ[k] for k in (device.LOGICAL_GPUS,) if k in os.environ}
    return {"env_vars": env} if env else None


def _torchrun(spec_path: str, overrides: dict, gpus: int) -> str | None:
    """A multi-GPU trial: the same sweep under torchrun, one rank per GPU that Ray gave this worker."""
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(gpus), "-m", "afina", "sweep", spec_path]
    cmd += ["--no-progress"] + (["--n-trials", str(overrides["n_trials"])] if overrides.get("n_trials") else [])
    env = {**os.environ, **({"AFINA_OPTUNA_STORAGE": overrides["storage"]} if overrides.get("storage") else {})}
    env |= {"AFINA_TRACKING_URI": overrides["tracking_uri"]} if overrides.get("tracking_uri") else {}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode == 1:  # every trial failed: the reason is its last line
        return done.stderr.strip().splitlines()[-1].removeprefix("error: ") if done.stderr.strip() else "every trial failed"
    if done.returncode:
        raise RuntimeError(f"torchrun exited {done.returncode}: {done.stderr.strip()[-500:]}")
    return None


def _gpus(spec: Spec, ray) -> int:
    """GPUs each worker asks for: the spec's, else one where the cluster has any."""
    if spec.resources.gpus_per_trial is not None:
        return spec.resources.gpus_per_trial
    return 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0


def _say_where(console, ray, workers: int, gpus: int, cpus: float) -> None:
    have = ray.cluster_resources()
    fit = min(workers, int(have.get("CPU", 0) // cpus), int(have.get("GPU", 0) // gpus) if gpus else workers)
    console.print(
        f"Ray: {workers} workers of {gpus} GPU and {cpus:g} CPU each, on {len(ray.nodes())} node(s) with "
        f"{have.get('GPU', 0):g} GPUs and {have.get('CPU', 0):g} CPUs: {fit} run at once"
    )
    if fit < 1:
        console.print("[yellow]warning:[/] no node has room for one worker yet; the workers wait for one (they never fall back to the CPU)")


def _watch(ray, start, workers: int, spec: Spec, console, progress: bool) -> list:
    """Start the workers and wait for every one, with one view of the study; Ctrl-C asks each to checkpoint its
    trial and stop. The first worker sets the sweep up alone (the study, the MLflow experiment and its run, the
    base model's evaluation): SQLite stores cannot take several processes creating them at once."""
    from rich.live import Live

    pending, results = [start(0)], []
    try:
        with Live(console=console, refresh_per_second=1, transient=False, auto_refresh=False) as live:
            while pending:
                done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL)
                results += _gather(ray, done)
                if not pending and (refused := [r for r in results if isinstance(r, UserError)]) and not set_up(spec):
                    raise refused[0]  # the first worker refused to start: nothing is written, one line for the user
                if len(results) + len(pending) < workers and (results or set_up(spec)):
                    pending += [start(i) for i in range(len(results) + len(pending), workers)]
                if progress:
                    live.update(fleet(spec), refresh=True)
    except KeyboardInterrupt:
        console.print(f"Stopping {len(pending)} workers: each checkpoints its trial and closes its run (Ctrl-C again: stop now)")
        for ref in pending:
            ray.cancel(ref)  # a KeyboardInterrupt in the worker: the sweep's own first Ctrl-C
        try:
            ray.wait(pending, num_returns=len(pending), timeout=GRACE)
        except KeyboardInterrupt:
            for ref in pending:
                ray.cancel(ref, force=True)
        raise KeyboardInterrupt from None
    return results


def set_up(spec: Spec) -> bool:
    """The first worker has set the sweep up: the study exists and holds the base model's results."""
    from afina.search import study as study_mod

    try:
        return bool(study_mod.baseline(study_mod.open(spec))[1])
    except UserError:
        return False


def _gather(ray, done: list) -> list:
    out = []
    for ref in done:
        try:
            out.append(ray.get(ref))
        except ray.exceptions.RayError as e:  # a worker that failed after its retries: its reason, not its traceback
            cause = getattr(e, "cause", None) or e
            if isinstance(cause, UserError):  # it refused to start (GPUs torch cannot see): its own line
                out.append(cause)
                continue
            out.append(
                f"a worker failed: {type(cause).__name__}: {str(cause).strip().splitlines()[-1][:300] if str(cause).strip() else ''}"
            )
    return out


def fleet(spec: Spec):
    """Trials by state, and what each worker is doing, read from the study (the single source of truth)."""
    from collections import Counter

    from rich.table import Table

    from afina.search import study as study_mod

    table = Table(title=f"{spec.name}: {spec.search.n_trials} trials", title_justify="left")
    try:
        study = study_mod.open(spec)
    except UserError:  # the first worker has not created it yet
        table.add_column("setting up")
        return table
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    table.add_column("worker")
    table.add_column("running")
    table.add_column("done", justify="right")
    per: dict[str, list] = {}
    for t in trials:
        per.setdefault(t.user_attrs.get("worker", "-"), []).append(t)
    for name, ts in sorted(per.items()):
        running = ", ".join(f"trial {t.number}" for t in ts if t.state.name == "RUNNING") or "-"
        table.add_row(name, running, str(sum(t.state.name in ("COMPLETE", "PRUNED") for t in ts)))
    table.caption = " · ".join(f"{states.get(s, 0)} {s.lower()}" for s in ("RUNNING", "COMPLETE", "PRUNED", "FAIL"))
    return table


def outcome(spec: Spec, spec_path: str, console, results: list) -> None:
    from afina.reporting import leaderboard
    from afina.search import study as study_mod

    study = study_mod.open(spec)
    console.print(leaderboard.table(study))
    failed = [str(r) for r in results if r]
    if failed and len(failed) == len(results):
        raise RunFailed(failed[0])
    for why in failed:
        console.print(f"[yellow]warning:[/] {why}")
    console.print(f"Open the runs: afina ui, or `afina status {spec_path}`")
