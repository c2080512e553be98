"""This machine's fastest correct training settings: SFTConfig defaults and the attention kernel."""

from __future__ import annotations

from typing import Any


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
