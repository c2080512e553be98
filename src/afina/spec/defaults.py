"""The project's stores when the spec and the environment name none (mlruns/ is git-ignored).

Light on purpose: `afina --help` reads them without importing the schema."""

MLFLOW_URI = "sqlite:///mlruns/mlflow.db"
OPTUNA_URI = "sqlite:///mlruns/optuna.db"
ARTIFACT_ROOT = "mlruns/artifacts"  # a local store's artifacts
