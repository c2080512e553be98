"""Shared pieces of the benchmarks: a spec on the quickstart data, one afina trial, one bare TRL run.

Both sides train the same model on the same rows with the same seed and SFTConfig fields; the
afina side goes through `trial.run` with MLflow logging, callbacks and Optuna pruning on.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIENDA = ROOT / "experiments" / "data" / "tienda"

for _k, _v in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
               "DO_NOT_TRACK": "true", "TOKENIZERS_PARALLELISM": "false", "MLFLOW_ENABLE_ASYNC_LOGGING": "true"}.items():
    os.environ.setdefault(_k, _v)


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


def spec_dict(model: str, steps: int, folder: Path, batch: int = 8, max_length: int = 128, eval_steps: int | None = None) -> dict:
    """Quickstart-shaped: the tienda slices, LoRA r=8 all-linear, batch 8, max_length 128."""
    return {
        "name": "bench",
        "model": {"ref": model, "method": "lora"},
        "data": {"slices": {n: {"path": str(TIENDA / f"{n}.jsonl")} for n in ("faq", "productos", "poesia")},
                 "eval": {"path": str(TIENDA / "eval.jsonl"), "max_rows": 12}},
        "train": {"max_steps": steps, "per_device_train_batch_size": batch, "max_length": max_length,
                  "eval_steps": eval_steps or max(1, steps // 2), "per_device_eval_batch_size": 12,
                  "lr_scheduler_type": "constant", "warmup_steps": 0, "seed": 0},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "search": {"n_trials": 100, "seed": 0, "sampler": "random", "pruner": "median",
                   "pruner_args": {"n_startup_trials": 0, "n_warmup_steps": 0},
                   "space": {"train.learning_rate": {"float": [1e-4, 2e-3], "log": True}}},
        "tracking": {"mlflow_uri": f"sqlite:///{folder}/mlflow.db", "optuna_storage": f"sqlite:///{folder}/optuna.db",
                     "artifact_root": str(folder / "artifacts"), "checkpoint_dir": str(folder / "checkpoints")},
    }


class Bench:
    """A loaded spec, its prepared data, an MLflow store and an Optuna study: run trials on demand."""

    def __init__(self, model: str, steps: int, folder: Path | None = None, **kw):
        import optuna
        import yaml

        from afina import spec as spec_mod
        from afina import sweep, tracking

        self.folder = Path(folder or tempfile.mkdtemp(prefix="afina-bench-"))
        path = self.folder / "spec.yaml"
        path.write_text(yaml.safe_dump(spec_dict(model, steps, self.folder, **kw)), encoding="utf-8")
        self.spec = spec_mod.load(path)
        self.prepared, self.model_dir, _ = sweep.validate(self.spec)
        sweep._quiet()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.study = sweep.open_study(self.spec, create=True)
        c = tracking.client(self.spec.tracking.mlflow_uri)
        exp = tracking.experiment(c, "bench", self.spec.tracking.artifact_root, self.spec.tracking.mlflow_uri)
        parent = tracking.parent_run(c, exp, self.study, self.spec, str(path))
        self.ctx = {"client": c, "experiment_id": exp, "parent_id": parent, "model_dir": self.model_dir, "prompts": []}

    def afina(self, lr: float = 1e-3, reuse: bool = True, prompts: list | None = None) -> dict:
        """One afina trial with fixed params; returns wall time and what the trial logged."""
        from afina import trial

        self.study.enqueue_trial({"train.learning_rate": lr})
        t = self.study.ask()
        ctx = {**self.ctx, "reuse": reuse, "prompts": prompts or []}
        t0 = time.perf_counter()
        value = trial.run(self.spec, self.prepared, t, ctx)
        wall = time.perf_counter() - t0
        self.study.tell(t, value)
        m = self.ctx["client"].get_run(t.user_attrs["mlflow_run_id"]).data.metrics
        return {"wall_s": wall, "eval_loss": m["best_eval_loss"], "train_s": m["train_runtime"], "tokens": m["train_tokens"],
                "tokens_per_s": m["train_tokens"] / m["train_runtime"]}

    def bare(self, lr: float = 1e-3) -> dict:
        """The hand-written TRL script: from_pretrained, raw chat rows, SFTTrainer(...).train()."""
        import torch
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
        from trl import SFTConfig, SFTTrainer

        from afina import data, space

        t0 = time.perf_counter()
        train_kw, lora_kw, choices = space.apply(self.spec, {"train.learning_rate": lr})
        rows, _ = data.mix(self.prepared, choices, self.spec.data.seed)
        every = train_kw.pop("eval_steps")
        tok = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir)
        out_dir = tempfile.mkdtemp(dir=self.folder)
        args = SFTConfig(output_dir=out_dir, report_to="none", eval_strategy="steps", eval_steps=every, save_strategy="steps",
                         save_steps=every, load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False,
                         save_total_limit=1, disable_tqdm=True, include_num_input_tokens_seen="all", logging_steps=1,
                         **({} if torch.cuda.is_available() else {"use_cpu": True, "bf16": False}), **train_kw)
        trainer = SFTTrainer(model=model, args=args, train_dataset=data.to_dataset(rows), eval_dataset=data.to_dataset(self.prepared.eval),
                             processing_class=tok, peft_config=LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", **lora_kw))
        trainer.remove_callback(PrinterCallback)  # afina prints nothing per step either
        out = trainer.train()
        trainer.save_model(out_dir + "/best")
        wall = time.perf_counter() - t0
        tokens = float(trainer.state.num_input_tokens_seen)
        runtime = out.metrics["train_runtime"]
        return {"wall_s": wall, "eval_loss": trainer.state.best_metric, "train_s": runtime, "tokens": tokens, "tokens_per_s": tokens / runtime}


def interleave(pairs: int, a, b, warmup: bool = True) -> tuple[list[dict], list[dict]]:
    """A, B, A, B, ... in one process (so machine noise hits both); an unrecorded warm-up pair first."""
    if warmup:
        a(), b()
    ra, rb = [], []
    for _ in range(pairs):
        ra.append(a())
        rb.append(b())
    return ra, rb


def median_ratio(ra: list[dict], rb: list[dict], key: str) -> float:
    return statistics.median(x[key] / y[key] for x, y in zip(ra, rb, strict=True))


def med(rs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rs)
