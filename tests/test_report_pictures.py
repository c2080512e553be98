"""Pictures that tell the truth (issue #29, point 6): the controlled verdict as a forest plot on the parent run
and in the report's "What your data did"; parameter importances only from enough complete trials."""

from __future__ import annotations

import random

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from helpers.specs import tiny_spec, write_spec

PNG = b"\x89PNG\r\n\x1a\n"
DIST = {"train.learning_rate": FloatDistribution(1e-4, 1e-2, log=True), "slices.poesia.include": CategoricalDistribution([True, False])}


def _sweep(project, trials: int):
    """A study of `trials` COMPLETE trials (no training: the plots only read trials) and its MLflow parent run."""
    from afina.search import study as study_mod
    from afina.spec import schema as spec_mod

    s = spec_mod.load(write_spec(project, tiny_spec()))
    study = study_mod.open(s, create=True)
    rng = random.Random(0)
    for i in range(trials):
        params = {"train.learning_rate": 10 ** rng.uniform(-4, -2), "slices.poesia.include": i % 2 == 0}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=DIST, value=2 + rng.random()))
    c = study_mod.client(s)
    parent = c.create_run(c.create_experiment("tiny"), run_name="sweep").info.run_id
    study.set_user_attr("mlflow_parent_run_id", parent)
    return s, study, c, parent


def _ablate(s, study, c, parent) -> dict:
    """What `afina ablate` stores, from made-up per-seed results run through ablation.summarize and ablation.record:
    3 paired seeds, poesia raises eval_loss by ~0.5 on every seed (a clear "hurts")."""
    from afina.attribution import ablation

    params, number = ablation.best_trial(s, study)
    plan, notes = ablation.arms(s, params)
    seeds = [0, 1, 2]
    results = {}
    for arm in plan:
        for k, seed in enumerate(seeds):
            poesia = params["slices.poesia.include"] if arm.key is None else arm.value
            loss = 2.0 + 0.02 * k + (0.5 + 0.01 * k if poesia else 0.0)
            results[arm.name, seed] = (f"run-{arm.name}-{seed}", {"eval_loss": loss, "chrf": 30.0 + k - (2.0 if poesia else 0.0)})
    summary = ablation.summarize(s, plan, seeds, results, number, 4, 0, notes, "afina ablate spec.yaml --seeds 3")
    return ablation.record(s, study, c, parent, {"ablation": summary})


def _artifacts(c, parent) -> set[str]:
    return {a.path for a in c.list_artifacts(parent, "plots")}


def _section(page: str) -> str:
    """The report's "What your data did" section."""
    start = page.index("<h2>What your data did</h2>")
    return page[start : page.index("<h2>", start + 4)]


def test_forest_plot_of_the_stored_ablation_on_the_parent_run_and_in_the_report(project):
    from afina.reporting import report

    s, study, c, parent = _sweep(project, 4)
    stored = _ablate(s, study, c, parent)
    hurts = [r for r in stored["ablation"]["rows"] if r["metric"] == "eval_loss"]
    assert [r["verdict"] for r in hurts] == ["hurts"]  # the picture has a clear verdict to show

    report.refresh(s, study, c, parent)
    assert "plots/verdicts.png" in _artifacts(c, parent)
    png = (project / c.download_artifacts(parent, "plots/verdicts.png", str(project))).read_bytes()
    assert png.startswith(PNG) and len(png) > 10000  # a real picture: two panels, bars, band, labels
    page = report.path(s).read_text(encoding="utf-8")
    section = _section(page)
    assert section.count("data:image/png;base64,") == 1 and "Controlled ablation: each slice" in section
    plots_section = page[page.index("<h2>Plots</h2>") :]
    assert "Controlled ablation: each slice" not in plots_section  # shown once, where the verdict is told
    # the controlled verdict replaces the observational with/without chart
    assert "plots/slices.png" not in _artifacts(c, parent) and "with vs without each data slice" not in page


def test_no_ablation_no_forest_and_the_slice_chart_says_it_is_observational(project):
    from afina.reporting import report

    s, study, c, parent = _sweep(project, 4)
    report.refresh(s, study, c, parent)
    arts = _artifacts(c, parent)
    assert "plots/verdicts.png" not in arts and "plots/slices.png" in arts
    page = report.path(s).read_text(encoding="utf-8")
    assert "Controlled ablation: each slice" not in page
    assert "with vs without each data slice: observational (trials differ in other parameters too)" in page


def test_importances_left_out_of_a_small_study_with_the_reason(project):
    from afina.reporting import plots, report

    s, study, c, parent = _sweep(project, 4)
    report.refresh(s, study, c, parent)
    assert not any("importances" in a for a in _artifacts(c, parent))
    page = report.path(s).read_text(encoding="utf-8")
    assert f"they need ≥ {plots.IMPORTANCE_MIN} complete trials; this study has 4" in page
    assert "Which searched parameters" not in page


def test_importances_drawn_from_enough_trials(project):
    from afina.reporting import plots, report

    s, study, c, parent = _sweep(project, plots.IMPORTANCE_MIN)  # exactly the threshold: drawn
    report.refresh(s, study, c, parent)
    assert "plots/importances.png" in _artifacts(c, parent)
    page = report.path(s).read_text(encoding="utf-8")
    assert "Which searched parameters (data slices included) mattered" in page and "importances left out" not in page
