"""Generation metrics: library-exact values, bad input at load time, a custom scorer and a weighted objective driving a sweep."""

import json
from pathlib import Path

import pytest

from afina import UserError
from afina.evaluation import metrics
from helpers.specs import tiny_spec, write_spec

FAST = {"max_steps": 2, "per_device_train_batch_size": 4, "max_length": 48, "eval_steps": 1, "per_device_eval_batch_size": 8, "seed": 0}


def test_values_match_the_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer

    hyp, ref = "the cat was on the mat", "the cat sat on the mat"
    ms = metrics.parse(
        [
            "rougeL",
            "chrf",
            "exact_match",
            "length",
            "json",
            {"contains": ["CAT", "mat"]},
            {"not_contains": "dog", "name": "no_dog"},
            {"regex": r"^the \w+"},
        ]
    )
    means, cols = metrics.score(ms, [{"prompt": "p", "reference": ref}], [hyp])
    assert means["rougeL"] == pytest.approx(rouge_scorer.RougeScorer(["rougeL"]).score(ref, hyp)["rougeL"].fmeasure)
    assert means["rougeL"] == pytest.approx(5 / 6)  # LCS 5 of 6 tokens both ways
    assert means["chrf"] == pytest.approx(sacrebleu.sentence_chrf(hyp, [ref]).score)
    assert means["chrf"] == pytest.approx(62.069, abs=1e-3)
    assert means == {
        "rougeL": means["rougeL"],
        "chrf": means["chrf"],
        "exact_match": 0.0,
        "length": 6.0,
        "json": 0.0,
        "contains": 1.0,
        "no_dog": 1.0,
        "regex": 1.0,
    }
    assert set(cols) == set(means) and all(len(c) == 1 for c in cols.values())


def test_exact_match_json_and_rows_without_reference():
    ms = metrics.parse(["exact_match", "json", "rougeL"])
    prompts = [{"prompt": "a", "reference": "Sí, claro."}, {"prompt": "b", "reference": None}]
    means, cols = metrics.score(ms, prompts, ["  sí,   CLARO ", '{"ok": true}'])
    assert cols["exact_match"] == [1.0, None]  # no reference: not scored, not counted
    assert cols["json"] == [0.0, 1.0]
    assert means["exact_match"] == 1.0 and means["json"] == 0.5
    # Spanish words keep their accents (rouge-score's default tokenizer would drop "sí")
    assert metrics.score(metrics.parse(["rougeL"]), [{"prompt": "x", "reference": "sí"}], ["sí"])[0]["rougeL"] == 1.0


@pytest.mark.parametrize(
    "entry, words",
    [
        ("rougel", "did you mean 'rougeL'"),
        ({"contains": []}, "give a keyword"),
        ({"regex": "("}, "not a valid regular expression"),
        ({"custom": "no_such_module_xyz:fn"}, "cannot import 'no_such_module_xyz'"),
        ({"custom": "json:no_such_fn"}, "has no function 'no_such_fn'"),
        ({"custom": "nocolon"}, "module:function"),
        ({"contains": ["a"], "regex": "b"}, "exactly one of"),
    ],
)
def test_bad_metrics_fail_at_load_and_write_nothing(project, cli, entry, words):
    path = write_spec(project, tiny_spec(evaluate={"metrics": [entry]}))
    code, _, err = cli("sweep", path, "--no-progress")
    assert code == 2 and words in err, err
    assert err.count("\n") == 1 and "metrics[0]" in err
    assert not (project / "mlruns").exists()


def test_reference_metric_without_references_and_unknown_objective(project, cli):
    spec = tiny_spec(evaluate={"metrics": ["chrf"]}, samples={"prompts": ["¿Puedo devolver un pedido?"], "max_new_tokens": 4})
    code, _, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 2 and "chrf compares with references" in err
    spec = tiny_spec(search={"objective": "bleu"})
    code, _, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 2 and "search.objective 'bleu' is not measured" in err and "rougeL" in err
    spec = tiny_spec(evaluate={"combine": {"q": {"rougeL": 1, "bleu": 1}}})
    code, _, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 2 and "evaluate.combine.q: 'bleu' is not measured" in err
    assert not (project / "mlruns").exists()


