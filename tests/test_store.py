"""A project folder that can be moved: artifact locations relative to the SQLite store (afina/artifacts.py)."""

from __future__ import annotations

import shutil

from afina import tracking
from afina.tracking import artifacts

URI = "sqlite:///mlruns/mlflow.db"


def test_copied_store_reads_and_writes_its_own_files(tmp_path, monkeypatch):
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    monkeypatch.chdir(original)
    c = tracking.client(URI)
    exp = tracking.experiment(c, "x", "mlruns/artifacts", URI)
    run = c.create_run(exp).info.run_id
    c.log_text(run, "original", "note.txt")
    assert c.get_experiment(exp).artifact_location == artifacts.ROOT  # nothing absolute is recorded
    assert (original / "mlruns" / "artifacts" / run / "artifacts" / "note.txt").read_text() == "original"

    shutil.copytree(original, copy)
    monkeypatch.chdir(copy)
    from mlflow.tracking._tracking_service import utils

    utils._artifact_repos_cache.clear()  # MLflow caches a run's repository by run id, per process; the copy has the same ids
    c = tracking.client(URI)
    (copy / "mlruns" / "artifacts" / run / "artifacts" / "note.txt").write_text("copy")
    assert (tmp_path / c.download_artifacts(run, "note.txt", str(tmp_path))).read_text() == "copy"
    c.log_text(run, "written in the copy", "more.txt")
    assert (copy / "mlruns" / "artifacts" / run / "artifacts" / "more.txt").is_file()
    assert not (original / "mlruns" / "artifacts" / run / "artifacts" / "more.txt").exists()


def test_ui_names_experiments_whose_files_live_outside_the_project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = tracking.client(URI)
    here = tracking.experiment(c, "here", "mlruns/artifacts", URI)
    there = tracking.experiment(c, "there", str(tmp_path.parent / "elsewhere"), URI)  # an absolute root elsewhere
    empty = tracking.experiment(c, "empty", str(tmp_path.parent / "elsewhere"), URI)
    for e in (here, there):
        c.create_run(e)
    assert c.get_experiment(empty).artifact_location.startswith("file://")
    assert [name for name, _ in artifacts.outside(tracking.absolute(URI), tmp_path)] == ["there"]  # runs only
