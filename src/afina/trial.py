"""One trial: the Optuna trial's picks -> SFTConfig (+ LoraConfig) -> SFTTrainer.train().

A plain function of (spec, prepared data, trial). It returns the objective value(s) and leaves
everything else in its MLflow child run: params, data fingerprints, curves, the samples table,
the kept checkpoint, and on failure the reason.
"""

from __future__ import annotations

import math
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from afina import data, distributed, generate, metrics, models, resilience, space, tracking
from afina.errors import UserError


def run(
    spec, prepared: data.Prepared, trial, ctx: dict[str, Any], on_step: Callable[[int, int], None] | None = None
) -> float | list[float]:
    """ctx holds the worker's fixed state: client, experiment_id, parent_id, model_dir, prompts."""
    import optuna

    c = ctx["client"]
    params = space.suggest(trial, spec.search.space)
    resume, consumed = resilience.resume_point(spec, trial, c)  # a dead or interrupted predecessor's checkpoint
    run_id = tracking.child_run(c, ctx["experiment_id"], ctx["parent_id"], trial.study.study_name, trial.number)
    trial.set_user_attr("mlflow_run_id", run_id)
    trial.set_user_attr("worker", resilience.worker_id())
    if resume:
        trial.set_user_attr("resumed_from", str(resume))
        c.set_tag(run_id, f"{tracking.TAG}resumed_from", str(resume))
    workdir = Path(spec.tracking.checkpoint_dir) / trial.study.study_name / f"trial-{trial.number}"
    try:
        train_kw, lora_kw, choices = space.apply(spec, params)
        rows, counts = data.mix(prepared, choices, spec.data.seed)
        data_print = data.fingerprint(rows)
        trial.set_user_attr("data_fingerprint", data_print)
        tracking.log_params(
            c,
            run_id,
            {
                **{f"param.{k}": v for k, v in params.items()},
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
        c.set_tag(run_id, f"{tracking.TAG}data_fingerprint", data_print)
        if not rows:
            raise optuna.TrialPruned("every slice is excluded by this trial's choices; nothing to train on")
        distributed.announce(trial, params, resume)  # under torchrun the other ranks train it with us
        values = _train(spec, prepared, rows, train_kw, lora_kw, trial, ctx, run_id, workdir, on_step, resume)
    except optuna.TrialPruned as e:
        trial.set_user_attr("prune_reason", tracking.redact(str(e)) or "pruned")
        tracking.finish(c, run_id, "PRUNED", str(e) or "pruned")
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    except BaseException as e:
        reason = tracking.redact(f"{type(e).__name__}: {e}".strip())
        c.log_text(run_id, tracking.redact(traceback.format_exc()), "error.txt")
        trial.set_user_attr("fail_reason", reason[:500])
        if isinstance(e, KeyboardInterrupt):
            trial.set_user_attr("interrupted", True)  # the next sweep runs these params again
        tracking.finish(c, run_id, "FAIL", reason)
        if not isinstance(e, KeyboardInterrupt):
            for folder in (workdir, *consumed):
                shutil.rmtree(folder, ignore_errors=True)
        raise
    tracking.finish(c, run_id, "COMPLETE")
    for folder in consumed:  # the predecessors' checkpoints were used up
        shutil.rmtree(folder, ignore_errors=True)
    return values[0] if len(values) == 1 else values


def follow(spec, prepared: data.Prepared, msg: dict, model_dir) -> None:
    """A rank > 0 under torchrun: train rank 0's trial in step with it; rank 0 logs and scores."""
    remote = distributed.Remote(msg["number"], msg["params"], msg["study"], msg["directions"])
    train_kw, lora_kw, choices = space.apply(spec, msg["params"])
    rows, _ = data.mix(prepared, choices, spec.data.seed)
    workdir = Path(spec.tracking.checkpoint_dir) / msg["study"] / f"trial-{msg['number']}"  # the same folder as rank 0
    ctx = {"client": None, "model_dir": model_dir, "prompts": []}
    _train(spec, prepared, rows, train_kw, lora_kw, remote, ctx, None, workdir, None, Path(msg["resume"]) if msg["resume"] else None)


def _train(spec, prepared, rows, train_kw, lora_kw, trial, ctx, run_id, workdir: Path, on_step, resume: Path | None = None) -> list[float]:
    from transformers import PrinterCallback, ProgressCallback
    from trl import SFTTrainer

    c = ctx["client"]
    reuse, attn = ctx.get("reuse", True), attention()  # reuse=False: load and tokenize from scratch (benchmarks)
    if reuse:
        # LoRA's default inits never write the frozen base; PiSSA/OLoRA-style inits rewrite it
        share = spec.model.method == "lora" and lora_kw.get("init_lora_weights", True) in (True, False, "gaussian")
        tok, model = models.fresh(ctx["model_dir"], spec.model.trust_remote_code, attn, share_weights=share)
    else:
        tok = models.load_tokenizer(ctx["model_dir"], spec.model.trust_remote_code)
        model = models.load_model(ctx["model_dir"], spec.model.trust_remote_code, attn_implementation=attn)
    total = _total_steps(train_kw, len(rows))
    every = eval_every(train_kw, len(rows), len(prepared.eval), spec.model.method == "full")
    args, peft_config = configs(spec, train_kw, lora_kw, workdir, every, f"trial-{trial.number}")
    train_ds, eval_ds = (
        _datasets(prepared, rows, tok, args, ctx, attn, train_kw) if reuse else (data.to_dataset(rows), data.to_dataset(prepared.eval))
    )
    watch = _Watch(c, run_id, trial, total, on_step)
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
    if c is not None:
        tracking.log_params(c, run_id, {"world_size": args.world_size})  # ranks training this trial together
    out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    best = trainer.state.best_metric if trainer.state.best_metric is not None else watch.last_eval
    if best is None:
        best = trainer.evaluate()["eval_loss"]  # on every rank: evaluation is a collective under torchrun
    distributed.barrier()  # every rank has loaded the best weights before rank 0 removes the scratch folder
    if c is None:
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
    scores = _samples(spec, trainer.model, tok, c, run_id, trial.number, ctx["prompts"])
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


def configs(spec, train_kw: dict, lora_kw: dict, workdir: Path, every: int, run_name: str = "afina"):
    """The trial's SFTConfig and LoraConfig (None for full fine-tuning): afina's settings, then the spec's."""
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
        **{**device_defaults(), "logging_steps": 1, **train_kw},
    )
    peft_config = None
    if spec.model.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="CAUSAL_LM", **{"target_modules": "all-linear", **lora_kw})
    return args, peft_config


