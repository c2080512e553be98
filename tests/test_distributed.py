"""Multi-GPU trials, checked on CPU: two gloo processes agree on rank 0's trial params and pruning."""

from __future__ import annotations

import optuna
import torch.multiprocessing as mp

from afina import distributed

SPACE = {"train.learning_rate": {"float": [1e-5, 1e-2], "log": True}, "lora.r": {"int": [2, 64]},
         "slices.poesia.include": {"categorical": [True, False]}}


def _rank(rank: int, port: int, queue) -> None:
    import torch.distributed as dist

    from afina.spec import Dim

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
    from stores import free_port

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
    from afina.spec import Dim

    params = distributed.suggest(trial, {"train.learning_rate": Dim(float=(1e-4, 1e-2))})
    assert params == trial.params and distributed.rank() == 0 and distributed.share("x") == "x"
    assert distributed.should_prune(trial, 1.0, 1) is False
