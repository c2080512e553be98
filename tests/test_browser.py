"""The MLflow UI in a real headless Chromium over a store made by a small sweep.

Needs Debian's `chromium` (no browser download) and the `playwright` package; skips only when
Chromium is absent. Screenshots land in pytest's tmp dir (printed at the end).
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import optuna
import pytest

from conftest import tiny_spec, write_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui(project, cli):
    """A 2-trial sweep, then `mlflow ui` on a free loopback port over its store."""
    spec = tiny_spec(
        train={"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 48, "eval_steps": 1, "seed": 0},
        samples={
            "prompts": [{"prompt": "Describe una camiseta básica blanca", "reference": "Una camiseta."}],
            "max_new_tokens": 8,
            "temperature": 1.0,
        },
        search={**tiny_spec()["search"], "n_trials": 2, "objective": "chrf"},
    )
    code, _, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 0, err
    port = _free_port()
    log = open(project / "mlflow-ui.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            f"sqlite:///{project}/mlruns/mlflow.db",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("mlflow ui did not start: " + (project / "mlflow-ui.log").read_text()[-2000:])
            time.sleep(0.5)
    study = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db")
    yield url, study
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def test_mlflow_ui_shows_children_samples_and_plots(ui, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, study = ui
    parent = study.user_attrs["mlflow_parent_run_id"]
    child = study.trials[0].user_attrs["mlflow_run_id"]
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.set_default_timeout(30_000)

        # the experiment: the sweep's run, expanded to show its children (trials and the baseline)
        page.goto(f"{url}/#/experiments/1/runs")
        row = page.locator("[role=row]", has_text="sweep-tiny").first
        row.locator("button").first.click()
        for name in ("trial-0", "trial-1", "baseline"):
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
        page.screenshot(path=shots / "1-experiment.png")

        # the parent run: plots folder, a plot rendered as an image, the report and the leaderboard
        page.goto(f"{url}/#/experiments/1/runs/{parent}/artifacts")
        for name in ("plots", "report.html", "leaderboard.csv"):
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
        page.get_by_text("plots", exact=True).first.click()
        page.get_by_text("slices.png", exact=True).first.click()
        img = page.locator("img[src^='blob:']").first
        expect(img).to_be_visible()
        assert img.evaluate("i => i.naturalWidth") > 100  # the PNG decoded
        page.screenshot(path=shots / "2-parent-plot.png")
        page.get_by_text("importances.png", exact=True).first.click()
        expect(page.locator("img[src^='blob:']").first).to_be_visible()

        # a child run: the samples table with the generated answer and its metric columns
        page.goto(f"{url}/#/experiments/1/runs/{child}/artifacts")
        page.get_by_text("samples.json", exact=True).first.click()
        for text in ("Describe una camiseta básica blanca", "output", "chrf", "rougeL"):
            expect(page.get_by_text(text, exact=True).first).to_be_visible()
        page.screenshot(path=shots / "3-child-samples.png")
        browser.close()
    print(f"screenshots in {shots}")
    assert all((shots / n).stat().st_size > 10_000 for n in ("1-experiment.png", "2-parent-plot.png", "3-child-samples.png"))
