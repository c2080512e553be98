"""The MLflow UI in a real headless Chromium, over a store made by a small sweep and a promotion.

It asserts what a person sees after following the link `afina ui` prints: the runs table with the
trials nested under the sweep and the objective column shown, the descriptions of the sweep, a trial
and the model version, the Evaluation view's answers grouped under their prompts, the gate result.
Needs Debian's `chromium` (no browser download) and the `playwright` package; skips only when
Chromium is absent. Screenshots stay in pytest's tmp folder; their paths are printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers.specs import tiny_spec, write_spec

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.browser  # conftest: skipped without Chromium, a stopped run when CI is set
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PROMPT = "Describe una camiseta básica blanca"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def afina(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "afina", *args], cwd=cwd, capture_output=True, text=True, timeout=900)


def start_ui(cwd: Path, log: Path) -> tuple[subprocess.Popen, str, str]:
    """`afina ui` on a free port; returns (process, base url, the runs-table link it printed)."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "afina", "ui", "--port", str(port)], cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                stop_ui(proc)
                pytest.fail("afina ui did not start: " + log.read_text()[-2000:])
            time.sleep(0.5)
    links = re.findall(r"http://\S+viewStateShareKey=\S+", log.read_text())
    assert links, log.read_text()
    return proc, url, links[0]


def stop_ui(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=30)


@pytest.fixture(scope="module")
def store(tmp_path_factory, afina_cache):
    """A 2-trial sweep (3 steps each) and a promotion of its best trial, in a fresh project folder."""
    project = tmp_path_factory.mktemp("ui-project")
    spec = tiny_spec(
        train={"max_steps": 3, "per_device_train_batch_size": 4, "max_length": 48, "eval_steps": 1, "seed": 0},
        samples={"prompts": [{"prompt": PROMPT, "reference": "Una camiseta."}], "max_new_tokens": 8, "temperature": 1.0},
        search={**tiny_spec()["search"], "n_trials": 2, "objective": "chrf"},
    )
    write_spec(project, spec)
    swept = afina(project, "sweep", "spec.yaml", "--no-progress")
    assert swept.returncode == 0, swept.stderr[-3000:]
    promoted = afina(project, "promote", "spec.yaml")
    assert promoted.returncode == 0, promoted.stderr[-3000:] + promoted.stdout[-2000:]
    return project, swept.stdout


def client(project: Path):
    """Plain MLflow on the project's store. `mlflow-artifacts:/` resolves beside it through afina's
    entry point once afina is installed; registered here too, for an editable checkout not reinstalled."""
    from mlflow import MlflowClient

    from afina.tracking import artifacts

    artifacts.register()
    return MlflowClient(tracking_uri=f"sqlite:///{project}/mlruns/mlflow.db")


