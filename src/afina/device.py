"""This machine's fastest correct training settings: SFTConfig defaults and the attention kernel."""

from __future__ import annotations

from typing import Any


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