SCORER = '''
def vowels(output, reference, prompt):
    """Share of vowels in the answer: a stand-in for any user-written check."""
    return sum(ch in "aeiou" for ch in output) / max(1, len(output))


def broken(output, reference, prompt):
    raise KeyError("boom")
'''


def test_custom_scorer_and_weighted_objective_drive_a_sweep(project, cli):
    from mlflow import MlflowClient

    (project / "my_scorers.py").write_text(SCORER, encoding="utf-8")
    spec = tiny_spec(
        train=FAST,
        samples={
            "prompts": [{"prompt": "Describe una camiseta básica blanca", "reference": "Una camiseta."}, "¿Puedo devolver un pedido?"],
            "max_new_tokens": 8,
            "temperature": 1.0,
        },
        evaluate={
            "metrics": ["rougeL", {"custom": "my_scorers:vowels"}, {"contains": "camiseta"}],
            "combine": {"quality": {"vowels": 1.0, "rougeL": 0.5, "eval_loss": -0.01}},
        },
        search={**tiny_spec()["search"], "n_trials": 2, "objective": "quality"},
    )
    path = write_spec(project, spec)
    code, out, err = cli("sweep", path, "--no-progress")
    assert code == 0, err
    import optuna

    study = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db")
    assert [d.name for d in study.directions] == ["MAXIMIZE"]
    c = MlflowClient(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")
    for t in study.trials:
        assert t.state.name == "COMPLETE", t.user_attrs
        r = t.user_attrs["results"]
        assert t.value == pytest.approx(r["vowels"] + 0.5 * r["rougeL"] - 0.01 * r["eval_loss"])
        run = c.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.metrics["quality"] == pytest.approx(t.value)
        assert {"vowels", "rougeL", "contains"} <= set(run.data.metrics)
        table = _table(c, run.info.run_id, project)
        assert {"vowels", "rougeL", "contains"} <= set(table["columns"])
    # the base model was evaluated once, as a child run that is not an Optuna trial
    base = c.search_runs([c.get_experiment_by_name("tiny").experiment_id], "tags.`afina.role` = 'baseline'")
    assert len(base) == 1 and "quality" in base[0].data.metrics and "eval_loss" in base[0].data.metrics
    assert study.user_attrs["baseline"]["quality"] == pytest.approx(base[0].data.metrics["quality"])
    code, out, _ = cli("status", path)
    assert "BASELINE" in out and "vs base" in out and "Report:" in out
    # a resumed sweep does not evaluate the base model again
    code, _, err = cli("sweep", path, "--no-progress", "--n-trials", "3")
    assert code == 0, err
    assert len(c.search_runs([base[0].info.experiment_id], "tags.`afina.role` = 'baseline'")) == 1


def test_a_raising_scorer_fails_the_trial_not_the_sweep(project, cli):
    import optuna

    (project / "my_scorers.py").write_text(SCORER, encoding="utf-8")
    spec = tiny_spec(train=FAST, evaluate={"metrics": [{"custom": "my_scorers:broken"}]}, search={**tiny_spec()["search"], "n_trials": 2})
    code, out, err = cli("sweep", write_spec(project, spec), "--no-progress")
    # each trial failed and the sweep went on to the next; a sweep where every trial failed exits 1 with the reason
    assert code == 1 and "all 2 trials failed for the same reason" in err and "my_scorers:broken" in err, err
    study = optuna.load_study(study_name="tiny", storage="sqlite:///mlruns/optuna.db")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert all("my_scorers:broken" in t.user_attrs["fail_reason"] and "boom" in t.user_attrs["fail_reason"] for t in study.trials)


def test_scorer_must_return_a_number():
    ms = [metrics.Metric("bad", "custom", "m:f", lambda o, r, p: "high")]
    with pytest.raises(ValueError, match="must return a finite number"):
        metrics.score(ms, [{"prompt": "p"}], ["x"])
    with pytest.raises(UserError, match="no sample prompt has one"):
        metrics.check(metrics.parse(["rougeL"]), [{"prompt": "p", "reference": None}], ["eval_loss"], {"eval_loss"})


def _table(c, run_id, folder):
    dest = folder / "downloads" / run_id
    dest.mkdir(parents=True)
    return json.loads(open(c.download_artifacts(run_id, "samples.json", str(dest))).read())
