"""Slice verdicts with real training: a planted harmful slice must be found, a harmless one must not be
called harmful. The statistics themselves are checked on numbers with known answers."""

from __future__ import annotations

import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from helpers.specs import jsonl, tiny_spec, write_spec

ANSWER = "Sí, claro: lo enviamos hoy mismo sin coste alguno."
WRONG = "Jamás. No hacemos eso nunca, lo siento mucho."


def words(rng: random.Random, n: int) -> str:
    return " ".join(
        rng.choice(["camiseta", "pedido", "envío", "talla", "color", "precio", "algodón", "tienda", "azul", "roja"]) for _ in range(n)
    )


def planted(folder: Path) -> dict:
    """task: prompts -> the shop's fixed answer; harmful: the same prompts -> a contrary answer (3x as many
    rows); harmless: other prompts -> the same fixed answer. Eval: unseen prompts -> the fixed answer."""
    rng = random.Random(0)
    prompts = [f"{words(rng, 3)} {i}?" for i in range(60)]
    chat = lambda p, a: {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}  # noqa: E731
    d = folder / "data"
    d.mkdir()
    return {
        "task": {"path": str(jsonl(d / "task.jsonl", [chat(p, ANSWER) for p in prompts[:40]]))},
        "harmful": {"path": str(jsonl(d / "harmful.jsonl", [chat(p, WRONG) for p in prompts[:40] for _ in range(3)]))},
        "harmless": {"path": str(jsonl(d / "harmless.jsonl", [chat(p, ANSWER) for p in prompts[40:52]]))},
        "eval": str(jsonl(d / "eval.jsonl", [chat(p, ANSWER) for p in prompts[52:60]])),
    }


@pytest.fixture(scope="module")
def ablated(tmp_path_factory, afina_cache):
    """A 5-trial sweep (pinned configurations, so the regression has what it needs) with search.ablate:
    the best configuration is retrained with each slice toggled under 3 seeds. The CLI, in-process."""
    from afina.cli.app import main

    folder = tmp_path_factory.mktemp("ablated")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for key in ("AFINA_OPTUNA_STORAGE", "AFINA_TRACKING_URI", "MLFLOW_TRACKING_URI"):
            mp.delenv(key, raising=False)
        sl = planted(folder)
        spec = tiny_spec(
            model={"ref": "tiny-random", "method": "full"},
            data={"slices": {k: v for k, v in sl.items() if k != "eval"}, "eval": {"path": sl["eval"]}},
            train={"max_steps": 12, "per_device_train_batch_size": 8, "max_length": 48, "eval_steps": 6, "seed": 0, "learning_rate": 3e-2},
            samples={"prompts": [{"prompt": "camiseta azul 99?", "reference": ANSWER}], "max_new_tokens": 12},
        )
        spec["search"] = {
            "n_trials": 5,
            "sampler": "random",
            "pruner": "none",
            "seed": 0,
            "space": {
                "slices.harmful.include": {"categorical": [True, False]},
                "slices.harmless.include": {"categorical": [True, False]},
            },
            "ablate": {"seeds": 3},
        }
        path = write_spec(folder, spec)
        (folder / "mlruns").mkdir()
        study = optuna.create_study(study_name="tiny", storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}")
        for harmful, harmless in [(True, True), (True, False), (False, True), (False, False), (True, True)]:
            study.enqueue_trial({"slices.harmful.include": harmful, "slices.harmless.include": harmless})
        mp.setattr(sys, "argv", ["afina", "sweep", str(path), "--no-progress"])
        main()
    return folder, path


def _client(folder: Path) -> MlflowClient:
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _summary(folder: Path) -> dict:
    return optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}").user_attrs["verdicts"]


def _row(summary: dict, arm_slice: str, metric: str = "eval_loss") -> dict:
    (row,) = [r for r in summary["ablation"]["rows"] if r["slice"] == arm_slice and r["metric"] == metric]
    return row


def test_planted_harmful_slice_is_found(ablated):
    folder, _ = ablated
    s = _summary(folder)
    row = _row(s, "slices.harmful.include")
    assert row["verdict"] == "hurts", row
    assert row["n"] == 3 and row["lo"] > 0 and row["delta"] > s["ablation"]["noise"]["eval_loss"]["sd"], row
    assert row["method"] == "paired t-interval, 95 %"
    reg = s["regression"]["effects"]["slices.harmful.include"]
    assert reg["verdict"] == "hurts" and reg["n"] == 5 and reg["lo"] > 0, reg


