"""A project folder that can be moved: artifact locations relative to the SQLite store.

A local store records its experiments' artifact location as `mlflow-artifacts:/`, not as an
absolute path. MLflow's own server resolves that against `--artifacts-destination` (`afina ui`
passes the store's `artifacts/` folder); a process that talks to the SQLite file directly
resolves it here, against the `artifacts/` folder beside the database. A copied or moved
project therefore reads and writes its own files. With an HTTP tracking URI nothing changes:
MLflow's proxy repository handles the scheme as before.

The scheme is registered in two ways: `register()` (called by afina's MLflow client) and the
`mlflow.artifact_repository` entry point in pyproject.toml, so that plain `mlflow` in an
environment where afina is installed loads models from a relocatable store too.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

SCHEME = "mlflow-artifacts"
ROOT = f"{SCHEME}:/"  # an experiment's artifact location in a relocatable store


def folder(tracking_uri: str) -> Path | None:
    """The artifacts folder of a SQLite store (`artifacts/` beside the database), else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri.removeprefix("sqlite:///")).resolve().parent / "artifacts"


def relocatable(tracking_uri: str, artifact_root: str) -> bool:
    """True when the spec's artifact root is the store's own `artifacts/` folder (the default)."""
    own = folder(tracking_uri)
    return own is not None and Path(artifact_root).resolve() == own


def repository(artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
    """MLflow artifact repository factory for `mlflow-artifacts:` URIs."""
    from mlflow import get_tracking_uri
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    uri = tracking_uri or get_tracking_uri()
    root = folder(uri)
    if root is None or urlsplit(artifact_uri).netloc:  # a server (or a URI naming its host) proxies it
        return MlflowArtifactsRepository(artifact_uri, tracking_uri=tracking_uri, registry_uri=registry_uri)
    path = urlsplit(artifact_uri).path.lstrip("/")
    return LocalArtifactRepository((root / path).as_uri(), tracking_uri=tracking_uri, registry_uri=registry_uri)


def register() -> None:
    """Make sure `mlflow-artifacts:` resolves here. An installed afina is registered through its entry point
    (MLflow's public plugin route); only a checkout whose metadata predates that entry point needs the
    registry itself, which MLflow offers no public call for (tests/test_contracts.py holds both routes)."""
    from mlflow.store.artifact import artifact_repository_registry as registry

    if registry.get_registered_artifact_repositories().get(SCHEME) is not repository:
        registry._artifact_repository_registry.register(SCHEME, repository)


def outside(tracking_uri: str, project: Path) -> list[tuple[str, str]]:
    """(experiment, artifact location) of the store's experiments whose files live outside `project`."""
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=tracking_uri)
    out = []
    for exp in c.search_experiments():
        loc = exp.artifact_location
        if not loc.startswith("file:") or Path(urlsplit(loc).path).resolve().is_relative_to(project.resolve()):
            continue
        if c.search_runs([exp.experiment_id], max_results=1):  # an empty Default experiment holds no files
            out.append((exp.name, loc))
    return out
