"""`afina server` and `afina ui`: the MLflow tracking server that many workers share, and the UI on a local store.

Runs are kept in PostgreSQL (or MySQL); artifacts are served by the server itself from a local
folder or an S3-compatible bucket, so workers need no bucket credentials. It binds 127.0.0.1
unless `--host` says otherwise; `--auth` turns on MLflow's basic-auth app.
"""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from afina import UserError, tracking
from afina.reporting import run_descriptions
from afina.tracking import artifacts, stores

REMOTE_ARTIFACTS = ("s3", "gs", "wasbs", "abfss", "hdfs", "sftp", "ftp")


def command(dest: str, host: str, port: int, workers: int, auth: bool) -> list[str]:
    """The `mlflow server` command line. The backend store URI is not on it: it may hold a password, and
    any user on the machine can read a process's arguments (`ps`). It goes in MLFLOW_BACKEND_STORE_URI."""
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port), "--workers", str(workers)]
    cmd += ["--serve-artifacts", "--artifacts-destination", dest]
    return cmd + (["--app-name", "basic-auth"] if auth else [])


def environment(backend: str) -> dict[str, str]:
    return {**os.environ, "MLFLOW_BACKEND_STORE_URI": backend}


def check_port(host: str, port: int) -> None:
    """The address can be bound now, so a mistake is one line rather than a server that dies at start-up."""
    import socket

    if not 0 < port < 65536:
        raise UserError(f"--port {port}: choose a port between 1 and 65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise UserError(f"--host {host!r}: cannot resolve it ({e}); use 127.0.0.1, 0.0.0.0 or this machine's name") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as e:
            why = "is in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e.strerror})"
            raise UserError(
                f"port {port} on {host} {why}; pass another --port (e.g. --port {port + 1 if port < 65535 else 5000})"
            ) from None


def run(backend: str, artifacts: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 4, auth: bool = False) -> None:
    """Check the backend and the artifact destination, then become the MLflow server (exec)."""
    scheme = urlsplit(backend).scheme.split("+")[0]
    if scheme not in ("postgresql", "mysql", "sqlite"):
        raise UserError(
            f"--backend-store-uri {tracking.redact(backend)!r}: use postgresql://user:pass@host:5432/db (or mysql://, sqlite:///)"
        )
    if workers < 1:
        raise UserError(f"--workers {workers}: at least 1")
    if auth and not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") and not os.environ.get("MLFLOW_AUTH_CONFIG_PATH"):
        raise UserError("--auth: set MLFLOW_AUTH_ADMIN_PASSWORD (the first admin password) or MLFLOW_AUTH_CONFIG_PATH")
    if auth:
        import importlib.util

        if importlib.util.find_spec("flask_wtf") is None:  # MLflow's basic-auth app imports it (CSRF)
            raise UserError("--auth needs MLflow's auth extra (Flask-WTF): pip install 'mlflow[auth]'")
    tracking.check_url(backend, "mlflow_uri", "--backend-store-uri")
    stores.probe_sql(backend, "--backend-store-uri")
    folder = None if urlsplit(artifacts).scheme in REMOTE_ARTIFACTS else Path(artifacts.removeprefix("file://")).expanduser().resolve()
    if folder is not None:
        stores.writable(folder, "--artifacts-destination")
    check_port(host, port)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    dest = artifacts if folder is None else folder.as_uri()
    if scheme == "sqlite":
        print("note: a SQLite backend serves one machine; use PostgreSQL for many workers", file=sys.stderr)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: binding {host}: anyone who can reach this port can read and write runs"
            f"{'' if auth else '; add --auth'} and put a TLS proxy in front",
            file=sys.stderr,
        )
    print(f"MLflow server on http://{host}:{port} · runs in {tracking.redact(backend)} · artifacts in {dest}", flush=True)
    cmd = command(dest, host, port, workers, auth)
    # No job runner unless the user asks for one (afina submits no server jobs): MLflow's CLI passes SIGTERM and
    # Ctrl-C on to uvicorn alone, so the runner's consumers outlived the server and its stop took half a minute.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **environment(backend)}
    if auth and not env.get("MLFLOW_FLASK_SERVER_SECRET_KEY"):  # basic-auth's CSRF key, shared by the server's workers
        import secrets

        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = secrets.token_hex(32)
    # become the server: signals reach it directly, nothing is left behind; the URI travels in the environment
    os.execve(cmd[0], cmd, env)


