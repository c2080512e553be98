"""Train one configuration: rows + SFTConfig (+ LoraConfig) -> SFTTrainer.train(), then evaluate it
like every trial (best eval loss, generation metrics, judge) and keep its checkpoint in MLflow.

A plain function; the Trainer is not subclassed. `trial` is anything with `.number`, `.params`,
`.set_user_attr`, `.report`/`.should_prune`: an Optuna trial, a FixedTrial or a follower's Remote.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afina import UserError, models, tracking
from afina.data import token_cache
from afina.evaluation import metrics, textgen
from afina.tracking import samples
from afina.training import device, distributed, schedule
from afina.training.callback import Watch

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from afina.data.chat_rows import Row
    from afina.spec.schema import Spec
    from afina.training.context import TrialContext


@dataclass
class Job:
    """One configuration to train: its rows and settings, and where it writes."""

    name: str  # the run's name: "trial-3", "refit-3", ...
    rows: list[Row]
    train_kw: dict[str, Any]
    lora_kw: dict[str, Any]
    workdir: Path  # scratch checkpoints (the same folder on every rank)
    run_id: str | None = None  # its MLflow run (None on follower ranks)
    resume: Path | None = None  # a predecessor's checkpoint to continue from
    on_step: Callable[[int, int], None] | None = None


def fit(ctx: TrialContext, trial, job: Job) -> list[float]:
    """Train one configuration and evaluate it; returns the objective values ([] on follower ranks)."""
    from transformers import PrinterCallback, ProgressCallback
    from trl import SFTTrainer

    spec, prepared, c, run_id = ctx.spec, ctx.prepared, ctx.client, job.run_id
    rows, train_kw, lora_kw, workdir = job.rows, dict(job.train_kw), job.lora_kw, job.workdir
    attn = device.attention()
    if ctx.reuse:
        # LoRA's default inits never write the frozen base; PiSSA/OLoRA-style inits rewrite it
        share = spec.model.method == "lora" and lora_kw.get("init_lora_weights", True) in (True, False, "gaussian")
        tok, model = models.fresh(ctx.model_dir, spec.model.trust_remote_code, attn, share_weights=share)
    else:
        tok = models.load_tokenizer(ctx.model_dir, spec.model.trust_remote_code)
        model = models.load_model(ctx.model_dir, spec.model.trust_remote_code, attn_implementation=attn)
    total = schedule.total_steps(train_kw, len(rows))
    every = schedule.eval_every(train_kw, len(rows), len(prepared.eval), spec.model.method == "full")
    args, peft_config = configs(spec, train_kw, lora_kw, workdir, every, job.name)
    settings = resolved(args, peft_config, train_kw, lora_kw)  # before PEFT expands "all-linear" into module names
    train_ds, eval_ds = datasets(ctx, rows, tok, args, attn, train_kw)
    watch = Watch(c, run_id, trial, total, job.on_step, ctx.directions, ctx.lead, constant_lr=_constant_lr(args))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tok,
        peft_config=peft_config,
        callbacks=[watch],
    )
    for cb in (PrinterCallback, ProgressCallback):  # the rich display and MLflow are the outputs
        trainer.remove_callback(cb)
    if ctx.lead:
        # ranks training this trial together, and the settings it trains with that the spec left at their defaults
        tracking.log_params(c, run_id, {"world_size": args.world_size, **settings})
        tracking.reserve(c, run_id, metrics.headline(spec, ctx.prompts))  # listed first on the run's page
    out = trainer.train(resume_from_checkpoint=str(job.resume) if job.resume else None)
    best = trainer.state.best_metric if trainer.state.best_metric is not None else watch.last_eval
    if best is None:
        best = trainer.evaluate()["eval_loss"]  # on every rank: evaluation is a collective under torchrun
    distributed.barrier()  # every rank has loaded the best weights before rank 0 removes the scratch folder
    if not ctx.lead:
        return []  # a follower rank: rank 0 keeps the books
    results = {
        "eval_loss": best,
        "train_loss": out.training_loss,
        "train_runtime": out.metrics.get("train_runtime", 0.0),
        "train_tokens": float(trainer.state.num_input_tokens_seen),
    }
    tracking.log_metrics(
        c, run_id, {f"best_{k}" if k == "eval_loss" else k: v for k, v in results.items()}, trainer.state.global_step, synchronous=True
    )
    _keep_checkpoint(spec, trainer, tok, c, run_id, workdir, trial)
    scores = _samples(spec, trainer.model, tok, c, run_id, ctx.prompts, ctx.base_answers)
    results = metrics.with_combined(spec, {**results, **scores})  # generation metrics, judge, weighted sums
    tracking.log_metrics(
        c, run_id, {k: v for k, v in results.items() if k not in metrics.TRAIN_RESULTS}, trainer.state.global_step, synchronous=True
    )
    trial.set_user_attr("results", {k: float(v) for k, v in results.items() if math.isfinite(float(v))})
    missing = [o for o in spec.search.objectives if o not in results]
    if missing:
        raise UserError(f"search.objective {missing[0]!r} is not measured; known: {', '.join(results)}")
    values = [float(results[o]) for o in spec.search.objectives]
    if not all(math.isfinite(v) for v in values):
        raise FloatingPointError(f"objective is not finite: {values}")
    return values


def configs(spec: Spec, train_kw: dict, lora_kw: dict, workdir: Path, every: int, run_name: str = "afina"):
    """The SFTConfig and LoraConfig (None for full fine-tuning) of one configuration: afina's settings,
    then the spec's. `afina sweep` also builds them at the search space's edges before anything is written."""
    from trl import SFTConfig

    train_kw = {k: v for k, v in train_kw.items() if k != "eval_steps"}
    args = SFTConfig(
        output_dir=str(workdir),
        report_to="none",
        run_name=run_name,
        eval_strategy="steps",
        eval_steps=every,
        save_strategy="steps",
        save_steps=every,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        save_total_limit=1,
        logging_nan_inf_filter=False,
        disable_tqdm=True,
        include_num_input_tokens_seen="non_padding",
        **{**device.device_defaults(train_kw), "logging_steps": 1, **train_kw},
    )
    peft_config = None
    if spec.model.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **{"target_modules": "all-linear", **lora_kw})
    return args, peft_config


# Settings every run logs as trained, defaults included: a run's page says what its numbers came from.
RESOLVED_TRAIN = ("learning_rate", "lr_scheduler_type", "warmup_steps", "warmup_ratio")
RESOLVED_LORA = ("r", "lora_alpha", "lora_dropout", "target_modules")


def resolved(args, peft_config, train_kw: dict, lora_kw: dict) -> dict[str, Any]:
    """train.X / lora.X params for the RESOLVED settings the spec did not set (training/trial.py logs the ones it did)."""
    out = {}
    for prefix, config, names, given in (("train", args, RESOLVED_TRAIN, train_kw), ("lora", peft_config, RESOLVED_LORA, lora_kw)):
        for name in names:
            if config is None or name in given or not hasattr(config, name):
                continue
            value = getattr(config, name)
            value = getattr(value, "value", value)  # SchedulerType.LINEAR -> "linear"
            out[f"{prefix}.{name}"] = sorted(value) if isinstance(value, (set, frozenset)) else value
    return out


def datasets(ctx: TrialContext, rows: list[Row], tok, args, attn: str | None, train_kw: dict):
    """Pre-tokenized train/eval rows, answer-only unless train.completion_only_loss is false (data/token_cache.py), from
    the worker's token cache (raw rows when TRL must tokenize). The base model's eval loss uses it too."""
    prepared = ctx.prepared
    if ctx.reuse and ctx.model_print is None:
        ctx.model_print = models.fingerprint(ctx.model_dir)  # weights + tokenizer files
    table = token_cache.tokenized(prepared, tok, ctx.model_print or "", args, models.cache_dir() / "tokens", reuse=ctx.reuse)
    if table is None:
        return token_cache.to_dataset(rows), token_cache.to_dataset(prepared.eval)
    if attn == "flash_attention_2" and not args.packing and "padding_free" not in train_kw:
        args.padding_free = True  # varlen attention keeps the flattened rows apart: exact, and no padding
    if args.padding_free and not args.packing:
        args.max_length = None  # the cached rows are already cut to max_length (TRL refuses it otherwise)
    evals = token_cache.to_tokenized_dataset(prepared.eval, table)
    if not len(evals):  # every eval answer lies past max_length: there is no loss to judge a trial by
        raise UserError(f"train.max_length {args.max_length} cuts off the answer of every eval row; raise train.max_length")
    return token_cache.to_tokenized_dataset(rows, table), evals


PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # a checkpoint artifact holds safetensors and text only


def _keep_checkpoint(spec: Spec, trainer, tok, c: MlflowClient, run_id, workdir: Path, trial) -> None:
    """Best weights (adapter only for LoRA) + tokenizer + resolved spec -> MLflow; scratch removed."""
    best = workdir / "best"
    trainer.save_model(str(best))  # safetensors; for a PEFT model only the adapter
    tok.save_pretrained(best)
    (best / "afina-spec.yaml").write_text(tracking.dump_spec(spec, trial.params), encoding="utf-8")
    for p in best.rglob("*"):  # save_model also pickles the training arguments (training_args.bin): never uploaded
        if p.suffix.lower() in PICKLES:
            p.unlink()
    c.log_artifacts(run_id, str(best), "checkpoint")
    c.set_tag(run_id, tracking.CHECKPOINT, "checkpoint")
    shutil.rmtree(workdir, ignore_errors=True)


def _constant_lr(args) -> bool:
    kind = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    return kind == "constant" and not args.warmup_steps and not getattr(args, "warmup_ratio", 0)


def _samples(spec: Spec, model, tok, c: MlflowClient, run_id: str, prompts: list[dict], base_answers: dict[str, str]) -> dict[str, float]:
    """Answer the evaluation prompts, score them (evaluation/metrics.py, evaluation/judge.py), log the table; returns the scores."""
    if not prompts:
        return {}
    outputs = textgen.answer(spec, model, tok, prompts)
    # prompt first: MLflow's Evaluation view groups by the first column, so answers line up under prompts
    table = {
        "prompt": [p["prompt"] for p in prompts],
        "reference": [p.get("reference") or "" for p in prompts],
        "base": [base_answers.get(p["prompt"], "") for p in prompts],
        "output": outputs,
    }
    scores, columns = metrics.evaluate(spec, prompts, outputs)
    c.log_table(run_id, {**table, **columns}, samples.NAME)  # through the client: kept during an outage
    return scores
