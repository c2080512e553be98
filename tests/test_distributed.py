"""Multi-GPU trials, checked on CPU: two gloo processes agree on rank 0's trial params and pruning."""

from __future__ import annotations

import os

import optuna
import pytest
import torch.multiprocessing as mp

from afina.training import distributed

SPACE = {
    "train.learning_rate": {"float": [1e-5, 1e-2], "log": True},
    "lora.r": {"int": [2, 64]},
    "slices.poesia.include": {"categorical": [True, False]},
}


def _rank(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    from afina.spec.schema import Dim

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        space = {k: Dim(**v) for k, v in SPACE.items()}
        trial = None
        if rank == 0:  # only rank 0 holds a study and a trial
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7), pruner=optuna.pruners.ThresholdPruner(upper=1.5))
            trial = study.ask()
        params = distributed.suggest(trial, space)
        decisions = [distributed.should_prune(trial, value=float(step), step=step) for step in range(3)]
        if rank == 0:
            trial.study.tell(trial, 0.0)
        queue.put((rank, distributed.rank(), params, decisions, trial.params if trial else None))
    finally:
        dist.destroy_process_group()


def test_params_and_pruning_are_shared_from_rank_0():
    from helpers.services import free_port

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        rank, seen_rank, params, decisions, real = queue.get(timeout=120)
        results[rank] = (seen_rank, params, decisions, real)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0][0] == 0 and results[1][0] == 1
    assert results[0][1] == results[1][1] == results[0][3]  # rank 1 trains exactly rank 0's trial
    assert set(results[1][1]) == set(SPACE)
    assert results[0][2] == results[1][2] == [False, False, True]  # the same pruning answer on every rank, every eval


def test_single_process_is_a_no_op():
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    from afina.spec.schema import Dim

    params = distributed.suggest(trial, {"train.learning_rate": Dim(float=(1e-4, 1e-2))})
    assert params == trial.params and distributed.rank() == 0 and distributed.share("x") == "x"
    assert distributed.should_prune(trial, 1.0, 1) is False


@pytest.mark.torchrun
def test_sweep_under_torchrun_trains_every_trial_on_both_ranks(project):
    """`torchrun --nproc-per-node 2 -m afina sweep`: one study, one MLflow run per trial, trained by both ranks."""
    import subprocess
    import sys

    from mlflow import MlflowClient

    from helpers.services import free_port
    from helpers.specs import tiny_spec, write_spec

    spec = tiny_spec(
        search={"n_trials": 3, "pruner": "median", "pruner_args": {"n_startup_trials": 1, "n_warmup_steps": 0}},
        train={"max_steps": 4, "eval_steps": 1},
    )
    path = write_spec(project, spec)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "afina",
        "sweep",
        str(path),
        "--no-progress",
    ]
    out = subprocess.run(cmd, cwd=project, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    study = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db")
    trials = study.get_trials()
    assert len(trials) == 3 and {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    assert sum(t.state.name == "COMPLETE" for t in trials) >= 1
    c = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")  # absolute: MLflow caches a store per URI
    exp = c.get_experiment_by_name("tiny")
    children = c.search_runs([exp.experiment_id], "tags.`afina.role` = 'trial'")
    assert sorted(r.info.run_id for r in children) == sorted(t.user_attrs["mlflow_run_id"] for t in trials)  # rank 1 logged nothing
    assert all(r.data.params["world_size"] == "2" for r in children)  # both ranks trained every trial
    assert not [r for r in children if r.info.status == "RUNNING"]
    baseline = c.search_runs([exp.experiment_id], "tags.`afina.role` = 'baseline'")
    assert len(baseline) == 1 and baseline[0].data.metrics["eval_loss"] > 0  # evaluated on both ranks' shards