def test_ui_link_descriptions_evaluation_and_gate(store, tmp_path):
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import expect, sync_playwright

    project, sweep_out = store
    c = client(project)
    runs = {r.info.run_name: r for r in c.search_runs([c.get_experiment_by_name("tiny").experiment_id])}
    parent, trial = runs["sweep-tiny"], runs["trial-0"]
    exp = parent.info.experiment_id
    samples = json.loads(Path(c.download_artifacts(trial.info.run_id, "samples.json", str(tmp_path))).read_text())
    assert samples["columns"][:4] == ["prompt", "reference", "base", "output"]
    answer = samples["data"][0][3]
    assert answer.strip(), "the trial's answer is empty; nothing to look for in the Evaluation view"
    assert f"#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey=afina" in sweep_out.replace("\n", "")

    shots = tmp_path / "screenshots"
    shots.mkdir()
    proc, url, link = start_ui(project, tmp_path / "ui.log")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(30_000)
            expect.set_options(timeout=30_000)  # a shared 2-core machine renders slowly

            try:

                def close_assistant(wait: int = 0):  # MLflow 3.17 opens its assistant panel on a first visit; it hides half the table
                    close = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
                    try:
                        close.click(timeout=wait or 1)
                    except PlaywrightTimeout:
                        pass  # no panel (closed before, or a later MLflow)

                # 1. the printed link: runs table, trials nested (and shown) under the sweep, objective column
                page.goto(link)
                page.get_by_text("trial-0", exact=True).first.wait_for()
                close_assistant(wait=15_000)
                table = page.locator(".ag-root")
                for name in ("sweep-tiny", "trial-0", "trial-1", "baseline", "promote-trial-0"):
                    expect(table.get_by_text(name, exact=True).first).to_be_visible()
                expect(page.locator(".ag-header-cell[col-id='metrics.`chrf`']")).to_be_visible()
                expect(page.locator(".ag-header-cell[col-id='params.`train.learning_rate`']")).to_be_visible()
                page.screenshot(path=shots / "1-runs-table.png")
                # the sweep's row shows its winner's objective in the trials' column (it was "-" before)
                row = page.locator(".ag-row", has_text="sweep-tiny").first.get_attribute("row-index")  # name and metrics: two row parts
                chrf = page.locator(f".ag-row[row-index='{row}'] .ag-cell[col-id='metrics.`chrf`']").first
                expect(chrf).to_have_text(re.compile(r"^\d"))
                sweep_row = page.locator(".ag-row", has_text="sweep-tiny").first
                sweep_row.locator("button").first.click()  # collapse: the trials are the sweep's children
                expect(table.get_by_text("trial-0", exact=True)).to_have_count(0)
                expect(table.get_by_text("promote-trial-0", exact=True).first).to_be_visible()

                # 2. descriptions of the sweep and of a trial
                page.goto(f"{url}/#/experiments/{exp}/runs/{parent.info.run_id}?workflowType=machine_learning")
                expect(page.get_by_text("Winner:").first).to_be_visible()
                expect(page.get_by_text(re.compile(r"2 trials: \d complete")).first).to_be_visible()
                page.screenshot(path=shots / "2-sweep.png")
                # the description's link to the winning trial opens that trial in the model-training layout, whose
                # navigation has the runs and models; the GenAI layout's (traces, judges) must not show
                href = page.get_by_role("link", name=re.compile(r"^trial \d$")).first.get_attribute("href")
                assert re.search(rf"#/experiments/{exp}/runs/[0-9a-f]{{32}}\?workflowType=machine_learning$", href), href
                page.goto(f"{url}/{href[href.index('#') :]}")  # where the link leads (a click does not move this page in MLflow 3.17)
                expect(page.get_by_text("Searched picks:").first).to_be_visible()
                expect(page.get_by_role("link", name="Models", exact=True).first).to_be_visible()
                expect(page.get_by_text("Judges", exact=True)).to_have_count(0)
                page.screenshot(path=shots / "2b-trial-by-link.png")
                page.goto(f"{url}/{href[href.index('#') : href.index('?')]}")  # control: without the parameter, MLflow's GenAI layout
                expect(page.get_by_text("Judges", exact=True).first).to_be_visible()
                page.goto(f"{url}/#/experiments/{exp}/runs/{trial.info.run_id}?workflowType=machine_learning")
                expect(page.get_by_text("Searched picks:").first).to_be_visible()
                expect(page.get_by_text(re.compile(r"rank \d of 2 completed by chrf")).first).to_be_visible()
                # its Metrics table starts with the objective and the results, the curves come after
                names = page.locator("a[href$='/model-metrics']").all_inner_texts()  # each metric's name links to its chart
                assert names[:3] == ["chrf", "best_eval_loss", "rougeL"] and "loss" in names[3:], names
                page.screenshot(path=shots / "3-trial.png")

                # 3. the Evaluation view, grouped by its default (the first column): answers under prompts
                page.goto(f"{url}/#/experiments/{exp}/runs?workflowType=machine_learning&compareRunsMode=ARTIFACT")
                close_assistant()
                expect(page.get_by_text(re.compile(r"Group by:\s*prompt")).first).to_be_visible()
                expect(page.get_by_text(PROMPT, exact=True).first).to_be_visible()
                expect(page.get_by_text(answer.strip()[:20]).first).to_be_visible()
                # every run's column has answers: the sweep shows its winner's, the promotion its candidate's
                expect(page.get_by_text("(empty)")).to_have_count(0)
                page.screenshot(path=shots / "4-evaluation.png")

                # 4. the promotion run names its registered model; the version shows what it is and the gate
                page.goto(f"{url}/#/experiments/{exp}/runs/{runs['promote-trial-0'].info.run_id}?workflowType=machine_learning")
                expect(page.get_by_text("Gate: promoted").first).to_be_visible()
                expect(page.get_by_role("link", name="tiny").first).to_be_visible()
                page.screenshot(path=shots / "5-promotion.png")
                page.goto(f"{url}/#/models/tiny/versions/1")
                expect(page.get_by_text("LoRA adapter").first).to_be_visible()
                expect(page.get_by_text("promoted").first).to_be_visible()
                expect(page.get_by_text("afina.gate.decision").first).to_be_visible()
                page.screenshot(path=shots / "6-model-version.png")

                # 5. the sweep's plots and report: an image decodes
                page.goto(f"{url}/#/experiments/{exp}/runs/{parent.info.run_id}/artifacts")
                page.get_by_text("plots", exact=True).first.click()
                page.get_by_text("slices.png", exact=True).first.click()
                img = page.locator("img[src^='blob:']").first
                expect(img).to_be_visible()
                assert img.evaluate("i => i.naturalWidth") > 100
                page.screenshot(path=shots / "7-plot.png")
            except Exception:
                page.screenshot(path=shots / "failure.png")
                print(f"failure screenshot: {shots / 'failure.png'}")
                raise
            browser.close()
    finally:
        code = stop_ui(proc)
    print(f"screenshots in {shots}: " + ", ".join(sorted(p.name for p in shots.iterdir())))
    assert code == 0  # SIGTERM reached the server and it stopped cleanly
    with pytest.raises(OSError):  # nothing is left listening
        urllib.request.urlopen(f"{url}/health", timeout=2)
    assert all(p.stat().st_size > 10_000 for p in shots.iterdir())


