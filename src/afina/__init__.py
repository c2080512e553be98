"""afina: iterative fine-tuning sweeps for small LLMs, tracked in MLflow, searched with Optuna."""

__version__ = "0.1.0"