def ui(uri: str, host: str, port: int, artifact_root: str | None = None, workers: int = 1) -> int:
    """`afina ui`: MLflow's UI on a store that exists (a missing SQLite file is a typo, not a new store).

    One worker and no job runner by default. The server runs as a child in its own process group;
    Ctrl-C or SIGTERM to `afina ui` is passed on to that group (MLflow's CLI starts uvicorn as a
    further child), so nothing is left behind. A local store's `mlflow-artifacts:/` files are served
    from the `artifacts/` folder beside it (a copied project shows its own); experiments whose files
    live outside the project are named in a warning. Prints each sweep's runs-table link.
    """
    if uri.startswith(("http://", "https://")):
        raise UserError(f"--tracking-uri {tracking.redact(uri)} is already a server: open it in a browser")
    stores.require_mlflow(uri)  # a missing SQLite file is a typo, a dead database one line
    if workers < 1:
        raise UserError(f"--workers {workers}: use at least 1")
    check_port(host, port)  # in use, impossible or unknown host: one line, before MLflow starts
    uri = tracking.absolute(uri)
    path = tracking.sqlite_path(uri)
    # the store URI (it may hold a password) goes in the environment, never on the command line (`ps`)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port), "--workers", str(workers)]
    if path is not None:
        dest = Path(artifact_root).resolve() if artifact_root else artifacts.folder(uri)
        cmd += ["--serve-artifacts", "--artifacts-destination", dest.as_uri()]
        for name, loc in artifacts.outside(uri, path.parent.parent):
            print(
                f"warning: experiment {name!r} keeps its artifacts in {loc}, outside this project; "
                "a copy of this project shows (and promote writes) the original's files",
                file=sys.stderr,
            )
    print(f"MLflow UI on http://{host}:{port} (store {tracking.redact(uri)}); Ctrl-C stops it", flush=True)
    for name, experiment_id in _sweeps(uri):
        print(f"  {name}: {run_descriptions.link(experiment_id, host, port)}", flush=True)
    env = {**environment(uri), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: afina submits no server jobs
    if os.environ.get("AFINA_VERBOSITY") != "verbose":  # MLflow's start-up chatter only with --verbose; the user's env wins
        env = {**quiet_env(uri), **env}
    return _serve(cmd, env)


def quiet_env(uri: str) -> dict[str, str]:
    """The server's start quiet: the registry named (the backend, MLflow's own default, so it does not say so),
    uvicorn's INFO lines and access log off, and Starlette's deprecation of the WSGI bridge MLflow still imports."""
    return {
        "MLFLOW_REGISTRY_STORE_URI": uri,
        "MLFLOW_UVICORN_OPTS": "--log-level warning",
        "PYTHONWARNINGS": "ignore:starlette.middleware.wsgi is deprecated",
    }


def _sweeps(uri: str) -> list[tuple[str, str]]:
    """(name, id) of the store's experiments that afina set a runs-table view on."""
    from mlflow import MlflowClient

    try:
        exps = MlflowClient(tracking_uri=uri).search_experiments()
    except Exception:  # the server reports an unusable store itself
        return []
    return [(e.name, e.experiment_id) for e in exps if run_descriptions.VIEW_TAG in e.tags]


def _serve(cmd: list[str], env: dict[str, str]) -> int:
    """Run the server until it exits; SIGINT/SIGTERM go to its process group. 0 when stopped by a signal."""
    import contextlib
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    stopped: list[int] = []

    def forward(signum, frame):
        stopped.append(signum)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            code = proc.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        return 0 if stopped else code
    finally:
        if proc.poll() is None:  # afina itself failed: take the server down with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):  # uvicorn workers the MLflow CLI left behind
            os.killpg(proc.pid, signal.SIGTERM)
