"""A promoted model as MLflow sees it: a self-contained model folder (models/loader.py) plus a small pyfunc
wrapper. MLflow's transformers flavor is not used: with the installed
transformers/PEFT it cannot infer requirements (it imports torchvision), and its PEFT variant
points at the base model's local path.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from afina.evaluation import textgen
from afina.models.loader import ARTIFACT, load

DEFAULTS = {"max_new_tokens": 128, "temperature": 0.0, "system": ""}


class AfinaModel(mlflow.pyfunc.PythonModel):
    """Prompts in, answers out: the chat template is applied, decoding is greedy by default."""

    # The explicit signature() carries params (max_new_tokens, ...), which a type-hinted predict would
    # drop; this tells MLflow not to wrap predict for type hints (and not to warn about their absence).
    _skip_type_hint_validation = True

    def load_context(self, context):
        self.model, self.tok = load(Path(context.artifacts[ARTIFACT]))

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> list[str]:
        p = {**DEFAULTS, **(params or {})}
        return textgen.generate(
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