def test_copied_project_serves_and_promotes_its_own_artifacts(store, tmp_path):
    """A copy of the project folder reads its own files in the UI, and `afina promote` writes into the copy."""
    project, _ = store
    copy = tmp_path / "copy"
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns("*.log"))
    c = client(copy)
    trial = next(r for r in c.search_runs(["1"]) if r.info.run_name == "trial-1")
    assert trial.info.artifact_uri.startswith("mlflow-artifacts:/")  # nothing absolute in the store
    table = next((copy / "mlruns" / "artifacts").glob(f"{trial.info.run_id}/artifacts/samples.json"))
    table.write_text(table.read_text().replace("Una camiseta.", "copied reference"), encoding="utf-8")

    proc, url, _ = start_ui(copy, tmp_path / "ui.log")
    try:
        served = urllib.request.urlopen(f"{url}/get-artifact?path=samples.json&run_uuid={trial.info.run_id}", timeout=20).read().decode()
    finally:
        stop_ui(proc)
    assert "copied reference" in served  # the copy's file, not the original's
    assert "outside this project" not in (tmp_path / "ui.log").read_text()

    before = set((project / "mlruns" / "artifacts").rglob("MLmodel"))
    out = afina(copy, "promote", "spec.yaml", "--trial", "1", "--force")
    assert out.returncode == 0, out.stderr[-3000:]
    assert set((project / "mlruns" / "artifacts").rglob("MLmodel")) == before  # the original is untouched
    assert any((copy / "mlruns" / "artifacts").rglob("MLmodel"))
    assert os.path.isdir(copy / "mlruns" / "artifacts")
