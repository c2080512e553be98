"""The committed quickstart dataset must be exactly what experiments/data/make_tienda.py generates."""

import json
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "data" / "make_tienda.py"
COMMITTED = ROOT / "experiments" / "data" / "tienda"
COUNTS = {"faq": 120, "productos": 120, "poesia": 80, "eval": 24, "prompts": 4}


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("tienda")
    runpy.run_path(str(SCRIPT))["write"](out)
    return out


def rows(folder, name):
    with (folder / f"{name}.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_matches_committed_bytes(generated, name):
    assert (generated / f"{name}.jsonl").read_bytes() == (COMMITTED / f"{name}.jsonl").read_bytes()


def test_deterministic_across_runs(generated, tmp_path):
    runpy.run_path(str(SCRIPT))["write"](tmp_path)
    for name in COUNTS:
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (generated / f"{name}.jsonl").read_bytes()


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_counts_and_no_duplicates(generated, name):
    lines = (generated / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == COUNTS[name]
    assert len(set(lines)) == len(lines)


def test_formats(generated):
    for name in ("faq", "eval"):
        for r in rows(generated, name):
            assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
    assert all(set(r) == {"prompt", "completion"} for r in rows(generated, "productos"))
    assert all(r["completion"].endswith("Hecho para durar, pensado para ti.") for r in rows(generated, "productos"))
    assert all(set(r) == {"text"} for r in rows(generated, "poesia"))
    assert all(set(r) == {"prompt", "reference"} for r in rows(generated, "prompts"))


def test_no_leakage_between_eval_and_train(generated):
    train = {r["messages"][0]["content"] for r in rows(generated, "faq")}
    train |= {r["prompt"] for r in rows(generated, "productos")}
    evals = [r["messages"][0]["content"] for r in rows(generated, "eval")]
    assert len(set(evals)) == len(evals)
    assert not train & set(evals)
    assert not train & {r["prompt"] for r in rows(generated, "prompts")}
