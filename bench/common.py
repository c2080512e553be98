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

for _k, _v in {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_ASYNC_LOGGING": "true",
}.items():
    os.environ.setdefault(_k, _v)


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}"


# Random-weight models with real architectures, for hardware where no pretrained weights are at hand
# (throughput does not depend on the weights' values). Tokenizer: SmolLM2's.
CONFIGS = {
    "smollm2-135m": None,  # SmolLM2-135M-Instruct's own config.json
    "0.7b": {
        "hidden_size": 1536,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 12,
        "num_key_value_heads": 4,
        "head_dim": 128,
    },
}


def model_ref(model: str) -> str:
    """`random:<name>` -> a cached folder of random weights; anything else is an afina model.ref."""
    if not model.startswith("random:"):
        return model
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from afina import models

    name = model.removeprefix("random:")
    target = models.cache_dir() / "models" / f"random-{name}"
    if (target / "config.json").is_file():
        return str(target)
    # SmolLM2's config and tokenizer; AFINA_BENCH_BASE names a folder with just those files
    # (config.json, tokenizer*) where the embedded weights are not installed.
    base = Path(os.environ.get("AFINA_BENCH_BASE") or models.resolve("smollm2-135m"))
    cfg = json.loads((base / "config.json").read_text())
    cfg.update(CONFIGS[name] or {})
    config = AutoConfig.for_model(
        **{k: v for k, v in cfg.items() if k not in ("architectures", "model_type")}, model_type=cfg["model_type"]
    )
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    m.save_pretrained(target)
    AutoTokenizer.from_pretrained(base).save_pretrained(target)
    return str(target)


