"""Multi-GPU trials: under `accelerate launch` or torchrun every rank trains, rank 0 owns the Optuna trial.

Only rank 0 talks to Optuna and MLflow. It draws the trial's params and decides pruning; the other
ranks receive both through `torch.distributed` (`broadcast_object_list`), so all ranks train the same
configuration and stop at the same step. Outside a process group every function is a no-op.
"""

from __future__ import annotations

from typing import Any


def active() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if active() else 0


def share(value: Any) -> Any:
    """Rank 0's `value` on every rank (picklable objects only)."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def suggest(trial, space: dict) -> dict[str, Any]:
    """The trial's params: drawn by rank 0 (which holds the real trial), the same on all ranks."""
    from afina import space as space_mod

    return share(space_mod.suggest(trial, space) if rank() == 0 else None)


def should_prune(trial, value: float | None = None, step: int | None = None) -> bool:
    """Rank 0 reports and asks the pruner; every rank gets the same answer, so none waits on a collective alone."""
    decision = False
    if rank() == 0 and trial is not None:
        if value is not None and step is not None:
            trial.report(value, step)
        decision = trial.should_prune()
    return bool(share(decision))
