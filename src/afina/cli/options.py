"""The command line's plumbing: the arguments and options commands share, the spec they load, and the exit
code (and one `error:` line) for whatever escapes a command. As light as cli/app.py: heavy imports wait for a command."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from afina import RunFailed, UserError
from afina.spec.defaults import MLFLOW_URI  # light: no pydantic, no MLflow

SpecArg = Annotated[Path, typer.Argument(help="Experiment spec (YAML), e.g. experiments/quickstart.yaml")]
# Precedence: the flag, then AFINA_*, then MLflow's own variable, then the spec (click reads the variables in this order).
StorageOpt = Annotated[
    str | None,
    typer.Option("--storage", envvar="AFINA_OPTUNA_STORAGE", help="Optuna storage URL (default: the spec's tracking.optuna_storage)"),
]
TrackingOpt = Annotated[
    str | None,
    typer.Option(
        "--tracking-uri",
        envvar=["AFINA_TRACKING_URI", "MLFLOW_TRACKING_URI"],
        help="MLflow tracking URI (default: the spec's tracking.mlflow_uri, else sqlite:///mlruns/mlflow.db)",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of the table (for scripts and CI)")]
ModelUriArg = Annotated[str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION or a model folder")]


def offline_defaults() -> None:
    # afina works offline and sends nothing home unless the user turns it back on.
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_VERBOSITY": "error",
        "MLFLOW_ENABLE_ASYNC_LOGGING": "true",
    }.items():
        os.environ.setdefault(key, value)


def load_spec(path: Path, storage: str | None = None, tracking_uri: str | None = None):
    """The spec at `path`, with the stores its command's --storage / --tracking-uri (or their variables) name."""
    from afina.spec import schema as spec_mod

    spec = spec_mod.load(path)
    spec.tracking.optuna_storage = storage or spec.tracking.optuna_storage  # the options read their variables
    spec.tracking.mlflow_uri = tracking_uri or spec.tracking.mlflow_uri
    return spec


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def mlflow_uri(uri: str | None) -> str:
    """Commands without a spec: the flag (or its variables), else the project's default store."""
    return uri or MLFLOW_URI


def _cli_errors() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """(usage errors, exits, aborts) of the click that typer runs on. typer >= 0.2x bundles its own copy
    (`typer._click`), whose errors are not click's; older typer uses click itself. Catch both."""
    import importlib

    usage, exits, aborts = [], [typer.Exit], [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        usage.append(mod.ClickException)
        exits += [getattr(mod, "Exit", typer.Exit)]
        aborts += [getattr(mod, "Abort", typer.Abort)]
    return tuple(usage), tuple(exits), tuple(aborts)


def _usage_line(e: Exception) -> str:
    """typer's own message, on one line, plus where to read the command's usage."""
    ctx = getattr(e, "ctx", None)
    path = getattr(ctx, "command_path", None) or "afina"
    if type(e).__name__ == "NoArgsIsHelpError":  # `afina` alone: the help was shown above
        return f"no command given; pick one from the list above, then run `{path} COMMAND --help`"
    msg = " ".join((e.format_message() if hasattr(e, "format_message") else str(e)).split())
    msg = msg + " Run" if msg.endswith("?") else msg.rstrip(".") + "; run"
    return f"{msg} `{path} --help`" if path != "afina" else f"{msg} `afina --help` (or `afina COMMAND --help`)"


def exit_code(e: BaseException) -> int | None:
    """The exit code for an exception that escaped a command, after printing its one line; None: not ours, re-raise it."""
    if isinstance(e, (UserError, RunFailed)):
        from afina.tracking import redact  # the last line of defence: no message shows a password

        print(f"error: {redact(' '.join(str(e).split()))}", file=sys.stderr)
        return 1 if isinstance(e, RunFailed) else 2
    if isinstance(e, KeyboardInterrupt):
        print("interrupted", file=sys.stderr)
        return 130
    usage, exits, aborts = _cli_errors()  # typer/click's own classes, resolved only when something escaped
    if isinstance(e, exits):
        return e.exit_code
    if isinstance(e, aborts):
        print("interrupted", file=sys.stderr)
        return 130
    if not isinstance(e, usage):
        return None
    if type(e).__name__ == "NoArgsIsHelpError":
        print(e.format_message())
    print(f"error: {_usage_line(e)}", file=sys.stderr)
    return 2 if e.exit_code in (1, 2) else e.exit_code
