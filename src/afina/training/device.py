"""This machine's fastest correct training settings (SFTConfig defaults, the attention kernel), the check that a
worker given GPUs can use them, and what a trial that ran out of memory leaves behind."""

from __future__ import annotations

import os
from typing import Any

from afina import UserError

# Ray's logical GPUs on a machine without them (the fleet tests): the workers train on the CPU on purpose.
LOGICAL_GPUS = "AFINA_LOGICAL_GPUS"


def device_defaults(train_kw: dict | None = None) -> dict[str, Any]:
    """Fastest correct SFTConfig settings for this machine; the spec's train section (train_kw) overrides them.

    Everywhere: no activation (gradient) checkpointing, unless train_kw sets it under either name.
    TRL turns it on by default, which recomputes every forward pass (about a third more compute) to
    save activation memory that fine-tuning a small model does not need; a spec that runs out of
    memory sets `train.activation_checkpointing: true`.
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
        }
        if importlib.util.find_spec("liger_kernel") is not None:
            out["use_liger_kernel"] = True
    else:
        out = {"bf16": False, "fp16": False, "use_cpu": True}
    if not {"gradient_checkpointing", "activation_checkpointing"} & set(train_kw or {}):
        from transformers import TrainingArguments

        # transformers renamed the setting; the new name, where it exists, avoids its FutureWarning
        new = "activation_checkpointing" in TrainingArguments.__dataclass_fields__
        out["activation_checkpointing" if new else "gradient_checkpointing"] = False
    return out


def attention() -> str | None:
    """FlashAttention-2 when installed on a GPU (varlen, so padding-free is exact), else SDPA."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return None  # transformers' default (SDPA) is the fastest on CPU
    return "flash_attention_2" if importlib.util.find_spec("flash_attn") is not None else "sdpa"


def require_gpus(gpus: int) -> None:
    """A worker given GPUs trains on them, never on the CPU by accident: refuse when torch cannot see them."""
    if not gpus or os.environ.get(LOGICAL_GPUS) == "1":
        return
    import torch

    seen = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if seen < gpus:
        raise UserError(
            f"this worker was given {gpus} GPU(s) (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}) "
            f"but torch {torch.__version__} sees {seen}; install a CUDA build of torch (and check the driver with nvidia-smi), "
            "or set `resources: {gpus_per_trial: 0}` to train on CPUs"
        )


def out_of_memory(e: BaseException) -> str | None:
    """The reason a trial failed, when it ran out of memory (CUDA, or the host's allocator); None otherwise."""
    import torch

    text = str(e).strip()
    if not (
        isinstance(e, (MemoryError, torch.OutOfMemoryError))
        or (isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text))
    ):
        return None
    first = text.splitlines()[0][:200] if text else type(e).__name__
    return f"out of memory ({first}); lower per_device_train_batch_size or max_length, or give the trial more memory"


def release(e: BaseException) -> None:
    """Free what a failed trial held before the worker takes the next one. Its trainer, model, optimizer and
    activations live on in the frames of the exception's traceback for as long as the exception does (Optuna
    keeps it until the trial is told), and a CUDA cache keeps the freed blocks from other processes."""
    import gc
    import traceback

    import torch

    while e is not None:
        traceback.clear_frames(e.__traceback__)
        e = e.__cause__ or e.__context__
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