def test_planted_harmless_slice_is_not_called_harmful(ablated):
    folder, _ = ablated
    s = _summary(folder)
    assert _row(s, "slices.harmless.include")["verdict"] != "hurts"
    assert s["regression"]["effects"]["slices.harmless.include"]["verdict"] != "hurts"


def test_ablation_runs_and_verdict_table_are_recorded(ablated):
    folder, _ = ablated
    c = _client(folder)
    exp = c.get_experiment_by_name("tiny")
    found = c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    (parent,) = [r for r in found if r.data.tags.get("afina.role") == "sweep"]
    abl = [r for r in found if r.data.tags.get("afina.role") == "ablation"]
    # the best trial excludes the harmful slice: reference + 2 toggles, 3 seeds each
    assert len(abl) == 9 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in abl)
    assert {r.data.tags["afina.seed"] for r in abl} == {"0", "1", "2"}
    assert {r.data.tags["afina.arm"].split("=")[0] for r in abl} == {"reference", "harmful.include", "harmless.include"}
    assert "harmful.include=true" in {r.data.tags["afina.arm"] for r in abl}
    assert all(r.info.status == "FINISHED" and "best_eval_loss" in r.data.metrics for r in abl)
    note = parent.data.tags["mlflow.note.content"]
    assert "### What your data did" in note and "harmful include false → true: eval_loss" in note and "hurts" in note
    table = json.loads(Path(c.download_artifacts(parent.info.run_id, "verdicts.json", str(folder / "dl"))).read_text())
    assert {"slice", "metric", "n", "delta", "lo", "hi", "verdict"} <= set(table["columns"])
    assert len(table["data"]) >= 4  # 2 arms x (eval_loss + generation metrics) + the regression's rows


def test_status_report_and_rerun(ablated, cli, monkeypatch):
    folder, path = ablated
    monkeypatch.chdir(folder)
    code, out, _ = cli("status", path)
    assert code == 0 and out.index("What your data did") < out.index("trials")
    assert "harmful include false → true" in out and "hurts" in out
    html = (folder / "mlruns" / "reports" / "tiny.html").read_text()
    assert html.index("What your data did") < html.index("Leaderboard")
    # every run of the plan exists: `afina ablate` reuses them (no training) and gives the same verdicts
    before = _summary(folder)["ablation"]["rows"]
    code, out, err = cli("ablate", path, "--seeds", "3")
    assert code == 0, err
    assert "ablation 1/" not in out and _summary(folder)["ablation"]["rows"] == before


def test_compare_slices_shows_the_toggled_models(ablated, cli, monkeypatch):
    """`compare --slices` shows the base, the best configuration and each slice toggled (the ablation's first
    seed): each column holds that run's own answer and the scores that run logged."""
    import html
    import re

    folder, path = ablated
    monkeypatch.chdir(folder)
    code, out, err = cli("compare", path, "--slices")
    assert code == 0, err
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}")
    abl = study.user_attrs["verdicts"]["ablation"]
    first = abl["seeds"][0]
    toggled = {
        "harmful.include=true": "with harmful",
        "harmless.include=true": "with harmless",
        "harmless.include=false": "without harmless",
    }
    arms = sorted(k.split("|")[0] for k in abl["runs"] if k.endswith(f"|{first}") and not k.startswith("reference|"))
    assert "harmful.include=true" in arms and len(arms) == 2, arms  # the best trial leaves the harmful slice out
    expected = {
        "base": study.user_attrs["baseline_run_id"],
        f"best config (trial {abl['best_trial']})": abl["runs"][f"reference|{first}"],
        **{toggled[arm]: abl["runs"][f"{arm}|{first}"] for arm in arms},
    }
    c = _client(folder)
    logged = {label: c.get_run(rid).data.metrics for label, rid in expected.items()}
    answers = {}
    for label, rid in expected.items():
        table = json.loads(Path(c.download_artifacts(rid, "samples.json", str(folder / "dl" / rid))).read_text())
        (answers[label],) = [row[table["columns"].index("output")] for row in table["data"]]  # the spec's one prompt

    # the page: one column per run, in this order, with that run's answer and the scores it logged
    page = (folder / "mlruns" / "reports" / "tiny-compare.html").read_text(encoding="utf-8")
    cells = lambda row: [html.unescape(x) for x in re.findall(r"<t[hd]>(.*?)</t[hd]>", row, re.S)]  # noqa: E731
    header, *rows = [cells(r) for r in re.findall(r"<tr>(.*?)</tr>", page, re.S)]
    assert header == ["prompt", "reference", *expected], header
    assert rows[0] == ["camiseta azul 99?", ANSWER, *answers.values()], rows[0]
    assert [r[0] for r in rows[1:]] == ["rougeL", "chrf", "length"]
    for metric, _, *shown in rows[1:]:
        assert [float(v) for v in shown] == pytest.approx([logged[label][metric] for label in expected], rel=1e-3, abs=1e-9), metric
    # the terminal table: the same scores, to 3 significant digits
    for metric in ("rougeL", "chrf", "length"):
        (line,) = [x for x in out.splitlines() if x.startswith(f"│ {metric} ")]
        assert [v.strip() for v in line.split("│")[2:-1]] == [f"{logged[label][metric]:.3g}" for label in expected], line
    assert "with harmful" in out and "best config" in out


