"""The `afina` command. Heavy imports live inside each command so `afina --help` is instant."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from afina.errors import RunFailed, UserError
from afina.tracking import ARTIFACT_ROOT, MLFLOW_URI  # light: no MLflow import

# rich_markup_mode=None: plain click help, so `afina --help` never imports rich (a third of its start-up)
app = typer.Typer(
    add_completion=True,  # --install-completion / --show-completion: adds only shellingham (~0.3 ms) to --help
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Iterative fine-tuning sweeps for small LLMs: Optuna searches, TRL trains, MLflow remembers.",
)

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


def _offline_defaults() -> None:
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


def _spec(path: Path, storage: str | None = None, tracking_uri: str | None = None):
    from afina import spec as spec_mod

    spec = spec_mod.load(path)
    spec.tracking.optuna_storage = storage or spec.tracking.optuna_storage  # the options read their variables
    spec.tracking.mlflow_uri = tracking_uri or spec.tracking.mlflow_uri
    return spec


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


@app.callback()
def _options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show warnings and logs of transformers, TRL, PEFT, MLflow, Optuna")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display; only results and errors")] = False,
):
    if verbose and quiet:
        raise UserError("--verbose and --quiet exclude each other; pick one")
    os.environ["AFINA_VERBOSITY"] = "verbose" if verbose else "quiet" if quiet else "normal"  # worker ranks inherit it
    if verbose:
        import warnings

        os.environ["TRANSFORMERS_VERBOSITY"] = "warning"  # read when transformers is first imported, after this
        warnings.simplefilter("default")  # each warning once per place, deprecations included


@app.command()
def sweep(
    spec: SpecArg,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    n_trials: Annotated[int | None, typer.Option(help="Override search.n_trials (the study's total)")] = None,
    progress: Annotated[bool, typer.Option(help="Show the live progress display")] = True,
):
    """Run the spec's sweep, or resume it up to search.n_trials trials in total."""
    from afina import sweep as sweep_mod

    progress = progress and os.environ.get("AFINA_VERBOSITY") != "quiet"
    s = _spec(spec, storage, tracking_uri)
    if n_trials is not None:
        if n_trials < 1:
            raise UserError("--n-trials must be at least 1")
        s.search.n_trials = n_trials
    sweep_mod.run(s, str(spec), _console(), progress=progress)


@app.command()
def status(spec: SpecArg, storage: StorageOpt = None, as_json: JsonFlag = False):
    """Leaderboard of the spec's study: state, objective, params, duration, MLflow run."""
    from afina import status as status_mod

    status_mod.run(_spec(spec, storage), _console(), as_json)


@app.command()
def compare(
    spec: SpecArg,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    top: Annotated[int, typer.Option("--top", help="How many of the best completed trials")] = 3,
    judge: Annotated[bool, typer.Option("--judge", help="Also ask evaluate.judge for head-to-head verdicts vs the base")] = False,
    slices: Annotated[
        bool, typer.Option("--slices", help="Base vs the best configuration vs it with each slice toggled (needs `afina ablate`)")
    ] = False,
):
    """The same prompts answered by the base model, the top-K trials and @champion, side by side."""
    from afina import compare as compare_mod

    compare_mod.run(_spec(spec, storage, tracking_uri), _console(), top, use_judge=judge, slices=slices)


