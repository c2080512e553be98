"""Every shipped experiment validates, names the command that runs it, and its data loads.

Specs on outside data (../shared/data) skip their data check cleanly where that data is absent.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pytest

from afina import data, models
from afina.spec import schema

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SPECS = sorted(EXPERIMENTS.glob("*.yaml"))


def test_there_are_experiments():
    assert EXPERIMENTS / "quickstart.yaml" in SPECS


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_experiment_names_its_command(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("#") and f"afina sweep experiments/{path.name}" in first, first


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_experiment_validates(path):
    s = schema.load(path)
    assert s.search.space and s.search.n_trials >= 1
    assert s.model.ref in models.EMBEDDED or Path(s.model.ref).expanduser().is_dir(), s.model.ref
    # the defaults keep everything in the project's git-ignored mlruns/
    assert s.tracking.mlflow_uri.startswith("sqlite:///mlruns/") and s.tracking.optuna_storage.startswith("sqlite:///mlruns/")


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_experiment_data_loads(path):
    s = schema.load(path)
    sources = [sl.path for sl in s.data.slices.values()] + [s.data.eval.path, s.samples.path]
    patterns = [p for src in sources if src for p in ([src] if isinstance(src, str) else src)]
    outside = [p for p in patterns if "shared" in Path(p).parts and not glob.glob(str(path.parent / p))]
    if outside:
        pytest.skip(f"outside data not present: {outside[0]}")
    prepared = data.prepare(s)
    assert prepared.eval and all(prepared.slices.values())
    assert set(prepared.slices) == set(s.data.slices)
    for name in s.search.space:  # every slice the sweep varies exists and has rows
        if name.startswith("slices."):
            assert prepared.slices[name.split(".")[1]]
    assert data.prompts(s) or not (s.samples.prompts or s.samples.path)
