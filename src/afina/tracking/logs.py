"""Quiet libraries: our own display and MLflow are the output, not download bars or chatter."""

from __future__ import annotations

import logging
import os
import warnings


def quiet(sweep: bool = False) -> None:
    """No download bars or library chatter (unless --verbose); a sweep also silences Optuna and per-trial warnings."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if os.environ.get("AFINA_VERBOSITY") == "verbose":  # `afina --verbose`: library warnings and logs stay on
        return
    # MLflow sets its own level when first imported (after this), so setLevel alone let its INFO lines
    # ("Creating initial MLflow database tables...") through; the one-time GGUF conversion uses a bare tqdm,
    # which reads TQDM_DISABLE when tqdm is first imported: before transformers.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("TQDM_DISABLE", "1")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if sweep:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
