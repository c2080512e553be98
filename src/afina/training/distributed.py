"""Multi-GPU trials: under `accelerate launch` or torchrun every rank trains, rank 0 owns the Optuna trial.

Only rank 0 talks to Optuna and MLflow. It draws the trial's params and decides pruning and
stopping; the other ranks receive them through `torch.distributed` (`broadcast_object_list`), so all
ranks train the same configuration and stop at the same step. Outside a process group every
function is a no-op.

The conversation, from rank 0 to the others: one message per trial ({"kind": "trial", ...}) or per
baseline evaluation ({"kind": "baseline"}), and None when the sweep ends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from afina.spec import space as space_mod


def init() -> None:
    """Join the launcher's process group before the first message (Trainer would only join at its first trial)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch.distributed as dist

    if not dist.is_initialized():
        from accelerate import PartialState

        PartialState()  # NCCL on GPUs, gloo on CPU; the same state Trainer reuses


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


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
    return share(space_mod.suggest(trial, space) if rank() == 0 else None)


def should_prune(trial, value: float | None = None, step: int | None = None) -> bool:
    """Rank 0 reports and asks the pruner; every rank gets the same answer, so none waits on a collective alone."""
    decision = False
    if rank() == 0 and trial is not None:
        if value is not None and step is not None:
            trial.report(value, step)
        decision = trial.should_prune()
    return bool(share(decision))


@dataclass
class Remote:
    """A follower rank's view of rank 0's trial: its number and params; reports and attributes stay on rank 0."""

    number: int
    params: dict[str, Any]

    def set_user_attr(self, key: str, value: Any) -> None:
        pass  # rank 0 records the trial's attributes


def announce(number: int, params: dict, resume, study_name: str, directions: list[str]) -> None:
    """Rank 0: tell the other ranks to train this trial."""
    if active():
        share(
            {
                "kind": "trial",
                "number": number,
                "params": params,
                "resume": str(resume) if resume else None,
                "study": study_name,
                "directions": directions,
            }
        )
