"""The `afina` command. Heavy imports live inside each command so `afina --help` is instant."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from afina.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Iterative fine-tuning sweeps for small LLMs: Optuna searches, TRL trains, MLflow remembers.")

SpecArg = Annotated[Path, typer.Argument(help="Experiment spec (YAML), e.g. experiments/quickstart.yaml")]
StorageOpt = Annotated[Optional[str], typer.Option("--storage", help="Optuna storage URL (overrides the spec and AFINA_OPTUNA_STORAGE)")]
TrackingOpt = Annotated[Optional[str], typer.Option("--tracking-uri", help="MLflow tracking URI (overrides the spec and AFINA_TRACKING_URI)")]


def _offline_defaults() -> None:
    # afina works offline and sends nothing home unless the user turns it back on.
    for key, value in {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
                       "DO_NOT_TRACK": "true", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error",
                       "MLFLOW_ENABLE_ASYNC_LOGGING": "true"}.items():
        os.environ.setdefault(key, value)


def _spec(path: Path, storage: str | None = None, tracking_uri: str | None = None):
    from afina import spec as spec_mod

    spec = spec_mod.load(path)
    spec.tracking.optuna_storage = storage or os.environ.get("AFINA_OPTUNA_STORAGE") or spec.tracking.optuna_storage
    spec.tracking.mlflow_uri = tracking_uri or os.environ.get("AFINA_TRACKING_URI") or spec.tracking.mlflow_uri
    return spec


def _console():
    from rich.console import Console

    return Console()


@app.command()
def sweep(spec: SpecArg, storage: StorageOpt = None, tracking_uri: TrackingOpt = None,
          n_trials: Annotated[Optional[int], typer.Option(help="Override search.n_trials (the study's total)")] = None,
          progress: Annotated[bool, typer.Option(help="Show the live progress display")] = True):
    """Run the spec's sweep, or resume it up to search.n_trials trials in total."""
    from afina import sweep as sweep_mod

    s = _spec(spec, storage, tracking_uri)
    if n_trials is not None:
        if n_trials < 1:
            raise UserError("--n-trials must be at least 1")
        s.search.n_trials = n_trials
    sweep_mod.run(s, str(spec), _console(), progress=progress)


@app.command()
def status(spec: SpecArg, storage: StorageOpt = None):
    """Leaderboard of the spec's study: state, objective, params, duration, MLflow run."""
    from afina import status as status_mod
    from afina import sweep as sweep_mod

    s = _spec(spec, storage)
    study = sweep_mod.open_study(s, create=False)
    _console().print(status_mod.table(study))


@app.command()
def ui(port: Annotated[int, typer.Option(help="Port to listen on")] = 5000,
       host: Annotated[str, typer.Option(help="Interface to bind; keep 127.0.0.1 unless a proxy guards it")] = "127.0.0.1",
       tracking_uri: TrackingOpt = None,
       artifact_root: Annotated[str, typer.Option(help="Artifact folder of a local store")] = "mlruns/artifacts"):
    """Open the MLflow UI on the project's store (mlruns/)."""
    import subprocess

    from afina import tracking

    uri = tracking_uri or os.environ.get("AFINA_TRACKING_URI") or "sqlite:///mlruns/mlflow.db"
    path = tracking.sqlite_path(uri)
    if path is not None and not path.is_file():
        raise UserError(f"no MLflow store at {path}; run `afina sweep` first or pass --tracking-uri")
    typer.echo(f"MLflow UI on http://{host}:{port} (store {tracking.redact(uri)}); Ctrl-C stops it")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if path is not None:
        cmd += ["--default-artifact-root", Path(artifact_root).resolve().as_uri()]
    raise typer.Exit(subprocess.call(cmd))


def main() -> None:
    import click

    _offline_defaults()
    try:
        app(standalone_mode=False)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2 if isinstance(e, click.UsageError) else e.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
