"""`afina export` and `--merge`: a plain Hugging Face folder that loads with AutoModelForCausalLM.

A LoRA adapter is merged into its base (`merge_and_unload`), so the result needs neither PEFT
nor afina: safetensors weights, config, tokenizer and chat template.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from afina import UserError
from afina.models import loader
from afina.tracking import logs


def run(uri: str, out: Path, tracking_uri: str) -> Path:
    """models:/NAME@ALIAS (or /VERSION, or a folder) -> a new self-contained folder `out`."""
    logs.quiet()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; choose a new folder")
    with loader.fetched(uri, tracking_uri) as model_dir:
        # Build beside the target and rename, so a failed export leaves no half-written folder.
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            loader.merged(model_dir, tmp, source=uri)
            if out.exists():
                out.rmdir()
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
