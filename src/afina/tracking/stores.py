"""Stores checked before use: reach both stores and the local folders before the study or a run is
created, so a bad URL is one line and exit code 2, with nothing half-written; and a missing SQLite
store is a typo, never a request to create an empty one.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from afina import UserError, tracking

if TYPE_CHECKING:
    from afina.spec.schema import Spec


def require_mlflow(uri: str, label: str = "--tracking-uri") -> None:
    """An existing MLflow store that answers, for commands that read one: a missing SQLite file is a
    typo (connecting would create an empty store), a dead server or database is one line instead of
    MLflow's retries and a long traceback."""
    tracking.check_url(uri, "mlflow_uri", label)
    path = tracking.sqlite_path(uri)
    if path is not None and not path.is_file():
        raise UserError(f"no MLflow store at {path}; run `afina sweep` first or pass --tracking-uri")
    if uri.startswith(("http://", "https://")):
        probe_http(uri)
    elif not uri.startswith("databricks"):
        probe_sql(uri, label)


def require_optuna(url: str) -> None:
    tracking.check_url(url, "optuna_storage")
    path = tracking.sqlite_path(url)
    if path is not None and not path.is_file():
        raise UserError(f"no Optuna storage at {path}, so no study yet; run `afina sweep` first or pass --storage")
    probe_sql(url, "optuna_storage")  # a dead server: one line, not Optuna's internal error


def reachable(uri: str) -> bool:
    try:
        probe_http(uri, timeout=3)
        return True
    except UserError:
        return False


def probe_http(uri: str, timeout: float = 10) -> None:
    """An MLflow server answers a search with our credentials (MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN)."""
    import requests

    if not uri.startswith(("http://", "https://")):
        return
    auth = (
        (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
        if os.environ.get("MLFLOW_TRACKING_USERNAME")
        else None
    )
    headers = {"Authorization": f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"} if os.environ.get("MLFLOW_TRACKING_TOKEN") else {}
    where = f"tracking.mlflow_uri {tracking.redact(uri)!r}"
    try:
        r = requests.post(
            uri.rstrip("/") + "/api/2.0/mlflow/experiments/search", json={"max_results": 1}, auth=auth, headers=headers, timeout=timeout
        )
    except requests.RequestException as e:
        raise UserError(f"{where} is unreachable ({type(e).__name__}); start the server (`afina server`) or fix the URL") from None
    if r.status_code in (401, 403):
        raise UserError(
            f"{where} refused the credentials (HTTP {r.status_code}); set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
        )
    try:
        ok = r.status_code == 200 and isinstance(r.json(), dict)
    except ValueError:
        ok = False
    if not ok:
        raise UserError(f"{where} does not answer like an MLflow server (HTTP {r.status_code}); check the host, port and path")


def probe_sql(url: str, what: str) -> None:
    """Connect to a database URL (a SQLite file only when it exists: connecting would create it)."""
    import sqlalchemy

    path = tracking.sqlite_path(url)
    label = what if what.startswith("-") else f"tracking.{what}"
    if path is not None and not path.exists():
        writable(path.parent, f"{label} {url}")
        return
    where = f"{label} {tracking.redact(url)!r}"
    kw = {"connect_args": {"connect_timeout": 5}} if url.startswith("postgresql") else {}
    try:
        engine = sqlalchemy.create_engine(url, **kw)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT count(*) FROM sqlite_master" if path is not None else "SELECT 1"))
        engine.dispose()
    except ImportError as e:
        raise UserError(f"{where}: its database driver is not installed ({e}); pip install it or use another driver in the URL") from None
    except sqlalchemy.exc.NoSuchModuleError:
        raise UserError(f"{where}: unknown database dialect or driver; use e.g. postgresql://user:pass@host:5432/db") from None
    except (sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
        msg = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise UserError(
            f"{where} is unusable ({tracking.redact(msg[0] if msg else type(e).__name__)[:200]}); "
            "check the host, port, database and credentials"
        ) from None


def writable(folder: Path, what: str) -> None:
    """The folder, or its nearest existing parent, accepts new files (read-only mounts too, even for root)."""
    p = Path(folder).resolve()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise UserError(f"{what}: {p} is a file, not a folder; choose another path")
    if not os.access(p, os.W_OK | os.X_OK):
        raise UserError(f"{what}: {p} is not writable; choose a writable folder")
    try:
        free = shutil.disk_usage(p).free
    except OSError:
        return
    if free < 1 << 20:
        raise UserError(f"{what}: no space left under {p} ({free} bytes free); free some space or choose another folder")


def preflight(spec: Spec) -> None:
    """Every store and folder the sweep will write to, checked before any is written."""
    t = spec.tracking
    if t.mlflow_uri.startswith(("http://", "https://")):
        probe_http(t.mlflow_uri)
    elif not t.mlflow_uri.startswith("databricks"):
        probe_sql(t.mlflow_uri, "mlflow_uri")
        writable(Path(t.artifact_root), "tracking.artifact_root")
    probe_sql(t.optuna_storage, "optuna_storage")
    writable(Path(t.checkpoint_dir), "tracking.checkpoint_dir")