def test_ablate_without_a_study_is_one_line(project, cli):
    path = write_spec(project, tiny_spec())
    code, _, err = cli("ablate", path)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert not (project / "mlruns").exists()


# --- the statistics on known numbers --------------------------------------------------------------


def test_paired_interval_covers_the_true_difference_about_95_percent():
    from afina.attribution import verdicts

    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        base = rng.normal(0, 1, 5)  # shared seed noise cancels in the pairs
        e = verdicts.paired(base + 0.3 + rng.normal(0, 0.2, 5), base, "eval_loss", "minimize")
        hits += e.lo <= 0.3 <= e.hi
    assert 0.93 <= hits / 2000 <= 0.97


def test_paired_verdicts_follow_direction_interval_and_noise():
    from afina.attribution import verdicts

    up = verdicts.paired([2.0, 2.1, 2.2], [1.0, 1.05, 1.1], "eval_loss", "minimize")
    assert up.verdict == "hurts" and up.n == 3 and up.lo > 0
    assert verdicts.paired([2.0, 2.1, 2.2], [1.0, 1.05, 1.1], "rougeL", "maximize").verdict == "helps"
    assert verdicts.paired([2.0, 2.1, 2.2], [1.0, 1.05, 1.1], "length", None).verdict == "higher"
    assert verdicts.paired([1.0, 1.2, 0.9], [1.1, 1.0, 1.0], "eval_loss", "minimize").verdict == "no clear effect"
    small = verdicts.paired([1.01, 1.011, 1.012], [1.0, 1.0, 1.0], "eval_loss", "minimize", noise=0.05)
    assert small.verdict == "no clear effect" and "noise floor" in small.why
    one = verdicts.paired([2.0], [1.0], "eval_loss", "minimize")
    assert one.verdict == "no clear effect" and one.n == 1 and "no interval" in one.text()
    assert verdicts.noise_floor([1.0, 1.2, 1.4]) == (pytest.approx(0.2), 3)
    assert verdicts.noise_floor([1.0]) == (None, 1)


def _space(**dims):
    from afina.spec.schema import Dim

    return {k: Dim(**v) for k, v in dims.items()}


def test_regression_finds_a_planted_effect_and_refuses_when_it_cannot_tell():
    from afina.attribution import verdicts

    space = _space(**{"slices.poesia.include": {"categorical": [True, False]}, "train.learning_rate": {"float": [1e-4, 1e-2], "log": True}})
    rng = np.random.default_rng(1)
    trials = []
    for i in range(16):
        inc, lr = bool(i % 2), float(10 ** rng.uniform(-4, -2))
        trials.append(
            ({"slices.poesia.include": inc, "train.learning_rate": lr}, 2.0 + 0.5 * inc - 0.3 * math.log10(lr) + rng.normal(0, 0.05))
        )
    e = verdicts.regression(trials, space, "eval_loss", "minimize")["effects"]["slices.poesia.include"]
    assert e["verdict"] == "hurts" and e["lo"] < 0.5 < e["hi"] and e["n"] == 16
    few = verdicts.regression(trials[:4], space, "eval_loss", "minimize")["effects"]["slices.poesia.include"]
    assert few["verdict"] == "too few trials" and "need 5" in few["why"]
    always = [({**p, "slices.poesia.include": True}, v) for p, v in trials]
    assert verdicts.regression(always, space, "eval_loss", "minimize")["effects"]["slices.poesia.include"]["verdict"] == "never varied"
    # the quickstart's trap: poesia only ever came with the low learning rates
    tied = [
        ({"slices.poesia.include": lr < 1e-3, "train.learning_rate": lr}, v)
        for (p, v), lr in zip(trials, [p["train.learning_rate"] for p, _ in trials], strict=True)
    ]
    c = verdicts.regression(tied, space, "eval_loss", "minimize")["effects"]["slices.poesia.include"]
    assert c["verdict"] == "confounded" and "train.learning_rate" in c["why"]


