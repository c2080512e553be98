"""`afina export` and `--merge`: a plain Hugging Face folder that loads with AutoModelForCausalLM.

A LoRA adapter is merged into its base (`merge_and_unload`), so the result needs neither PEFT
nor afina: safetensors weights, config, tokenizer and chat template.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from afina import pyfunc
from afina.errors import UserError

KEEP = ("afina-spec.yaml",)  # lineage files copied along with the weights


def merged(model_dir: Path, out: Path, source: str | None = None) -> Path:
    """Write `model_dir` (adapter or full) to `out` as full safetensors weights; returns out."""
    meta = pyfunc.read_meta(model_dir)
    model, tok = pyfunc.load(model_dir, merge=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    for name in KEEP:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out / name)
    was = meta.get("format", "full")
    pyfunc.write_meta(
        out, {**meta, "format": "merged" if was in ("adapter", "merged") else "full", **({"source": source} if source else {})}
    )
    return out


def export(uri: str, out: Path, tracking_uri: str) -> Path:
    """models:/NAME@ALIAS (or /VERSION, or a folder) -> a new self-contained folder `out`."""
    pyfunc.quiet()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty folder; choose a new folder")
    with pyfunc.fetched(uri, tracking_uri) as model_dir:
        # Build beside the target and rename, so a failed export leaves no half-written folder.
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            merged(model_dir, tmp, source=uri)
            if out.exists():
                out.rmdir()
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out
