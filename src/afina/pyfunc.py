"""A promoted model as MLflow sees it: a self-contained folder plus a small pyfunc wrapper.

The folder holds safetensors weights (full, merged, or a LoRA adapter), the tokenizer with its
chat template, and `afina-model.json` naming the base model reference and its hash. An adapter's
base is resolved offline through `afina.models.resolve` at load time, so no machine path is baked
into a registered version. MLflow's transformers flavor is not used: with the installed
transformers/PEFT it cannot infer requirements (it imports torchvision), and its PEFT variant
points at the base model's local path.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from afina import models
from afina.errors import UserError

META = "afina-model.json"
ARTIFACT = "model"  # pyfunc artifact key, and the folder name under the MLmodel's artifacts/
DEFAULTS = {"max_new_tokens": 128, "temperature": 0.0, "system": ""}


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

    if tracking_uri:
        from afina import tracking

        check_store(tracking_uri)
        mlflow.set_tracking_uri(tracking.absolute(tracking_uri))
        mlflow.set_registry_uri(tracking.absolute(tracking_uri))
    sub = f"/artifacts/{ARTIFACT}" if uri.startswith("models:/") else ""
    with tempfile.TemporaryDirectory(prefix="afina-model-") as tmp:
        try:
            path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri.rstrip("/") + sub, dst_path=tmp))
        except (MlflowException, OSError) as e:
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise UserError(
                f"{uri}: not found in the registry ({first}); check the name, version or alias (`afina rollback` and the MLflow UI list them)"
            ) from None
        if not _is_model_dir(path):
            raise UserError(f"{uri}: the artifact is not an afina model folder; register models with `afina promote`")
        yield path


def check_store(uri: str) -> None:
    """A missing SQLite store is a typo, not a request to create an empty one; a dead one is one line."""
    from afina import tracking

    tracking.check_store(uri, "--tracking-uri")


def quiet() -> None:
    """No download bars or library chatter around one-shot commands."""
    import logging

    import transformers

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)


class AfinaModel(mlflow.pyfunc.PythonModel):
    """Prompts in, answers out: the chat template is applied, decoding is greedy by default."""

    # The explicit signature() carries params (max_new_tokens, ...), which a type-hinted predict would
    # drop; this tells MLflow not to wrap predict for type hints (and not to warn about their absence).
    _skip_type_hint_validation = True

    def load_context(self, context):
        self.model, self.tok = load(Path(context.artifacts[ARTIFACT]))

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
        from afina import generate

        p = {**DEFAULTS, **(params or {})}
        return generate.generate(
            self.model, self.tok, _prompts(model_input), int(p["max_new_tokens"]), float(p["temperature"]), p["system"] or None
        )


def _prompts(model_input) -> list[str]:
    """A list of strings, a str, {"prompt": ...}, or a DataFrame (what `mlflow models serve` passes)."""
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        value = model_input.get("prompt", next(iter(model_input.values()), []))
        return [value] if isinstance(value, str) else [str(v) for v in value]
    if hasattr(model_input, "columns"):  # pandas
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(v) for v in model_input[column].tolist()]
    return [str(v) for v in model_input]


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema(
            [
                ParamSpec("max_new_tokens", "long", DEFAULTS["max_new_tokens"]),
                ParamSpec("temperature", "double", DEFAULTS["temperature"]),
                ParamSpec("system", "string", DEFAULTS["system"]),
            ]
        ),
    )


def requirements() -> list[str]:
    """Pinned to what trained it; `--env-manager local` ignores them, a fresh env installs them (plus afina)."""
    from importlib.metadata import version

    return [f"{p}=={version(p)}" for p in ("mlflow", "torch", "transformers", "peft", "safetensors", "pyyaml")]


def log(model_dir: Path, run_id: str, experiment_id: str):
    """Log the folder as an MLflow model attached to the trial's run; returns ModelInfo."""
    import mlflow
    from mlflow.models import Model

    mlflow.set_experiment(experiment_id=experiment_id)  # LoggedModels live in the fluent experiment
    with warnings.catch_warnings():  # "no input example": the signature says it all, and an example would load the model again
        warnings.simplefilter("ignore")
        info = Model.log(
            None,
            mlflow.pyfunc,
            name="model",
            run_id=run_id,
            python_model=AfinaModel(),
            artifacts={ARTIFACT: str(model_dir)},
            signature=signature(),
            pip_requirements=requirements(),
        )
    mlflow.flush_async_logging()  # Model.log copies metrics asynchronously; a CLI exits right after
    return info


def answer(uri: str, source: str, tracking_uri: str, max_new_tokens: int, temperature: float, system: str | None) -> None:
    """`afina generate`: stream one answer, or print one JSON line per prompt of a JSONL file."""
    from transformers import TextStreamer

    from afina import data, generate

    quiet()
    rows = None
    if source.endswith(".jsonl") and Path(source).is_file():
        recs = data.read(Path(source))
        for i, rec in enumerate(recs, 1):
            if not isinstance(rec.get("prompt"), str):
                raise UserError(f"{source}:{i}: each row needs a text 'prompt'")
        rows = [r["prompt"] for r in recs]
    elif source.endswith(".jsonl"):
        raise UserError(f"{source}: no such file; pass a prompt or an existing .jsonl of {{prompt}} rows")
    with fetched(uri, tracking_uri) as model_dir:
        model, tok = load(model_dir)
    if rows is None:
        generate.generate(
            model,
            tok,
            [source],
            max_new_tokens,
            temperature,
            system,
            streamer=TextStreamer(tok, skip_prompt=True, skip_special_tokens=True),
        )
        return
    for prompt, out in zip(rows, generate.generate(model, tok, rows, max_new_tokens, temperature, system), strict=True):
        print(json.dumps({"prompt": prompt, "output": out}, ensure_ascii=False), flush=True)
