"""`afina server` and `afina ui`: the MLflow tracking server that many workers share, and the UI on a local store.

Runs are kept in PostgreSQL (or MySQL); artifacts are served by the server itself from a local
folder or an S3-compatible bucket, so workers need no bucket credentials. It binds 127.0.0.1
unless `--host` says otherwise; `--auth` turns on MLflow's basic-auth app.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from afina import stores, tracking
from afina.errors import UserError

REMOTE_ARTIFACTS = ("s3", "gs", "wasbs", "abfss", "hdfs", "sftp", "ftp")


def command(backend: str, artifacts: str, host: str, port: int, workers: int, auth: bool) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    return cmd + (["--app-name", "basic-auth"] if auth else [])


def run(backend: str, artifacts: str, host: str = "127.0.0.1", port: int = 5000, workers: int = 4, auth: bool = False) -> None:
    """Check the backend and the artifact destination, then become the MLflow server (exec)."""
    scheme = urlsplit(backend).scheme.split("+")[0]
    if scheme not in ("postgresql", "mysql", "sqlite"):
        raise UserError(
            f"--backend-store-uri {tracking.redact(backend)!r}: use postgresql://user:pass@host:5432/db (or mysql://, sqlite:///)"
        )
    if not 0 < port < 65536:
        raise UserError(f"--port {port}: choose a port between 1 and 65535")
    if auth and not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD") and not os.environ.get("MLFLOW_AUTH_CONFIG_PATH"):
        raise UserError("--auth: set MLFLOW_AUTH_ADMIN_PASSWORD (the first admin password) or MLFLOW_AUTH_CONFIG_PATH")
    stores.probe_sql(backend, "backend_store_uri")
    if urlsplit(artifacts).scheme in REMOTE_ARTIFACTS:
        dest = artifacts
    else:
        folder = Path(artifacts.removeprefix("file://")).expanduser().resolve()
        stores.writable(folder, "--artifacts-destination")
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder.as_uri()
    if scheme == "sqlite":
        print("note: a SQLite backend serves one machine; use PostgreSQL for many workers", file=sys.stderr)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: binding {host}: anyone who can reach this port can read and write runs"
            f"{'' if auth else '; add --auth'} and put a TLS proxy in front",
            file=sys.stderr,
        )
    print(f"MLflow server on http://{host}:{port} · runs in {tracking.redact(backend)} · artifacts in {dest}", flush=True)
    cmd = command(backend, dest, host, port, workers, auth)
    os.execv(cmd[0], cmd)  # become the server: signals reach it directly, nothing is left behind


def ui(uri: str, host: str, port: int, artifact_root: str) -> int:
    """`afina ui`: MLflow's UI on a store that exists (a missing SQLite file is a typo, not a new store)."""
    import subprocess

    stores.require_mlflow(uri)
    path = tracking.sqlite_path(uri)
    print(f"MLflow UI on http://{host}:{port} (store {tracking.redact(uri)}); Ctrl-C stops it", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    if path is not None:
        cmd += ["--default-artifact-root", Path(artifact_root).resolve().as_uri()]
    return subprocess.call(cmd)
