"""Fixtures and hooks only: a temp project, the CLI in-process, the services each tier needs.
What tests share by name is in tests/helpers/."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "TOKENIZERS_PARALLELISM": "false",
    }
)


@pytest.fixture(scope="session", autouse=True)
def afina_cache(tmp_path_factory):
    """Embedded models are built once per test session into a private cache."""
    cache = os.environ.get("AFINA_TEST_CACHE") or str(tmp_path_factory.mktemp("afina-cache"))
    os.environ["AFINA_CACHE"] = cache
    return Path(cache)


MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _forget_mlflow_uri() -> None:
    """MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI (and the registry's), and a subprocess honours it
    over the spec's store: an in-process command must not point a later subprocess at its own store."""
    for key in MLFLOW_URI_VARS:
        os.environ.pop(key, None)


def _needed() -> dict[str, tuple]:
    """marker: (is it here?, what is missing, how to get it) for the services whole tiers of tests need."""
    import shutil

    from helpers.services import PG, PG_FIX, pg_ok

    return {
        "pg": (pg_ok, f"PostgreSQL at {PG.rsplit('@', 1)[-1]} does not answer", PG_FIX),
        "browser": (
            lambda: bool(shutil.which("chromium") or shutil.which("chromium-browser")),
            "Chromium is not installed",
            "apt-get install chromium (.ci/run installs it)",
        ),
    }


@pytest.hookimpl(trylast=True)  # after `-m` deselected: `make test` needs none of these services
def pytest_collection_modifyitems(config, items):
    """A missing service skips its tests on a contributor's machine; with CI set it stops the run in one line,
    so a green CI never hides an untested tier."""
    for marker, (here, what, fix) in _needed().items():
        marked = [item for item in items if item.get_closest_marker(marker)]
        if not marked or here():
            continue
        if os.environ.get("CI"):
            pytest.exit(f"{what}, and CI must run its {len(marked)} tests: {fix}", returncode=1)
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=f"{what}: {fix}"))


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    _forget_mlflow_uri()


@pytest.hookimpl(tryfirst=True)
def pytest_fixture_setup(fixturedef, request):
    """Also before every fixture of any scope, e.g. a module's store built by a subprocess sweep
    (tests/test_browser.py) after the previous module's tests ran commands in-process."""
    _forget_mlflow_uri()


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project folder as the working directory (mlruns/ lands here)."""
    monkeypatch.chdir(tmp_path)
    for key in ("AFINA_OPTUNA_STORAGE", "AFINA_TRACKING_URI", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `afina ...` in-process; returns (exit code, stdout, stderr)."""
    from afina.cli.app import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["afina", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run
