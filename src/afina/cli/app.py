"""The `afina` command. Heavy imports live inside each command so `afina --help` is instant."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from afina import UserError
from afina.cli import options
from afina.cli.options import JsonFlag, ModelUriArg, SpecArg, StorageOpt, TrackingOpt
from afina.spec.defaults import ARTIFACT_ROOT  # light: no pydantic, no MLflow

# rich_markup_mode=None: plain click help, so `afina --help` never imports rich (a third of its start-up)
app = typer.Typer(
    add_completion=True,  # --install-completion / --show-completion: adds only shellingham (~0.3 ms) to --help
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Iterative fine-tuning sweeps for small LLMs: Optuna searches, TRL trains, MLflow remembers.",
)


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
    workers: Annotated[
        int | None, typer.Option(min=1, help="Run N workers of the study, placed by Ray (a local cluster unless --ray)")
    ] = None,
    ray: Annotated[
        str | None, typer.Option("--ray", envvar="RAY_ADDRESS", help="Join this Ray cluster (needs --workers and shared stores)")
    ] = None,
    slurm: Annotated[bool, typer.Option("--slurm", help="Submit the --workers as a Slurm job array (submitit), not on Ray")] = False,
    slurm_args: Annotated[str | None, typer.Option(help="Slurm options for --slurm, e.g. 'partition=gpu,time=240'")] = None,
):
    """Run the spec's sweep, or resume it up to search.n_trials trials in total."""
    progress = progress and os.environ.get("AFINA_VERBOSITY") != "quiet"
    s = options.load_spec(spec, storage, tracking_uri)
    if n_trials is not None:
        if n_trials < 1:
            raise UserError("--n-trials must be at least 1")
        s.search.n_trials = n_trials
    if workers is None and (ray or slurm or slurm_args):
        raise UserError(f"{'--ray' if ray else '--slurm'} places workers: add --workers N (one worker per GPU, e.g. --workers 8)")
    if slurm_args and not slurm or slurm and ray:
        raise UserError("--slurm-args goes with --slurm, and --slurm (a job array) with no --ray (a Ray cluster): pick one engine")
    overrides = {"storage": storage, "tracking_uri": tracking_uri, "n_trials": n_trials}
    if slurm:  # submitit and Ray are imported only here: a one-process sweep never loads them
        from afina.cli import slurm_workers

        return slurm_workers.run(s, str(spec), options.console(), workers, slurm_args, overrides, progress=progress)
    if workers is not None:
        from afina.cli import ray_workers

        return ray_workers.run(s, str(spec), options.console(), workers, ray, overrides, progress=progress)
    from afina.commands import sweep as sweep_mod

    sweep_mod.run(s, str(spec), options.console(), progress=progress)


@app.command()
def status(spec: SpecArg, storage: StorageOpt = None, as_json: JsonFlag = False):
    """Leaderboard of the spec's study: state, objective, params, duration, MLflow run."""
    from afina.commands import status as status_mod

    status_mod.run(options.load_spec(spec, storage), options.console(), as_json)


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
    from afina.commands import compare as compare_mod

    compare_mod.run(options.load_spec(spec, storage, tracking_uri), options.console(), top, use_judge=judge, slices=slices)


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
    from afina.commands import ablate as ablate_mod

    ablate_mod.run(options.load_spec(spec, storage, tracking_uri), str(spec), options.console(), seeds, steps)


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
    from afina.commands import server as server_mod

    raise typer.Exit(server_mod.ui(options.mlflow_uri(tracking_uri), host, port, artifact_root, workers))


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
    from afina.commands import promote as promote_mod

    if not promote_mod.run(options.load_spec(spec, storage, tracking_uri), options.console(), trial, force=force, merge=merge):
        raise typer.Exit(1)


@app.command()
def refit(
    spec: SpecArg,
    storage: StorageOpt = None,
    tracking_uri: TrackingOpt = None,
    trial: Annotated[int | None, typer.Option("--trial", help="Refit this trial instead of the best COMPLETE one")] = None,
):
    """Train (or resume) the refit: the winner's configuration with the rest of budget.steps."""
    from afina.commands import refit as refit_mod

    refit_mod.run(options.load_spec(spec, storage, tracking_uri), options.console(), trial)


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
    from afina.commands import generate as generate_mod

    generate_mod.run(model, prompt, options.mlflow_uri(tracking_uri), max_new_tokens, temperature, system)


@app.command()
def export(
    model: ModelUriArg,
    out: Annotated[Path, typer.Option("--out", help="New folder for the Hugging Face model")],
    tracking_uri: TrackingOpt = None,
):
    """Write a self-contained Hugging Face folder (LoRA merged) that loads with AutoModelForCausalLM."""
    from afina.commands import export as export_mod

    path = export_mod.run(model, out, options.mlflow_uri(tracking_uri))
    typer.echo(f"exported {model} to {path} (AutoModelForCausalLM.from_pretrained({str(path)!r}))")


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name (the spec's promote.model_name or name)")],
    reason: Annotated[str, typer.Option(help="Why; recorded on both versions")] = "manual rollback",
    alias: Annotated[str, typer.Option(help="The alias to move back")] = "champion",
    tracking_uri: TrackingOpt = None,
):
    """Point @champion back at the previous champion (a swap: the demoted version becomes @previous)."""
    from afina.commands import rollback as rollback_mod

    rollback_mod.run(name, options.mlflow_uri(tracking_uri), alias, reason, options.console())


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
    from afina.commands import check as check_mod

    stdout = str(json_path) == "-"
    report = check_mod.run(options.load_spec(spec), options.console(stderr=stdout), None if stdout else json_path, markdown)
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
    from afina.commands import init as init_mod

    if init_mod.run(data_file, name, force, options.console(), model=model).errors:
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
    from afina.commands import server as server_mod

    server_mod.run(backend_store_uri, artifacts_destination, host, port, workers, auth)


@app.command()
def sync(spec: SpecArg, storage: StorageOpt = None, tracking_uri: TrackingOpt = None):
    """Send the MLflow records a sweep kept locally while the tracking server was unreachable."""
    from afina.commands import sync as sync_mod

    typer.echo(sync_mod.run(options.load_spec(spec, storage, tracking_uri)))


def main() -> None:
    """Every way out is an exit code: 0 done, 1 refused/all trials failed, 2 bad input (one `error:` line), 130 Ctrl-C.

    `afina` with no command prints the help on stdout and exits 2 (a usage error, so scripts notice)."""
    options.offline_defaults()
    try:
        code = app(prog_name="afina", standalone_mode=False)  # without standalone mode, typer.Exit(n) comes back as n
        if isinstance(code, int) and code:
            sys.exit(code)
    except SystemExit:
        raise
    except BaseException as e:  # options.exit_code maps the errors afina knows to exit codes; the rest propagate
        if (code := options.exit_code(e)) is None:
            raise
        sys.exit(code)


if __name__ == "__main__":
    main()
