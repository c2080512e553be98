"""Was the sweep worth it? One reference run with the method's documented defaults, at the sweep's compute.

Opt-in (`baseline: {default_run: true}`). When the search ends, the steps every trial trained
(pruned and failed ones included) are summed and stored on the study (`steps_spent`). The
reference then trains once for that many steps: TRL's SFTConfig defaults with the method's documented
learning rate (LEARNING_RATE) and afina's LoRA defaults (PEFT's LoraConfig, all linear layers), on the
spec's own data mix (no searched value applied). From the spec it keeps only what fixes the data and the compute per step: batch size,
gradient accumulation, max_length, truncation, what the loss covers, and the seed. It is a child
run tagged afina.role=reference, evaluated like a trial (eval loss, generation metrics, samples,
checkpoint). status, the report and the parent run show it beside the base model, with the gap
of the best trial to it on the objective and every generation metric, each with its n.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

from afina import tracking
from afina.evaluation import metrics
from afina.search import budget, records, winner_refit
from afina.search import study as study_mod
from afina.training import resume

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from afina.spec.schema import Spec
    from afina.training.context import TrialContext

# SFTConfig fields a default run takes from the spec: they fix the rows, the tokens trained on and the work per step.
KEPT = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "per_device_eval_batch_size",
    "max_length",
    "truncation_mode",
    "completion_only_loss",
    "assistant_only_loss",
    "dataset_kwargs",
    "seed",
)
SKIP = metrics.TRAINING  # results that do not measure the answers
CLAIM = "reference_claim"  # study user attr: {steps, worker, beat} of the worker training the reference

# The documented learning rate of each method. TRL's SFTConfig default (2e-5) is its rate for full
# fine-tuning; TRL's PEFT docs train LoRA at 2e-4 ("~10x the full fine-tuning rate"). Everything else
# stays at SFTConfig's and PEFT LoraConfig's defaults.
LEARNING_RATE = {"lora": 2e-4, "full": 2e-5}


def steps_spent(study: optuna.Study) -> int:
    """Optimizer steps the whole sweep trained: every trial, pruned and failed ones included (a dead
    worker's trial counts up to its last evaluation), plus the refit once it has run (search/budget.py)."""
    return budget.sweep_steps(study)


def record_spent(study: optuna.Study) -> int:
    """Store the sweep's total steps on the study when the search ends (a refit splits its budget against it)."""
    spent = steps_spent(study)
    if study.user_attrs.get("steps_spent") != spent:
        study.set_user_attr("steps_spent", spent)
    return spent


def default_spec(spec: Spec, steps: int) -> Spec:
    """The spec with every training and LoRA setting at its default, except KEPT, for `steps` steps, at the
    method's documented learning rate."""
    train = {k: v for k, v in spec.train.items() if k in KEPT} | {"max_steps": steps, "learning_rate": LEARNING_RATE[spec.model.method]}
    return spec.model_copy(update={"train": train, "lora": {}, "search": spec.search.model_copy(update={"space": {}})})


def run(ctx: TrialContext, study: optuna.Study, console=None) -> records.Reference | None:
    """The reference run for the steps the sweep has spent, once per study and budget; None when off or failed."""
    import optuna

    from afina.training import trial

    spec = ctx.spec
    if not spec.baseline.default_run:
        return None
    spent = record_spent(study)
    done = records.load(study, records.Reference)
    if spent <= 0 or (done and done.steps == spent and done.run_id):
        return done
    claim = _claim(study, spent, spec.search.heartbeat)
    if claim is None:
        return None
    earlier = study.user_attrs.get("references", [])  # runs for smaller budgets, before n_trials was raised
    stand_in = optuna.trial.FixedTrial({}, number=len(earlier))  # never pruned, nothing to resume
    beat = resume.pulse(study, CLAIM, claim, spec.search.heartbeat)  # other workers leave a live reference run alone
    try:
        trial.run(dataclasses.replace(ctx, spec=default_spec(spec, spent)), stand_in, lambda done, total: beat(), role="reference")
    except Exception as e:  # trial.run has closed the run as FAILED with its reason
        study.set_user_attr(CLAIM, {})
        if console is not None:
            console.print(f"[yellow]reference run failed[/]: {type(e).__name__}: {e} (run `afina sweep` again to retry it)")
        return None
    run_id = stand_in.user_attrs["mlflow_run_id"]
    lr = LEARNING_RATE[spec.model.method]
    note = (
        f"One run with TRL's default settings (PEFT's for LoRA) at {spec.model.method}'s documented learning rate {lr:g}, "
        f"trained for the {spent} steps the sweep spent."
    )
    ctx.client.set_tag(run_id, tracking.NOTE, note)
    record = records.Reference(run_id, spent, stand_in.user_attrs["results"], winner_refit.sizes(spec, len(ctx.prepared.eval), ctx.prompts))
    records.save(study, record)
    study.set_user_attr("references", [*earlier, run_id])
    log_gaps(ctx.client, ctx.parent_id, study, record)
    return record


def _claim(study, steps: int, heartbeat: int | None) -> dict | None:
    """One worker runs the reference: a claim for these steps by a live worker elsewhere is left alone (None)."""
    me, old = resume.worker_id(), study.user_attrs.get(CLAIM) or {}
    holder = old.get("worker", "")
    if old.get("steps") == steps and holder != me and resume.alive(holder, old.get("beat"), heartbeat):
        return None
    claim = {"steps": steps, "worker": me}
    study.set_user_attr(CLAIM, claim | {"beat": time.time()})
    return claim


def log_gaps(c: MlflowClient, parent_id: str, study: optuna.Study, record: records.Reference) -> None:
    """The parent run: the reference's run id and steps as tags, its results and the best trial's gaps as metrics."""
    c.set_tag(parent_id, f"{tracking.TAG}reference_run_id", record.run_id)
    c.set_tag(parent_id, f"{tracking.TAG}steps_spent", str(record.steps))
    values = {f"reference_{k}": v for k, v in record.results.items() if k not in SKIP}
    values |= {f"gap_vs_reference_{g['metric']}": g["gap"] for g in study_mod.reference_gaps(study)}
    tracking.log_metrics(c, parent_id, values, record.steps, synchronous=True)