def test_best_mixture_finds_the_interior_optimum():
    from afina.attribution import verdicts

    space = _space(**{"slices.a.weight": {"float": [0.0, 1.0]}, "slices.b.weight": {"float": [0.0, 1.0]}})
    rng = np.random.default_rng(2)
    trials = []
    for _ in range(20):
        a, b = rng.uniform(0, 1, 2)
        trials.append(({"slices.a.weight": a, "slices.b.weight": b}, (a - 0.3) ** 2 + 0.5 * b + rng.normal(0, 0.003)))
    mix = verdicts.best_mixture(trials, space, "minimize", trials[0][0])
    assert "squares" in mix["model"] and abs(mix["weights"]["slices.a.weight"] - 0.3) < 0.08 and mix["weights"]["slices.b.weight"] < 0.05
    assert verdicts.best_mixture(trials[:3], space, "minimize", trials[0][0])["verdict"] == "too few trials"


def test_arms_toggle_include_and_put_weights_at_their_bounds(project):
    from afina.attribution import ablation
    from afina.spec import schema

    d = tiny_spec()
    d["search"]["space"] = {
        "slices.poesia.include": {"categorical": [True, False]},
        "slices.poesia.weight": {"float": [0.1, 1.0]},
        "slices.faq.weight": {"float": [0.2, 1.0]},
        "slices.productos.fraction": {"float": [0.5, 1.0]},
    }
    s = schema.load(write_spec(project, d))
    best = {"slices.poesia.include": False, "slices.poesia.weight": 0.5, "slices.faq.weight": 0.6, "slices.productos.fraction": 1.0}
    plan, notes = ablation.arms(s, best)
    got = {(a.name, a.more, a.change) for a in plan[1:]}
    assert plan[0].name == "reference" and got == {
        ("poesia.include=true", True, "poesia include false → true"),
        ("faq.weight=0.2", False, "faq weight 0.2 → 0.6"),
        ("faq.weight=1", True, "faq weight 0.6 → 1"),
        ("productos.fraction=0.5", False, "productos fraction 0.5 → 1"),
    }
    assert any("excludes poesia" in n for n in notes)  # its weight changes nothing while it is out


def test_slice_plot_is_not_drawn_for_a_slice_no_trial_varied():
    """The held-out run's trap: every trial included the recipe slice, and the report still drew it."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from afina.reporting import plots

    dist = {"slices.recetas.include": CategoricalDistribution([True, False]), "train.learning_rate": FloatDistribution(1e-4, 1e-2)}
    done = [
        optuna.trial.create_trial(params={"slices.recetas.include": True, "train.learning_rate": lr}, distributions=dist, value=v)
        for lr, v in ((1e-3, 2.0), (2e-3, 1.9), (5e-3, 2.2))
    ]
    with pytest.raises(ValueError, match="no slice was varied"):
        plots.slice_effect(done, 0, "eval_loss")
    done.append(
        optuna.trial.create_trial(params={"slices.recetas.include": False, "train.learning_rate": 1e-3}, distributions=dist, value=2.1)
    )
    assert plots.slice_effect(done, 0, "eval_loss")[0] is not None


def test_an_unclear_verdict_names_the_command_for_more_evidence(ablated):
    """ "no clear effect" on the objective says how to narrow the interval; clear verdicts need no such line."""
    from afina.attribution import data_section

    folder, _ = ablated
    s = _summary(folder)
    abl = s["ablation"]

    def with_verdict(verdict: str) -> str:
        rows = [{**r, "verdict": verdict} if r["metric"] == abl["objective"] else r for r in abl["rows"]]
        return "\n".join(data_section.lines({**s, "ablation": {**abl, "rows": rows}}, "spec.yaml"))

    unclear = with_verdict("no clear effect")
    assert "Not enough evidence yet" in unclear
    assert f"`afina ablate spec.yaml --seeds {max(5, 2 * abl['k'])} --steps {4 * abl['steps']}`" in unclear
    assert "Not enough evidence yet" not in with_verdict("hurts")
