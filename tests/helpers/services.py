"""Real shared stores for the scale-out and fault tests: PostgreSQL databases and `afina server` processes.

Tests that need PostgreSQL (marked `pg`) skip when 127.0.0.1:5432 does not answer; with CI set the run stops instead.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

PG = os.environ.get("AFINA_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
PG_FIX = "start it (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) or install postgresql"


def pg_ok() -> bool:
    try:
        import psycopg  # the driver SQLAlchemy 2.1 picks for postgresql:// URLs, as Optuna and MLflow do

        psycopg.connect(f"{PG}/postgres", connect_timeout=3).close()
        return True
    except Exception:
        return False


needs_pg = pytest.mark.pg  # conftest skips these where PostgreSQL does not answer, and stops the run when CI is set


def missing(what: str, fix: str) -> None:
    """A service or tool this test needs is missing: a skip on a contributor's machine, a failure in CI
    (where it would hide a whole tier of the README's promises behind a green run)."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}, and CI must run this test: {fix}", pytrace=False)
    pytest.skip(f"{what} ({fix})")


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG}/postgres", connect_timeout=5, autocommit=True) as conn:
        conn.execute(sql)


def new_database() -> tuple[str, str]:
    name = f"afina_test_{uuid.uuid4().hex[:10]}"
    _admin(f"CREATE DATABASE {name}")
    return name, f"{PG}/{name}"


def drop_database(name: str) -> None:
    _admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    """Environment for afina subprocesses: offline, quiet, no job runner in the MLflow server."""
    out = {**os.environ, "HF_HUB_OFFLINE": "1", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "PYTHONUNBUFFERED": "1"}
    for key in ("AFINA_OPTUNA_STORAGE", "AFINA_TRACKING_URI", "MLFLOW_TRACKING_URI"):
        out.pop(key, None)
    return out | extra


def start_server(backend: str, artifacts: Path, port: int, log: Path) -> subprocess.Popen:
    """`afina server` on a loopback port; returns once /health answers."""
    import requests

    f = log.open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "afina",
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(artifacts),
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        stdout=f,
        stderr=subprocess.STDOUT,
        env=env(),
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"afina server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"afina server did not answer: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process started in its own session, with its children."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def sweep(spec: Path, cwd: Path, out: Path, **extra: str) -> subprocess.Popen:
    f = out.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "afina", "sweep", str(spec), "--no-progress"],
        cwd=cwd,
        stdout=f,
        stderr=subprocess.STDOUT,
        env=env(**extra),
        start_new_session=True,
    )


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def trial_running(project: Path, number: int, evaluated: bool = False):
    """A wait_for check: trial `number` of the project's SQLite study is RUNNING in a worker (and, with
    `evaluated`, has reported an evaluation). Read-only SQL: polling through Optuna would race the
    worker creating the tables."""

    def check() -> bool:
        db = project / "mlruns" / "optuna.db"
        if not db.exists():
            return False
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT trial_id, state FROM trials WHERE number = ?", (number,)).fetchone()
            if not row or row[1] != "RUNNING":
                return False
            worker = con.execute("SELECT 1 FROM trial_user_attributes WHERE trial_id = ? AND key = 'worker'", (row[0],)).fetchone()
            evals = con.execute("SELECT count(*) FROM trial_intermediate_values WHERE trial_id = ?", (row[0],)).fetchone()[0]
            return bool(worker) and (evals > 0 or not evaluated)
        except sqlite3.Error:
            return False
        finally:
            con.close()

    return check
