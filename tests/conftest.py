"""Shared fixtures: a temp project with real SQLite stores, a tiny random model, the CLI in-process."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
TIENDA = ROOT / "experiments" / "data" / "tienda"
SHARED_DATA = ROOT.parent / "shared" / "data"

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

    from stores import PG, PG_FIX, pg_ok

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


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every path under the folders with its size and modification time (links and pipes are not followed)."""
    out = {}
    for folder in folders:
        for p in Path(folder).rglob("*"):
            st = p.lstat()
            out[str(p)] = (st.st_size if p.is_file() and not p.is_symlink() else 0, st.st_mtime_ns)
    return out


@contextlib.contextmanager
def nothing_written(*folders: Path):
    """Bad input writes nothing: no study, no run, no mlruns/ or other folder, no changed file."""
    before = snapshot(*folders)
    yield
    after = snapshot(*folders)
    added = sorted(set(after) - set(before))
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not added and not changed, f"written: {added[:5]} changed: {changed[:5]}"


def tiny_spec(**overrides) -> dict:
    """A fast spec on the quickstart data and the tiny random model; override any section."""
    spec = {
        "name": "tiny",
        "model": {"ref": "tiny-random", "method": "lora"},
        "data": {
            "slices": {
                "faq": {"path": str(TIENDA / "faq.jsonl")},
                "productos": {"path": str(TIENDA / "productos.jsonl")},
                "poesia": {"path": str(TIENDA / "poesia.jsonl")},
            },
            "eval": {"path": str(TIENDA / "eval.jsonl"), "max_rows": 8},
        },
        "train": {
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "max_length": 64,
            "eval_steps": 2,
            "per_device_eval_batch_size": 8,
            "seed": 0,
        },
        "lora": {"r": 4, "lora_alpha": 8},
        "search": {
            "n_trials": 3,
            "seed": 0,
            "sampler": "random",
            "pruner": "none",
            "space": {
                "train.learning_rate": {"float": [1e-4, 1e-2], "log": True},
                "slices.poesia.include": {"categorical": [True, False]},
            },
        },
        "samples": {
            "prompts": [{"prompt": "Describe una camiseta básica blanca", "reference": "Una camiseta."}, "¿Puedo devolver un pedido?"],
            "max_new_tokens": 8,
        },
    }
    for key, value in overrides.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    return spec


def write_spec(folder: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def chat_reply(handler, content: str) -> None:
    """Answer an OpenAI-style chat completion request with `content` (the fake judges of the tests)."""
    data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@contextlib.contextmanager
def judge_then_down():
    """An OpenAI-style judge endpoint that answers one request (the sweep's start-up probe) and then goes
    away: the judge lost mid-sweep. Yields its port."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Once(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            chat_reply(self, "1")

        def log_message(self, *args):
            pass

    import threading

    server = HTTPServer(("127.0.0.1", 0), Once)
    port = server.server_address[1]

    def once():
        server.handle_request()
        server.server_close()  # later connections are refused

    thread = threading.Thread(target=once, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        if thread.is_alive():  # nobody asked: close it without a request
            server.server_close()


def spec_file(folder: Path, slices: dict, eval_: dict, space: dict | None = None, **over) -> Path:
    """tiny_spec on these slices, searching only the learning rate unless told."""
    spec = tiny_spec(data={"slices": slices, "eval": eval_}, **over)
    spec["search"]["space"] = space or {"train.learning_rate": {"float": [1e-4, 1e-2], "log": True}}
    return write_spec(folder, spec)


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run `afina ...` in-process; returns (exit code, stdout, stderr)."""
    from afina.cli import main

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
