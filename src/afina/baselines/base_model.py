"""The sweep's baseline run: the untouched base model evaluated once per study, exactly like a trial
(eval loss, generation metrics, judge), as a child run tagged afina.role=baseline, so every
leaderboard shows the gain over it.
"""

from __future__ import annotations

import tempfile
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

from afina import models, tracking
from afina.evaluation import metrics, textgen
from afina.search import study as study_mod
from afina.tracking import samples
from afina.training import device, distributed

if TYPE_CHECKING:
    import optuna

    from afina.spec.schema import Spec
    from afina.training.context import TrialContext


def run(ctx: TrialContext, study: optuna.Study, console=None) -> dict | None:
    """Once per study; a failure is reported and leaves the sweep running (it is retried next sweep)."""
    c, spec, prepared = ctx.client, ctx.spec, ctx.prepared
    known, rid = study_mod.baseline(study)
    if rid:
        try:
            if c.get_run(rid).info.status == "FINISHED":
                return known
        except Exception:  # the MLflow store was wiped: evaluate again
            pass
    run_id = c.create_run(
        ctx.experiment_id,
        run_name="baseline",
        tags={
            tracking.PARENT: ctx.parent_id,
            tracking.ROLE: "baseline",
            tracking.STUDY: ctx.study_name,
            tracking.STATE: "RUNNING",
            tracking.NOTE: "The untouched base model on the same eval set and prompts as every trial.",
            # an evaluation run: MLflow's runs table opens its parent (the sweep) expanded, showing the trials
            "mlflow.runType": "evaluation",
        },
    ).info.run_id
    try:
        tok, model = _base(spec, ctx.model_dir)
        distributed.share({"kind": "baseline"})  # under torchrun the other ranks evaluate their shards with us
        results = {"eval_loss": _eval_loss(ctx, model, tok)}
        prompts = ctx.prompts
        if prompts:
            outputs = textgen.answer(spec, model, tok, prompts)
            scores, columns = metrics.evaluate(spec, prompts, outputs)
            results |= scores
            c.log_table(  # through the outage-safe client, like every write
                run_id,
                {  # the trials' columns (prompt first: the Evaluation view groups by it); here base and output agree
                    "prompt": [p["prompt"] for p in prompts],
                    "reference": [p.get("reference") or "" for p in prompts],
                    "base": outputs,
                    "output": outputs,
                    **columns,
                },
                samples.NAME,
            )
        for name in spec.evaluate.combine:  # only the combinations the base model has every part of
            try:
                results |= metrics.combine({name: spec.evaluate.combine[name]}, results)
            except ValueError:
                pass
        tracking.log_params(c, run_id, {"model.ref": spec.model.ref, "rows.eval": len(prepared.eval)})
        tracking.log_metrics(c, run_id, {**results, "best_eval_loss": results["eval_loss"]}, 0, synchronous=True)  # the trials' column
        tracking.log_datasets(c, run_id, spec, prepared)
    except Exception as e:  # the run keeps the traceback; the sweep goes on without the base model's row
        c.log_text(run_id, traceback.format_exc(), "error.txt")
        tracking.finish(c, run_id, "FAIL", f"{type(e).__name__}: {e}")
        if console is not None:
            console.print(f"[yellow]baseline failed[/]: {type(e).__name__}: {e} (the sweep goes on; it is retried next time)")
        return None
    tracking.finish(c, run_id, "COMPLETE")
    study_mod.set_baseline(study, results, run_id)
    return results


def eval_loss_of_base(ctx: TrialContext) -> float:
    """The same eval loss the trials report, measured with SFTTrainer before any training (on every rank)."""
    tok, model = _base(ctx.spec, ctx.model_dir)
    return _eval_loss(ctx, model, tok)


def _base(spec: Spec, model_dir: Path):
    """A copy of the worker's base model, loaded as the trials load it (so they reuse it)."""
    return models.fresh(model_dir, spec.model.trust_remote_code, device.attention(), share_weights=True)  # evaluation only


def _eval_loss(ctx: TrialContext, model, tok) -> float:
    from transformers import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    from afina.training import train

    fixed = {k: v for k, v in ctx.spec.train.items() if k not in ("eval_steps", "save_steps", "logging_steps")}
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, report_to="none", disable_tqdm=True, **{**device.device_defaults(fixed), **fixed})
        _, ds = train.datasets(ctx, ctx.prepared.eval, tok, args, device.attention(), fixed)  # the trials' rows and labels
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, eval_dataset=ds, processing_class=tok)
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        return float(trainer.evaluate()["eval_loss"])
