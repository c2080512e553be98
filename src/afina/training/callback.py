"""The trainer callback of a trial: curves to MLflow, NaN guard, Optuna pruning, progress, graceful stop."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from transformers import TrainerCallback

from afina import tracking
from afina.training import distributed, schedule, stop

if TYPE_CHECKING:
    from afina.tracking.spool import Guard

# Trainer's bookkeeping, not logged: MLflow would draw a chart for each, ahead of the curves that matter.
COUNTERS = {
    "total_flos",
    "train_runtime",
    "train_samples_per_second",
    "train_steps_per_second",
    "train_tokens_per_second",
    "epoch",
    "num_input_tokens_seen",
    "num_tokens",
    "eval_num_tokens",
    "eval_runtime",
    "eval_samples_per_second",
    "eval_steps_per_second",
    "entropy",
    "eval_entropy",
}


class Watch(TrainerCallback):
    """Trainer callback: curves to MLflow, NaN guard, Optuna pruning, progress. No trainer subclass."""

    def __init__(
        self,
        client: Guard,
        run_id: str | None,
        trial,
        total: int,
        on_step,
        directions: list[str],
        lead: bool = True,
        constant_lr: bool = False,
    ):
        self.c, self.run_id, self.trial, self.total, self.on_step = client, run_id, trial, total, on_step
        # A flat learning-rate curve is drawn by MLflow's charts on a ±1 axis, i.e. at "0"; train.learning_rate says it.
        self.skip = COUNTERS | ({"learning_rate"} if constant_lr else set())
        self.directions, self.lead = directions, lead  # lead=False on follower ranks: no logging, decisions come from rank 0
        self.stop = False
        self.last_eval: float | None = None
        self.t0, self.tokens0 = time.perf_counter(), 0
        self.pending: list[tuple[int, int, dict]] = []  # per-step curves, written in batches (one write per ~2 s)
        self.flushed = self.t0
        self.start = 0  # the step training began at: a resumed trial counts only its own steps

    def on_train_begin(self, args, state, control, **kw):
        self.start = state.global_step  # the checkpoint's step when resumed (its state is loaded by now)

    def count(self, state) -> None:
        """The steps this trial trained, for the budget (search/budget.py): kept current at every eval and save."""
        if self.lead:
            self.trial.set_user_attr(schedule.STEPS, state.global_step - self.start)

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(loss):
            self.flush()
            self.count(state)
            raise FloatingPointError(f"training loss became {loss} at step {state.global_step}; lower the learning rate or check the data")
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        if "loss" in logs and now > self.t0:
            logs["tokens_per_second"] = (tokens - self.tokens0) / (now - self.t0)
        self.t0, self.tokens0 = now, tokens
        self.pending.append((state.global_step, int(time.time() * 1000), {k: v for k, v in logs.items() if k not in self.skip}))
        if "eval_loss" in logs or now - self.flushed >= 2.0:  # evals first: a pruned trial keeps its curve
            self.flush()

    def flush(self) -> None:
        if self.pending and self.lead:
            tracking.log_steps(self.c, self.run_id, self.pending)  # asynchronous: training does not wait
        self.pending, self.flushed = [], time.perf_counter()

    def on_train_end(self, args, state, control, **kw):
        self.flush()
        self.count(state)

    def on_step_end(self, args, state, control, **kw):
        self.stop = distributed.share(stop.STOP.is_set())  # rank 0 decides, so all ranks save the same step
        if self.stop:
            control.should_save = True  # Ctrl-C/SIGTERM: checkpoint now, then on_save stops the trial
        if self.on_step:
            self.on_step(state.global_step, self.total)

    def on_save(self, args, state, control, **kw):
        self.count(state)
        if self.stop:  # raised here, so Trainer's end-of-training cleanup keeps this checkpoint
            raise KeyboardInterrupt(f"stopped at step {state.global_step} after saving a checkpoint; `afina sweep` resumes it")

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        import optuna

        value = (metrics or {}).get("eval_loss")
        if value is None:
            return
        self.count(state)  # before pruning: a pruned trial counts the steps it ran
        if not math.isfinite(value):
            raise FloatingPointError(f"eval loss became {value} at step {state.global_step}")
        self.last_eval = value
        if len(self.directions) > 1:
            return  # Optuna cannot prune multi-objective trials
        # The pruner compares in the study's direction; eval loss is the proxy, so flip it for maximize.
        sign = 1.0 if self.directions[0].lower() == "minimize" else -1.0
        if distributed.should_prune(self.trial if self.lead else None, sign * value, state.global_step):
            raise optuna.TrialPruned(f"pruned at step {state.global_step}: eval_loss {value:.4f} is worse than its peers")