def spec_dict(
    model: str,
    steps: int,
    folder: Path,
    batch: int = 8,
    max_length: int = 128,
    eval_steps: int | None = None,
    method: str = "lora",
    train: dict | None = None,
) -> dict:
    """Quickstart-shaped: the tienda slices, LoRA r=8 all-linear, batch 8, max_length 128."""
    return {
        "name": "bench",
        "model": {"ref": model_ref(model), "method": method},
        "data": {
            "slices": {n: {"path": str(TIENDA / f"{n}.jsonl")} for n in ("faq", "productos", "poesia")},
            "eval": {"path": str(TIENDA / "eval.jsonl"), "max_rows": 12},
        },
        "train": {
            "max_steps": steps,
            "per_device_train_batch_size": batch,
            "max_length": max_length,
            "eval_steps": eval_steps or max(1, steps // 2),
            "per_device_eval_batch_size": 12,
            "lr_scheduler_type": "constant",
            "warmup_steps": 0,
            "seed": 0,
            **(train or {}),
        },
        **({"lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0}} if method == "lora" else {}),
        "search": {
            "n_trials": 100,
            "seed": 0,
            "sampler": "random",
            "pruner": "median",
            "pruner_args": {"n_startup_trials": 0, "n_warmup_steps": 0},
            "space": {"train.learning_rate": {"float": [1e-4, 2e-3], "log": True}},
        },
        "tracking": {
            "mlflow_uri": f"sqlite:///{folder}/mlflow.db",
            "optuna_storage": f"sqlite:///{folder}/optuna.db",
            "artifact_root": str(folder / "artifacts"),
            "checkpoint_dir": str(folder / "checkpoints"),
        },
    }


class Bench:
    """A loaded spec, its prepared data, an MLflow store and an Optuna study: run trials on demand."""

    def __init__(self, model: str, steps: int, folder: Path | None = None, **kw):
        import optuna
        import yaml

        from afina import tracking
        from afina.commands import sweep
        from afina.search import study as study_mod
        from afina.spec import schema as spec_mod
        from afina.tracking import logs
        from afina.training.context import TrialContext

        self.folder = Path(folder or tempfile.mkdtemp(prefix="afina-bench-"))
        path = self.folder / "spec.yaml"
        path.write_text(yaml.safe_dump(spec_dict(model, steps, self.folder, **kw)), encoding="utf-8")
        self.spec = spec_mod.load(path)
        self.prepared, self.model_dir, _ = sweep.validate(self.spec)
        logs.quiet(sweep=True)
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        self.study = study_mod.open(self.spec, create=True)
        c = tracking.client(self.spec.tracking.mlflow_uri)
        exp = tracking.experiment(c, "bench", self.spec.tracking.artifact_root, self.spec.tracking.mlflow_uri)
        parent = tracking.parent_run(c, exp, self.study, self.spec, str(path))
        self.ctx = TrialContext(
            self.spec, self.prepared, self.model_dir, self.study.study_name, self.spec.search.directions, c, exp, parent
        )
        cfg = __import__("json").loads((Path(self.model_dir) / "config.json").read_text())
        self.params = _param_count(cfg)

    def afina(self, lr: float = 1e-3, reuse: bool = True, prompts: list | None = None) -> dict:
        """One afina trial with fixed params; returns wall time and what the trial logged."""
        import dataclasses

        from afina.training import trial

        self.study.enqueue_trial({"train.learning_rate": lr})
        t = self.study.ask()
        ctx = dataclasses.replace(self.ctx, reuse=reuse, prompts=prompts or [])
        _reset_gpu_peak()
        t0 = time.perf_counter()
        value = trial.run(ctx, t)
        wall = time.perf_counter() - t0
        self.study.tell(t, value)
        m = self.ctx.client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics
        return {
            "wall_s": wall,
            "eval_loss": m["best_eval_loss"],
            "train_s": m["train_runtime"],
            "tokens": m["train_tokens"],
            "tokens_per_s": m["train_tokens"] / m["train_runtime"],
            **_gpu_figures(self.params, m["train_tokens"] / m["train_runtime"], self.spec.model.method),
        }

    def bare(self, lr: float = 1e-3, same_defaults: bool = True) -> dict:
        """The hand-written TRL script: from_pretrained, rows prepared by TRL, SFTTrainer(...).train().

        same_defaults: the same device settings as afina (bf16/fp32, checkpointing, optimizer), so
        the difference is afina's own overhead; False: TRL's defaults, as a script would have them.
        """
        import torch
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
        from trl import SFTConfig, SFTTrainer

        from afina import data
        from afina.data import token_cache
        from afina.spec import space
        from afina.training import device

        _reset_gpu_peak()
        t0 = time.perf_counter()
        train_kw, lora_kw, choices = space.apply(self.spec, {"train.learning_rate": lr})
        rows, _ = data.mix(self.prepared, choices, self.spec.data.seed)
        every = train_kw.pop("eval_steps")
        train_kw.pop("padding_free", None)  # the plain script pads (TRL's own padding-free needs pre-cut rows)
        tok = AutoTokenizer.from_pretrained(self.model_dir)
        model = AutoModelForCausalLM.from_pretrained(self.model_dir)
        out_dir = tempfile.mkdtemp(dir=self.folder)
        args = SFTConfig(
            output_dir=out_dir,
            report_to="none",
            eval_strategy="steps",
            eval_steps=every,
            save_strategy="steps",
            save_steps=every,
            load_best_model_at_end=True,
            metric_for_best_model="eval_loss",
            greater_is_better=False,
            save_total_limit=1,
            disable_tqdm=True,
            include_num_input_tokens_seen="non_padding",
            logging_steps=1,
            **(device.device_defaults() if same_defaults else {} if torch.cuda.is_available() else {"use_cpu": True, "bf16": False}),
            **train_kw,
        )
        # The rows as TRL prepares them (answers as conversational prompt/completion, data/token_cache.py), from scratch.
        table = token_cache.tokenized(self.prepared, tok, "", args, Path(out_dir), reuse=False)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=token_cache.to_tokenized_dataset(rows, table),
            eval_dataset=token_cache.to_tokenized_dataset(self.prepared.eval, table),
            processing_class=tok,
            peft_config=LoraConfig(task_type="CAUSAL_LM", target_modules="all-linear", **lora_kw)
            if self.spec.model.method == "lora"
            else None,
        )
        trainer.remove_callback(PrinterCallback)  # afina prints nothing per step either
        out = trainer.train()
        trainer.save_model(out_dir + "/best")
        wall = time.perf_counter() - t0
        tokens = float(trainer.state.num_input_tokens_seen)
        runtime = out.metrics["train_runtime"]
        return {
            "wall_s": wall,
            "eval_loss": trainer.state.best_metric,
            "train_s": runtime,
            "tokens": tokens,
            "tokens_per_s": tokens / runtime,
            **_gpu_figures(self.params, tokens / runtime, self.spec.model.method),
        }


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


def _param_count(cfg: dict) -> int:
    """Parameters of a llama-shaped config (embedding counted once when tied), for MFU."""
    h, i, n, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    d = cfg.get("head_dim") or h // heads
    layer = h * d * heads * 2 + h * d * kv * 2 + 3 * h * i + 2 * h
    return n * layer + v * h * (1 if cfg.get("tie_word_embeddings", True) else 2) + h


PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense bf16 tensor-core FLOP/s, SXM datasheets


def _reset_gpu_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _gpu_figures(params: int, tokens_per_s: float, method: str) -> dict:
    """Peak GPU memory, and MFU = k*N*tokens/s / peak (k=6 full; 4 for LoRA: no weight gradients for the frozen base)."""
    import torch

    if not torch.cuda.is_available():
        return {}
    name = torch.cuda.get_device_name(0)
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    k = 6 if method == "full" else 4
    return {
        "gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "params": params,
        "mfu": k * params * tokens_per_s / peak if peak else None,
    }
