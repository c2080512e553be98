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

from afina import stores, tracking
from afina.errors import UserError

REMOTE_ARTIFACTS = ("s3", "gs", "wasbs", "abfss", "hdfs", "sftp", "ftp")


def command(artifacts: str | None, host: str, port: int, workers: int | None, auth: bool, ui: bool = False) -> list[str]:
    """The `mlflow server` command line. The backend store URI is not on it: it may hold a password, and
    any user on the machine can read a process's arguments (`ps`). It goes in MLFLOW_BACKEND_STORE_URI."""
    cmd = [sys.executable, "-m", "mlflow", "ui" if ui else "server", "--host", host, "--port", str(port)]
    if artifacts is not None:
        cmd += ["--default-artifact-root", artifacts] if ui else ["--serve-artifacts", "--artifacts-destination", artifacts]
    if workers:
        cmd += ["--workers", str(workers)]
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


def ui(uri: str, host: str, port: int, artifact_root: str) -> int:
    """`afina ui`: check the store and the port, then run `mlflow ui` as a child that stops when afina does."""
    if uri.startswith(("http://", "https://")):
        raise UserError(f"--tracking-uri {tracking.redact(uri)} is already a server: open it in a browser")
    stores.require_mlflow(uri)  # a missing SQLite file is a typo, a dead database one line
    path = tracking.sqlite_path(uri)
    check_port(host, port)
    print(f"MLflow UI on http://{host}:{port} (store {tracking.redact(uri)}); Ctrl-C stops it", flush=True)
    cmd = command(Path(artifact_root).resolve().as_uri() if path is not None else None, host, port, None, False, ui=True)
    return supervise(cmd, environment(uri))


def supervise(cmd: list[str], env: dict[str, str]) -> int:
    """Run a server in its own process group and pass SIGINT/SIGTERM/SIGHUP on to the whole group
    (mlflow starts uvicorn or gunicorn workers), so stopping afina never leaves a server running."""
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, env=env, start_new_session=True)
    got: list[int] = []

    def forward(signum, frame):
        got.append(signum)
        try:
            os.killpg(proc.pid, signal.SIGTERM if signum == signal.SIGHUP else signum)
        except ProcessLookupError:
            pass

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, forward) for s in sigs}
    try:
        while True:
            try:
                code = proc.wait(timeout=10 if got else None)
                break
            except subprocess.TimeoutExpired:  # it ignored the signal: stop it for good
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # workers left behind by a server that exited
        except ProcessLookupError:
            pass
    if got:  # stopped on request
        return 130 if got[0] == signal.SIGINT else 0
    return code


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
    # become the server: signals reach it directly, nothing is left behind; the URI travels in the environment
    os.execve(cmd[0], cmd, environment(backend))
