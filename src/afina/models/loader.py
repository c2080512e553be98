"""A model folder in, (model, tokenizer) out: afina's model folders, registry fetches and merges.

A folder holds safetensors weights (full, merged, or a LoRA adapter), the tokenizer with its chat
template, and `afina-model.json` naming the base model reference and its hash. An adapter's base is
resolved offline through `afina.models.resolve` at load time, so no machine path is baked into a
registered version.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from afina import UserError, models, tracking
from afina.tracking import stores

if TYPE_CHECKING:
    from afina.spec.schema import Spec

META = "afina-model.json"
ARTIFACT = "model"  # pyfunc artifact key, and the folder name under the MLmodel's artifacts/
KEEP = ("afina-spec.yaml",)  # lineage files copied along with the weights


def read_meta(model_dir: Path) -> dict[str, Any]:
    path = model_dir / META
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    # A plain HF folder (e.g. an export or someone's own model): full weights, no lineage.
    if (model_dir / "adapter_config.json").is_file():
        raise UserError(f"{model_dir}: a LoRA adapter without {META} does not say its base model; export it with `afina export`")
    return {"format": "full"}


def write_meta(model_dir: Path, meta: dict[str, Any]) -> None:
    (model_dir / META).write_text(json.dumps(meta, indent=2, sort_keys=True), encoding="utf-8")


def load(model_dir: Path, merge: bool = False):
    """(model, tokenizer) from a model folder; weights from safetensors only, never pickles."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # also when MLflow loads us outside the CLI
    meta = read_meta(model_dir)
    trust = bool(meta.get("trust_remote_code", False))
    if meta["format"] == "adapter":
        from peft import PeftModel

        if not (model_dir / "adapter_model.safetensors").is_file():
            raise UserError(f"{model_dir}: adapter_model.safetensors is missing; afina loads adapters from safetensors only")
        base_dir = models.resolve(meta["base"])
        if meta.get("base_sha256") and models.fingerprint(base_dir) != meta["base_sha256"]:
            warnings.warn(f"base model {meta['base']!r} differs from the one this adapter was trained on (sha256 mismatch)", stacklevel=2)
        base = models.load_model(base_dir, trust, dtype="float32")
        with warnings.catch_warnings():  # PEFT trips a transformers deprecation warning on load
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(base, str(model_dir))
        if merge:
            model = model.merge_and_unload()
    else:
        if not any(model_dir.glob("*.safetensors")):
            raise UserError(f"{model_dir}: no .safetensors weights; afina loads weights from safetensors only")
        model = models.load_model(model_dir, trust, dtype="float32")
    import torch

    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    return model, models.load_tokenizer(model_dir, trust)


def _is_model_dir(p: Path) -> bool:
    return (p / META).is_file() or (p / "config.json").is_file() or (p / "adapter_config.json").is_file()


def trained_on(ckpt: Path, spec: Spec) -> tuple[str, bool]:
    """(model.ref, trust_remote_code) a trial's checkpoint was trained from: its own afina-spec.yaml,
    not the current spec, whose model.ref may have changed since the sweep."""
    path = ckpt / "afina-spec.yaml"
    model = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("model") or {} if path.is_file() else {}
    return model.get("ref", spec.model.ref), bool(model.get("trust_remote_code", spec.model.trust_remote_code))


@contextlib.contextmanager
def fetched(uri: str, tracking_uri: str | None = None) -> Iterator[Path]:
    """The model folder behind models:/NAME@ALIAS, models:/NAME/VERSION, runs:/... or a local path.

    Registry downloads go to a temporary folder that is removed afterwards.
    """
    local = Path(uri).expanduser()
    if not uri.startswith(("models:/", "runs:/")):
        if _is_model_dir(local):
            yield local
        elif (local / "MLmodel").is_file() and _is_model_dir(local / "artifacts" / ARTIFACT):
            yield local / "artifacts" / ARTIFACT
        else:
            raise UserError(f"{uri}: not a model folder nor a models:/NAME@ALIAS or models:/NAME/VERSION URI")
        return
    import mlflow
    from mlflow.exceptions import MlflowException

    from afina.tracking import artifacts

    artifacts.register()  # a relocatable store's `mlflow-artifacts:/` files live beside it
    if tracking_uri:
        stores.require_mlflow(tracking_uri)
        mlflow.set_tracking_uri(tracking.absolute(tracking_uri))
        mlflow.set_registry_uri(tracking.absolute(tracking_uri))
    sub = f"/artifacts/{ARTIFACT}" if uri.startswith("models:/") else ""
    with tempfile.TemporaryDirectory(prefix="afina-model-") as tmp:
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri.rstrip("/") + sub, dst_path=tmp))
        except (MlflowException, OSError) as e:
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise UserError(
                f"{uri}: not found in the registry ({first}); "
                "check the name, version or alias (`afina rollback` and the MLflow UI list them)"
            ) from None
        if not _is_model_dir(path):
            raise UserError(f"{uri}: the artifact is not an afina model folder; register models with `afina promote`")
        yield path


def merged(model_dir: Path, out: Path, source: str | None = None) -> Path:
    """Write `model_dir` (adapter or full) to `out` as full safetensors weights; returns out."""
    meta = read_meta(model_dir)
    model, tok = load(model_dir, merge=True)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    for name in KEEP:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out / name)
    was = meta.get("format", "full")
    write_meta(out, {**meta, "format": "merged" if was in ("adapter", "merged") else "full", **({"source": source} if source else {})})
    return out
