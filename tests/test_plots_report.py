"""A two-objective sweep: Pareto front in status and plots, the report and `afina compare` hold every trial's answers."""

import csv
import html
import io
import json
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient

from helpers.specs import tiny_spec, write_spec

PNG = b"\x89PNG\r\n\x1a\n"
PROMPTS = [
    {"prompt": "Describe una camiseta básica blanca", "reference": "Una camiseta blanca de algodón."},
    {"prompt": "¿Puedo devolver un pedido?", "reference": "Sí, tienes 30 días."},
]


@pytest.fixture
def swept(project, cli):
    """3 trials maximising chrF and minimising training tokens; sampled answers so each trial's text differs."""
    spec = tiny_spec(
        train={"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 48, "eval_steps": 1, "seed": 0},
        samples={"prompts": PROMPTS, "max_new_tokens": 8, "temperature": 1.0},
        search={**tiny_spec()["search"], "n_trials": 3, "objective": ["chrf", "train_tokens"]},
    )
    path = write_spec(project, spec)
    code, out, err = cli("sweep", path, "--no-progress")
    assert code == 0, err
    study = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db")
    return path, study, MlflowClient(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}"), spec


def test_pareto_plots_leaderboard_report_and_compare(swept, cli, project):
    path, study, c, spec = swept
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    front = sorted(t.number for t in study.best_trials)
    code, out, _ = cli("status", path)
    assert code == 0 and f"Pareto front: trials {', '.join(map(str, front))}" in out
    assert "BASELINE" in out and "Report: mlruns/reports/tiny.html" in out

    parent = study.user_attrs["mlflow_parent_run_id"]
    arts = {a.path for a in c.list_artifacts(parent, "plots")}
    for name in ("pareto", "history-chrf", "history-train_tokens", "slices-chrf", "parallel-chrf"):
        assert f"plots/{name}.png" in arts, arts
        png = (project / c.download_artifacts(parent, f"plots/{name}.png", str(project))).read_bytes()
        assert png.startswith(PNG) and len(png) > 5000  # a real, non-empty image
    assert not any("importances" in a for a in arts)  # 3 trials are too few to rank parameters (plots.IMPORTANCE_MIN)
    interactive = (project / c.download_artifacts(parent, "plots/interactive.html", str(project))).read_text()
    assert "Plotly.newPlot" in interactive and "<script src" not in interactive  # plotly.js inlined: works offline

    board = list(csv.DictReader(io.StringIO((project / c.download_artifacts(parent, "leaderboard.csv", str(project))).read_text())))
    assert [r["trial"] for r in board][0] == "base" and len(board) == 4
    assert sum("★" in r["state"] for r in board) == len(front)

    page = (project / "mlruns" / "reports" / "tiny.html").read_text()
    assert {a.path for a in c.list_artifacts(parent)} >= {"report.html", "leaderboard.csv", "plots"}
    assert page.count("data:image/png;base64,") >= 6 and "<script src" not in page  # self-contained
    outputs = {}
    for t in study.trials:
        table = json.loads(
            (project / c.download_artifacts(t.user_attrs["mlflow_run_id"], "samples.json", str(project / f"t{t.number}"))).read_text()
        )
        outputs[t.number] = [row[table["columns"].index("output")] for row in table["data"]]
        assert {"chrf", "rougeL", "length"} <= set(table["columns"])
        for o in outputs[t.number]:
            assert html.escape(o) in page, (t.number, o)
    assert "Data check" in page and "rows.poesia" in page
    # plots captioned by what they show; the check report rendered (a table), not raw markdown
    assert "<figcaption>Optimisation history: chrf of each trial, and the best so far</figcaption>" in page
    assert "Parameter importances left out: they need ≥ 50 complete trials; this study has 3." in page
    assert "<figcaption>Pareto front of the objectives</figcaption>" in page and "<figcaption>pareto</figcaption>" not in page
    check = page[page.index("<summary>check report</summary>") :]
    assert "<h1>afina check:" in check and "<th>slice</th>" in check and "|---|" not in check
    assert "No <code>@champion</code> yet" in page  # nothing promoted yet

    # compare: register trial 0 as @champion, and add a prompt no run has answered (generated from checkpoints)
    best_run = study.trials[0].user_attrs["mlflow_run_id"]
    c.create_registered_model("tiny")
    mv = c.create_model_version("tiny", f"runs:/{best_run}/checkpoint", run_id=best_run)
    c.set_registered_model_alias("tiny", "champion", mv.version)
    spec["samples"]["prompts"].append("¿Tenéis tallas grandes?")
    path.write_text(yaml.safe_dump(spec, allow_unicode=True))
    code, out, err = cli("compare", path, "--top", "5")
    assert code == 0, err
    assert "Written mlruns/reports/tiny-compare.html" in out and "base" in out
    assert "@champion v1" in open("mlruns/reports/tiny-compare.html").read()
    page = (project / "mlruns" / "reports" / "tiny-compare.html").read_text()
    for n, outs in outputs.items():
        assert f"trial {n}" in page
        for o in outs:
            assert html.escape(o) in page
    assert "compare.html" in {a.path for a in c.list_artifacts(parent)}
    assert page.count("<tr>") == 1 + 3 + 3  # header, 3 prompts, 3 metric rows (rougeL, chrf, length)


def test_compare_needs_a_study_and_a_judge(project, cli):
    path = write_spec(project, tiny_spec())
    code, _, err = cli("compare", path)
    assert code == 2 and "no Optuna storage" in err and "run `afina sweep` first" in err
    assert not (project / "mlruns").exists()
    code, _, err = cli("compare", path, "--judge")
    assert code == 2 and "--judge needs evaluate.judge" in err