@app.command()
def ablate(
    spec: SpecArg,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    seeds: Annotated[
        int | None, typer.Option(help="Paired training seeds per configuration (default: search.ablate.seeds, else 3)")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps per run (default: search.ablate.steps, else the best trial's)")] = None,
):
    """Retrain the best trial's configuration with each searched slice toggled; say which slice helps or hurts."""
    from afina import ablate as ablate_mod

    ablate_mod.run(_spec(spec, storage, tracking_uri), str(spec), _console(), seeds, steps)


@app.command()
def ui(
    port: Annotated[int, typer.Option(help="Port to listen on")] = 5000,
    host: Annotated[str, typer.Option(help="Interface to bind; keep 127.0.0.1 unless a proxy guards it")] = "127.0.0.1",
    tracking_uri: TrackingOpt = None,
    artifact_root: Annotated[
        str | None, typer.Option(help=f"Artifact folder of a local store (default: artifacts/ beside it, {ARTIFACT_ROOT})")
    ] = None,
    workers: Annotated[int, typer.Option(help="Server worker processes")] = 1,
):
    """Open the MLflow UI on the project's store (mlruns/) and print each sweep's runs-table link."""
    from afina import server as server_mod

    raise typer.Exit(server_mod.ui(_tracking_uri(tracking_uri), host, port, artifact_root, workers))


ModelUriArg = Annotated[str, typer.Argument(help="models:/NAME@ALIAS, models:/NAME/VERSION or a model folder")]


def _tracking_uri(uri: str | None) -> str:
    return uri or MLFLOW_URI


@app.command()
def promote(
    spec: SpecArg,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    trial: Annotated[int | None, typer.Option("--trial", help="Promote this trial instead of the best COMPLETE one")] = None,
    merge: Annotated[bool, typer.Option(help="Merge the LoRA adapter into the base weights before registering")] = False,
    force: Annotated[bool, typer.Option(help="Move the alias even if the candidate does not beat the champion")] = False,
):
    """Register the best trial and move @champion if it beats the current one. Exit 1 when the gate refuses."""
    from afina import promote as promote_mod

    if not promote_mod.run(_spec(spec, storage, tracking_uri), _console(), trial, force=force, merge=merge):
        raise typer.Exit(1)


@app.command()
def refit(
    spec: SpecArg,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    trial: Annotated[int | None, typer.Option("--trial", help="Refit this trial instead of the best COMPLETE one")] = None,
):
    """Train (or resume) the refit: the winner's configuration with the rest of budget.steps."""
    from afina import refit as refit_mod

    refit_mod.run(_spec(spec, storage, tracking_uri), _console(), trial)


@app.command()
def generate(
    model: ModelUriArg,
    prompt: Annotated[str, typer.Argument(help="A prompt, or a .jsonl file of {prompt} rows (one JSON answer per line)")],
    max_new_tokens: Annotated[int, typer.Option(min=1)] = 128,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 is greedy")] = 0.0,
    system: Annotated[str | None, typer.Option(help="System prompt")] = None,
    tracking_uri: TrackingOpt = None,
):
    """Answer a prompt (streamed) or a JSONL of prompts with a registered or exported model."""
    from afina import generate as generate_mod

    generate_mod.run(model, prompt, _tracking_uri(tracking_uri), max_new_tokens, temperature, system)


@app.command()
def export(
    model: ModelUriArg,
    out: Annotated[Path, typer.Option("--out", help="New folder for the Hugging Face model")],
    tracking_uri: TrackingOpt = None,
):
    """Write a self-contained Hugging Face folder (LoRA merged) that loads with AutoModelForCausalLM."""
    from afina import export as export_mod

    path = export_mod.export(model, out, _tracking_uri(tracking_uri))
    typer.echo(f"exported {model} to {path} (AutoModelForCausalLM.from_pretrained({str(path)!r}))")


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name (the spec's promote.model_name or name)")],
    reason: Annotated[str, typer.Option(help="Why; recorded on both versions")] = "manual rollback",
    alias: Annotated[str, typer.Option(help="The alias to move back")] = "champion",
    tracking_uri: TrackingOpt = None,
):
    """Point @champion back at the previous champion (a swap: the demoted version becomes @previous)."""
    from afina import rollback as rollback_mod

    rollback_mod.run(name, _tracking_uri(tracking_uri), alias, reason, _console())


@app.command()
def check(
    spec: SpecArg,
    json_path: Annotated[
        Path | None,
        typer.Option("--json", help="Also write the report as JSON to this file; `-` prints it on stdout (the table goes to stderr)"),
    ] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="Also write the report as markdown here")] = None,
):
    """Check the spec's data before training: schema, duplicates, leakage, lengths, slices. Exit 2 on errors."""
    from afina import check as check_mod

    stdout = str(json_path) == "-"
    report = check_mod.run(_spec(spec), _console(stderr=stdout), None if stdout else json_path, markdown)
    if stdout:
        typer.echo(report.to_json())
    if report.errors:
        raise typer.Exit(2)


@app.command()
def init(
    data_file: Annotated[Path, typer.Argument(help="Your examples: .jsonl, .json, .csv, .parquet or a save_to_disk folder")],
    name: Annotated[str | None, typer.Option(help="Experiment name (default: the file's name)")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing experiments/NAME.yaml")] = False,
    model: Annotated[str, typer.Option(help="model.ref of the spec: embedded name, Hugging Face id or folder")] = "smollm2-135m",
):
    """Write experiments/NAME.yaml for a data file (format, slices, eval split, search space), then check it."""
    from afina import init as init_mod

    if init_mod.init(data_file, name, force, _console(), model=model).errors:
        raise typer.Exit(2)


@app.command()
def server(
    backend_store_uri: Annotated[str, typer.Option(help="Where runs live: postgresql://user:pass@host:5432/db")],
    artifacts_destination: Annotated[
        str, typer.Option(help="Local folder or s3://bucket/prefix the server stores artifacts in")
    ] = "mlartifacts",
    host: Annotated[str, typer.Option(help="Interface to bind; keep 127.0.0.1 unless --auth and a TLS proxy guard it")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 5000,
    workers: Annotated[int, typer.Option(help="Server worker processes")] = 4,
    auth: Annotated[bool, typer.Option(help="MLflow's basic-auth app: users and permissions (needs MLFLOW_AUTH_ADMIN_PASSWORD)")] = False,
):
    """Run the MLflow tracking server that many `afina sweep` workers share (PostgreSQL runs, served artifacts)."""
    from afina import server as server_mod

    server_mod.run(backend_store_uri, artifacts_destination, host, port, workers, auth)


@app.command()
def sync(spec: SpecArg, storage: StorageOpt = None, tracking_uri: TrackingOpt = None):
    """Send the MLflow records a sweep kept locally while the tracking server was unreachable."""
    from afina import sync as sync_mod

    typer.echo(sync_mod.run(_spec(spec, storage, tracking_uri)))


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


def main() -> None:
    """Every way out is an exit code: 0 done, 1 refused/all trials failed, 2 bad input (one `error:` line), 130 Ctrl-C.

    `afina` with no command prints the help on stdout and exits 2 (a usage error, so scripts notice)."""
    _offline_defaults()
    try:
        code = app(prog_name="afina", standalone_mode=False)  # without standalone mode, typer.Exit(n) comes back as n
        if isinstance(code, int) and code:
            sys.exit(code)
    except (UserError, RunFailed) as e:
        from afina.tracking import redact  # the last line of defence: no message shows a password

        print(f"error: {redact(' '.join(str(e).split()))}", file=sys.stderr)
        sys.exit(1 if isinstance(e, RunFailed) else 2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except BaseException as e:  # typer/click's own classes, resolved only when something escaped
        if isinstance(e, SystemExit):
            raise
        usage, exits, aborts = _cli_errors()
        if isinstance(e, exits):
            sys.exit(e.exit_code)
        if isinstance(e, aborts):
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        if not isinstance(e, usage):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":
            print(e.format_message())
        print(f"error: {_usage_line(e)}", file=sys.stderr)
        sys.exit(2 if e.exit_code in (1, 2) else e.exit_code)


if __name__ == "__main__":
    main()