def _datasets(prepared, rows, tok, args, ctx, attn, train_kw):
    """Pre-tokenized train/eval rows from the worker's token cache (raw rows when TRL must tokenize)."""
    if "model_print" not in ctx:
        ctx["model_print"] = models.fingerprint(ctx["model_dir"])  # weights + tokenizer files
    table = data.tokenized(prepared, tok, ctx["model_print"], args, models.cache_dir() / "tokens")
    if table is None:
        return data.to_dataset(rows), data.to_dataset(prepared.eval)
    if attn == "flash_attention_2" and not args.packing and "padding_free" not in train_kw:
        args.padding_free = True  # varlen attention keeps the flattened rows apart: exact, and no padding
    if args.padding_free and not args.packing:
        args.max_length = None  # the cached rows are already cut to max_length (TRL refuses it otherwise)
    return data.to_tokenized_dataset(rows, table), data.to_tokenized_dataset(prepared.eval, table)


def device_defaults() -> dict[str, Any]:
    """Fastest correct SFTConfig settings for this machine; the spec's train section overrides them.

    Everywhere: no gradient checkpointing. TRL turns it on by default, which recomputes every
    forward pass (about a third more compute) to save activation memory that fine-tuning a small
    model does not need; a spec that runs out of memory sets `train.gradient_checkpointing: true`.
    GPU: bf16 where supported (else fp32: fp16 needs loss scaling that can fail silently), TF32
    matmuls on Ampere+, fused AdamW, Liger's layer kernels when `liger-kernel` is installed
    (`pip install afina[gpu]`). CPU: fp32 (TRL would otherwise ask for bf16 and refuse the CPU);
    fused AdamW is already the torch>=2.8 default there.
    """
    import importlib.util

    import torch

    if torch.cuda.is_available():
        out = {
            "bf16": torch.cuda.is_bf16_supported(),
            "fp16": False,
            "optim": "adamw_torch_fused",
            "tf32": torch.cuda.get_device_capability()[0] >= 8,
            "gradient_checkpointing": False,
        }
        if importlib.util.find_spec("liger_kernel") is not None:
            out["use_liger_kernel"] = True
        return out
    return {"bf16": False, "fp16": False, "use_cpu": True, "gradient_checkpointing": False}


