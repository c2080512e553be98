"""How many steps a trial trains, and how often it evaluates (the pruner's reports, and checkpoints)."""

from __future__ import annotations

import math

STEPS = "steps"  # trial user attr: optimizer steps this trial trained in its own process (its callback keeps it)


def eval_every(train_kw: dict, n_rows: int, n_eval: int = 0, full: bool = False) -> int:
    """Steps between evaluations (the pruner's reports, and checkpoints): train.eval_steps, else up to
    12 a trial (4 for full fine-tuning, whose checkpoints are whole models), never fewer than 4,
    and no more often than keeps an evaluation within 5 % of the training between two (an eval row
    is one forward pass, a third of a training row). Finer reports let the pruner stop losers
    sooner: 0.46 of the unpruned compute at 12 reports a trial, 0.63 at 4 (BENCHMARKS.md, search).
    """
    if train_kw.get("eval_steps"):
        return int(train_kw["eval_steps"])
    total = total_steps(train_kw, n_rows)
    cheap = math.ceil(20 * n_eval / (3 * _rows_per_step(train_kw)))
    return max(1, min(total // 4, max(total // (4 if full else 12), cheap)))


def _rows_per_step(train_kw: dict) -> int:
    return train_kw.get("per_device_train_batch_size", 8) * train_kw.get("gradient_accumulation_steps", 1)


def total_steps(train_kw: dict, n_rows: int) -> int:
    if train_kw.get("max_steps", -1) > 0:
        return int(train_kw["max_steps"])
    return max(1, math.ceil(n_rows / _rows_per_step(train_kw)) * math.ceil(train_kw.get("num_train_epochs", 3)))
