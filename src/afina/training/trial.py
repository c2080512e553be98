"""One trial: the Optuna trial's picks -> a training job (training/train.py) in its own MLflow child run.

`run(ctx, trial, role=...)` is the one public way to train a configuration as a child run of the
sweep, evaluated exactly like every trial. It takes an Optuna trial of the study, or an
`optuna.trial.FixedTrial(params, number)` with no study behind it (refits, references, ablations):
then the study name comes from the TrialContext, and it resumes from the newest checkpoint left in
its own folder (ROLE-N) by a killed or interrupted earlier attempt. It returns the objective
value(s) and leaves everything else in the run: params, data fingerprints, curves, the samples
table, the kept checkpoint, and on failure the reason.
"""

from __future__ import annotations

import shutil
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from afina import data, tracking
from afina.data import chat_rows
from afina.spec import space
from afina.training import device, distributed, resume, stop
from afina.training.train import Job, fit

if TYPE_CHECKING:
    from afina.training.context import TrialContext


def run(ctx: TrialContext, trial, on_step: Callable[[int, int], None] | None = None, role: str = "trial") -> float | list[float]:
    """Train and evaluate `trial`'s configuration as a child run tagged afina.role=ROLE, named ROLE-N."""
    import optuna

    spec, prepared, c = ctx.spec, ctx.prepared, ctx.client
    params = space.suggest(trial, spec.search.space)
    workdir = Path(spec.tracking.checkpoint_dir) / ctx.study_name / f"{role}-{trial.number}"
    in_study = hasattr(trial, "study")  # a FixedTrial has no study: only its own folder to resume from
    resumed, consumed = resume.resume_point(spec, trial, c, ctx.study_name) if in_study else (resume.latest(workdir), [])
    run_id = tracking.child_run(c, ctx.experiment_id, ctx.parent_id, ctx.study_name, trial.number, role)
    trial.set_user_attr("mlflow_run_id", run_id)
    trial.set_user_attr("worker", resume.worker_id())
    if resumed:
        trial.set_user_attr("resumed_from", str(resumed))
        c.set_tag(run_id, f"{tracking.TAG}resumed_from", str(resumed))
    try:
        train_kw, lora_kw, choices = space.apply(spec, params)
        rows, counts = data.mix(prepared, choices, spec.data.seed)
        data_print = chat_rows.fingerprint(rows)
        trial.set_user_attr("data_fingerprint", data_print)
        # Every resolved field once; which of them the search picked is in afina.searched and the description.
        tracking.log_params(
            c,
            run_id,
            {
                **{f"train.{k}": v for k, v in train_kw.items()},
                **{f"lora.{k}": v for k, v in lora_kw.items()},
                **{f"slices.{n}.{a}": v for n, ch in choices.items() for a, v in ch.items()},
                **{f"rows.{n}": v for n, v in counts.items()},
                "rows.train": len(rows),
                "rows.eval": len(prepared.eval),
                "data.fingerprint": data_print,
                **{f"data.{k}": v for k, v in prepared.fingerprints.items()},
                "model.ref": spec.model.ref,
                "model.method": spec.model.method,
            },
        )
        c.set_tag(run_id, tracking.DATA_FINGERPRINT, data_print)
        c.set_tag(run_id, f"{tracking.TAG}searched", ", ".join(params) or "none")
        c.set_tag(run_id, tracking.NOTE, running_note(trial.number, params))
        tracking.log_datasets(c, run_id, spec, prepared, counts)
        if not rows:
            raise optuna.TrialPruned("every slice is excluded by this trial's choices; nothing to train on")
        distributed.announce(
            trial.number, params, resumed, ctx.study_name, ctx.directions
        )  # under torchrun the other ranks train it with us
        values = fit(ctx, trial, Job(f"{role}-{trial.number}", rows, train_kw, lora_kw, workdir, run_id, resumed, on_step))
    except optuna.TrialPruned as e:
        with stop.shield():
            trial.set_user_attr("prune_reason", tracking.redact(str(e)) or "pruned")
            tracking.finish(c, run_id, "PRUNED", str(e) or "pruned")
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    except BaseException as e:  # Ctrl-C and OOM included: the run is closed with the reason, then it re-raises
        with stop.shield():  # a second Ctrl-C must not leave this run RUNNING
            reason = tracking.redact(device.out_of_memory(e) or f"{type(e).__name__}: {e}".strip())
            device.release(e)  # first: the records below need memory, and the next trial must not train beside this one
            if isinstance(e, KeyboardInterrupt):
                trial.set_user_attr("interrupted", True)  # the next sweep runs these params again
            trial.set_user_attr("fail_reason", reason[:500])
            c.log_text(run_id, tracking.redact(traceback.format_exc()), "error.txt")
            tracking.finish(c, run_id, "FAIL", reason)
            if not isinstance(e, KeyboardInterrupt):
                for folder in (workdir, *consumed):
                    shutil.rmtree(folder, ignore_errors=True)
        raise
    with stop.shield():
        tracking.finish(c, run_id, "COMPLETE")
    for folder in consumed:  # the predecessors' checkpoints were used up
        shutil.rmtree(folder, ignore_errors=True)
    return values[0] if len(values) == 1 else values


def follow(ctx: TrialContext, msg: dict) -> None:
    """A rank > 0 under torchrun: train rank 0's trial in step with it; rank 0 logs and scores."""
    remote = distributed.Remote(msg["number"], msg["params"])
    train_kw, lora_kw, choices = space.apply(ctx.spec, msg["params"])
    rows, _ = data.mix(ctx.prepared, choices, ctx.spec.data.seed)
    workdir = Path(ctx.spec.tracking.checkpoint_dir) / ctx.study_name / f"trial-{msg['number']}"  # the same folder as rank 0
    resumed = Path(msg["resume"]) if msg["resume"] else None
    fit(ctx, remote, Job(f"trial-{msg['number']}", rows, train_kw, lora_kw, workdir, None, resumed))


def running_note(number: int, params: dict) -> str:
    """The description of a trial while it runs (reporting/run_descriptions.py rewrites it when it ends)."""
    picks = " · ".join(f"`{k}` = {f'{v:.4g}' if isinstance(v, float) else v}" for k, v in params.items())
    return f"**trial {number}** · RUNNING\n\nSearched picks: {picks or 'none (nothing is searched)'}"