def attention() -> str | None:
    """FlashAttention-2 when installed on a GPU (varlen, so padding-free is exact), else SDPA."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return None  # transformers' default (SDPA) is the fastest on CPU
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"


def eval_every(train_kw: dict, n_rows: int, n_eval: int = 0, full: bool = False) -> int:
    """Steps between evaluations (the pruner's reports, and checkpoints): train.eval_steps, else up to
    12 a trial (4 for full fine-tuning, whose checkpoints are whole models), never fewer than 4,
    and no more often than keeps an evaluation within 5 % of the training between two (an eval row
    is one forward pass, a third of a training row). Finer reports let the pruner stop losers
    sooner: 0.46 of the unpruned compute at 12 reports a trial, 0.63 at 4 (BENCHMARKS.md, search).
    """
    if train_kw.get("eval_steps"):
        return int(train_kw["eval_steps"])
    total = _total_steps(train_kw, n_rows)
    cheap = math.ceil(20 * n_eval / (3 * _rows_per_step(train_kw)))
    return max(1, min(total // 4, max(total // (4 if full else 12), cheap)))


def _rows_per_step(train_kw: dict) -> int:
    return train_kw.get("per_device_train_batch_size", 8) * train_kw.get("gradient_accumulation_steps", 1)


def _total_steps(train_kw: dict, n_rows: int) -> int:
    if train_kw.get("max_steps", -1) > 0:
        return int(train_kw["max_steps"])
    return max(1, math.ceil(n_rows / _rows_per_step(train_kw)) * math.ceil(train_kw.get("num_train_epochs", 3)))


PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # a checkpoint artifact holds safetensors and text only


def _keep_checkpoint(spec, trainer, tok, c, run_id, workdir: Path, trial) -> None:
    """Best weights (adapter only for LoRA) + tokenizer + resolved spec -> MLflow; scratch removed."""
    best = workdir / "best"
    trainer.save_model(str(best))  # safetensors; for a PEFT model only the adapter
    tok.save_pretrained(best)
    (best / "afina-spec.yaml").write_text(tracking.dump_spec(spec, trial.params), encoding="utf-8")
    for p in best.rglob("*"):  # save_model also pickles the training arguments (training_args.bin): never uploaded
        if p.suffix.lower() in PICKLES:
            p.unlink()
    c.log_artifacts(run_id, str(best), "checkpoint")
    c.set_tag(run_id, f"{tracking.TAG}checkpoint", "checkpoint")
    shutil.rmtree(workdir, ignore_errors=True)


def _samples(spec, model, tok, c, run_id: str, number: int, prompts: list[dict]) -> dict[str, float]:
    """Answer the evaluation prompts, score them (metrics.py, judge.py), log the table; returns the scores."""
    if not prompts:
        return {}
    outputs = generate.generate(
        model, tok, [p["prompt"] for p in prompts], spec.samples.max_new_tokens, spec.samples.temperature, spec.samples.system
    )
    table = {
        "trial": [number] * len(prompts),
        "prompt": [p["prompt"] for p in prompts],
        "reference": [p.get("reference") or "" for p in prompts],
        "output": outputs,
    }
    scores, columns = metrics.evaluate(spec, prompts, outputs)
    c.log_table(run_id, {**table, **columns}, "samples.json")  # through the client: kept during an outage
    return scores


class _Watch(TrainerCallback):
    """Trainer callback: curves to MLflow, NaN guard, Optuna pruning, progress. No trainer subclass."""

    def __init__(self, client, run_id, trial, total, on_step):
        self.c, self.run_id, self.trial, self.total, self.on_step = client, run_id, trial, total, on_step
        self.lead = client is not None  # False on follower ranks: no logging, decisions come from rank 0
        self.stop = False
        self.last_eval: float | None = None
        self.t0, self.tokens0 = time.perf_counter(), 0
        self.pending: list[tuple[int, int, dict]] = []  # per-step curves, written in batches (one write per ~2 s)
        self.flushed = self.t0

    def on_log(self, args, state, control, logs=None, **kw):
        logs = dict(logs or {})
        loss = logs.get("loss")
        if loss is not None and not math.isfinite(loss):
            self.flush()
            raise FloatingPointError(f"training loss became {loss} at step {state.global_step}; lower the learning rate or check the data")
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        if "loss" in logs and now > self.t0:
            logs["tokens_per_second"] = (tokens - self.tokens0) / (now - self.t0)
        self.t0, self.tokens0 = now, tokens
        skip = ("total_flos", "train_runtime", "train_samples_per_second", "train_steps_per_second", "train_tokens_per_second")
        self.pending.append((state.global_step, int(time.time() * 1000), {k: v for k, v in logs.items() if k not in skip}))
        if "eval_loss" in logs or now - self.flushed >= 2.0:  # evals first: a pruned trial keeps its curve
            self.flush()

    def flush(self) -> None:
        if self.pending and self.lead:
            tracking.log_steps(self.c, self.run_id, self.pending)  # asynchronous: training does not wait
        self.pending, self.flushed = [], time.perf_counter()

    def on_train_end(self, args, state, control, **kw):
        self.flush()

    def on_step_end(self, args, state, control, **kw):
        self.stop = distributed.share(resilience.STOP.is_set())  # rank 0 decides, so all ranks save the same step
        if self.stop:
            control.should_save = True  # Ctrl-C/SIGTERM: checkpoint now, then on_save stops the trial
        if self.on_step:
            self.on_step(state.global_step, self.total)

    def on_save(self, args, state, control, **kw):
        if self.stop:  # raised here, so Trainer's end-of-training cleanup keeps this checkpoint
            raise KeyboardInterrupt(f"stopped at step {state.global_step} after saving a checkpoint; `afina sweep` resumes it")

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        import optuna

        value = (metrics or {}).get("eval_loss")
        if value is None:
            return
        if not math.isfinite(value):
            raise FloatingPointError(f"eval loss became {value} at step {state.global_step}")
        self.last_eval = value
        if len(self.trial.study.directions) > 1:
            return  # Optuna cannot prune multi-objective trials
        # The pruner compares in the study's direction; eval loss is the proxy, so flip it for maximize.
        sign = 1.0 if _name(self.trial.study.directions[0]) == "MINIMIZE" else -1.0
        if distributed.should_prune(self.trial if self.lead else None, sign * value, state.global_step):
            raise optuna.TrialPruned(f"pruned at step {state.global_step}: eval_loss {value:.4f} is worse than its peers")


def _name(direction) -> str:
    return getattr(direction, "name", direction)  # an Optuna StudyDirection, or its name on follower ranks
