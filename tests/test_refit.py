"""The budget and the refit, with real TRL training of the tiny random model and real SQLite stores:
the search stops at its share of budget.steps (pruned trials counted), the winner is refitted with
the rest as a `refit` child run, a refit killed with SIGKILL resumes from its checkpoint, promotion
prefers the refit and records both runs, and the sweep is judged against a default run of equal compute.
"""

from __future__ import annotations

import os
import signal
import sqlite3

import optuna
import pytest

from helpers.services import stop, sweep, wait_for
from helpers.specs import tiny_spec, write_spec


def _study(project, name="tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{project / 'mlruns' / 'optuna.db'}")


def _client(project):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _runs(c, role: str):
    exp = c.get_experiment_by_name("tiny")
    return c.search_runs([exp.experiment_id], f"tags.`afina.role` = '{role}'", order_by=["attributes.start_time ASC"])


@pytest.mark.parametrize(
    "budget, match",
    [
        ({"steps": 10, "refit": 1.0}, "budget.refit: 1.0 is not a share"),
        ({"steps": 5, "refit": 0.5}, "budget.steps 5 leaves the search 2 steps, less than one trial's train.max_steps 4"),
        ({"step": 5}, "unknown key 'budget.step' (did you mean 'steps'?)"),
    ],
)
def test_bad_budget_is_one_line_and_writes_nothing(budget, match, project, cli):
    code, out, err = cli("sweep", write_spec(project, tiny_spec(budget=budget)), "--no-progress")
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err
    assert not (project / "mlruns").exists()


def test_budget_search_share_refit_promotion_and_verdict(project, cli):
    """budget {steps: 24, refit: 0.5}: the search trains trials of 4 steps (successive halving prunes some at
    step 2) while one more fits in its 12 steps; the refit trains the best configuration for 24 - spent steps."""
    from afina.baselines import payoff
    from afina.search import budget

    spec = tiny_spec(search={"n_trials": 20, "pruner": "successive_halving"}, budget={"steps": 24, "refit": 0.5})
    path = write_spec(project, spec)
    code, out, err = cli("sweep", path, "--no-progress")
    assert code == 0, err
    study = _study(project)
    trials = study.get_trials()
    for t in trials:  # every trial's steps: a complete one trained 4, a pruned one the steps up to its last report
        expected = 4 if t.state.name == "COMPLETE" else max(t.intermediate_values)
        assert t.user_attrs["steps"] == expected, (t.number, t.state, t.user_attrs)
    spent = budget.spent(study)
    assert spent == sum(t.user_attrs["steps"] for t in trials) and spent <= 12 < spent + 4  # stopped at its share
    assert len(trials) < 20

    # the refit: the best trial's params for the rest of the budget, as a child run tagged refit
    best, record = study.best_trial, study.user_attrs["refit"]
    assert record["state"] == "COMPLETE" and record["of"] == best.number and record["steps"] == 24 - spent
    c = _client(project)
    (run,) = _runs(c, "refit")
    assert run.info.run_id == record["run_id"] and run.info.status == "FINISHED" and run.data.tags["afina.refit_of"] == str(best.number)
    assert run.data.tags["mlflow.parentRunId"] == study.user_attrs["mlflow_parent_run_id"]
    assert run.data.params["train.max_steps"] == str(24 - spent)
    assert float(run.data.params["train.learning_rate"]) == best.params["train.learning_rate"]  # the winner's configuration
    assert run.data.params["data.fingerprint"] == best.user_attrs["data_fingerprint"]  # the same data mixture
    arts = {a.path for a in c.list_artifacts(run.info.run_id)} | {a.path for a in c.list_artifacts(run.info.run_id, "checkpoint")}
    assert {"samples.json", "checkpoint/adapter_model.safetensors"} <= arts
    last = max(m.step for m in c.get_metric_history(run.info.run_id, "loss"))
    assert last == 24 - spent  # it trained every step of its share
    assert "eval_loss" in record["results"] and "rougeL" in record["results"]  # evaluated like a trial
    parent = c.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.tags["afina.refit_run_id"] == run.info.run_id
    assert f"refit of trial {best.number} ({24 - spent} steps" in out
    # the sweep's description leads with the model promote registers (the refit beats its trial), then its lineage
    note, exp = parent.data.tags["mlflow.note.content"], parent.info.experiment_id
    head = f"**Winner: [refit of trial {best.number}](#/experiments/{exp}/runs/{run.info.run_id}?workflowType=machine_learning)**"
    assert note.startswith(f"{head} · eval_loss {record['values'][0]:.4g}"), note[:300]
    assert f"[trial {best.number}](#/experiments/{exp}/runs/{best.user_attrs['mlflow_run_id']}?" in note
    assert f"the trial scored {best.value:.4g}" in note

    # promotion prefers the refit when it beats its trial; lineage names both runs
    assert record["values"][0] < best.value, (record["values"], best.value)  # 3x the steps: a lower eval loss
    code, out, err = cli("promote", path)
    assert code == 0, err
    out = " ".join(out.split())  # rich wraps long lines
    assert f"the refit of trial {best.number}" in out and "it is the candidate" in out
    version = c.get_model_version_by_alias("tiny", "champion")
    assert version.tags["afina.source"] == "refit" and version.tags["afina.run_id"] == run.info.run_id
    assert version.tags["afina.refit_run_id"] == run.info.run_id and version.tags["afina.refit_of"] == str(best.number)
    assert version.tags["afina.refit_of_run_id"] == best.user_attrs["mlflow_run_id"]

    # a default run of equal compute (the reference run of issue 14), then the verdict in status, report, parent run
    reference = _reference_run(path, study, budget.sweep_steps(study))
    from afina.reporting import report
    from afina.search import study as study_mod
    from afina.spec import schema as spec_mod

    s = spec_mod.load(path)
    verdict = payoff.record(s, study, study_mod.client(s), study.user_attrs["mlflow_parent_run_id"])
    assert verdict["sweep_steps"] == 24 and verdict["reference_steps"] == 24
    assert verdict["model"] == f"refit of trial {best.number}" and verdict["reference_run_id"] == reference
    rows = {r["metric"]: r for r in verdict["rows"]}
    assert {"eval_loss", "rougeL", "chrf", "length"} <= set(rows)
    assert rows["eval_loss"]["n"] == 8 and rows["eval_loss"]["se"] is None  # eval rows; one loss per run
    assert rows["rougeL"]["n"] == 1 and rows["length"]["n"] == 2  # one sample prompt has a reference, two have prompts
    for r in rows.values():
        assert r["diff"] == pytest.approx(r["sweep"] - r["reference"])
    assert rows["eval_loss"]["verdict"] == ("better" if rows["eval_loss"]["diff"] < 0 else "worse")
    code, out, err = cli("status", path)
    out = " ".join(out.split())
    assert code == 0 and "Did the sweep pay?" in out and payoff.headline(verdict)[:20] in out
    assert "eval_loss:" in out and "n=8" in out
    report.refresh(s, study, study_mod.client(s), study.user_attrs["mlflow_parent_run_id"])
    assert "Did the sweep pay for itself?" in report.path(s).read_text(encoding="utf-8")
    parent = c.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.tags["afina.paid"] == payoff.headline(verdict)
    assert parent.data.metrics["vs_reference.eval_loss"] == pytest.approx(rows["eval_loss"]["diff"])


def _reference_run(path, study, steps: int) -> str:
    """Stand-in for issue 14's reference run, trained for real: TRL's default learning rate on the sweep's data
    for the sweep's steps, through the same trial.run, its record kept as baselines/default_run.py (issue 14) keeps it."""
    import dataclasses

    from afina import data, models
    from afina.evaluation import metrics
    from afina.search import study as study_mod
    from afina.spec import schema as spec_mod
    from afina.training import trial
    from afina.training.context import TrialContext

    s = spec_mod.load(path)
    s.train = {**s.train, "max_steps": steps}
    c = study_mod.client(s)
    parent = study.user_attrs["mlflow_parent_run_id"]
    ctx = TrialContext(
        s, data.prepare(s), models.resolve(s.model.ref), "tiny", ["minimize"], c, c.get_run(parent).info.experiment_id, parent
    )
    ctx = dataclasses.replace(ctx, prompts=metrics.prompts(s))
    fixed = optuna.trial.FixedTrial({"train.learning_rate": 2e-5, "slices.poesia.include": True}, 0)
    trial.run(ctx, fixed, role="reference")
    c.settle()
    study.set_user_attr("reference", {"run_id": fixed.user_attrs["mlflow_run_id"], "steps": steps, "results": fixed.user_attrs["results"]})
    return fixed.user_attrs["mlflow_run_id"]


def _refit_checkpoint(project):
    folder = project / "mlruns" / "checkpoints" / "tiny" / "refit-0"
    return [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]


@pytest.mark.drill
def test_killed_refit_resumes_from_its_checkpoint(project, cli):
    """kill -9 during the refit, once it has a checkpoint; the next sweep resumes it and trains only the rest."""
    spec = tiny_spec(
        search={"n_trials": 1, "heartbeat": 2},
        train={"max_steps": 4, "eval_steps": 5},
        budget={"steps": 104, "refit": 0.96},  # the search: one trial of 4 steps; the refit: 100 steps
        samples={"prompts": []},
    )
    path = write_spec(project, spec)
    log = project / "run1.log"
    first = sweep(path, project, log)
    try:
        wait_for(lambda: bool(_refit_checkpoint(project)), 300, "the refit's first checkpoint")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        stop(first)
    killed_at = max(int(p.name.split("-")[1]) for p in _refit_checkpoint(project))
    assert killed_at < 100, log.read_text()[-2000:]
    db = sqlite3.connect(f"file:{project / 'mlruns' / 'optuna.db'}?mode=ro", uri=True)
    assert "RUNNING" in db.execute("SELECT value_json FROM study_user_attributes WHERE key = 'refit'").fetchone()[0]
    db.close()

    code, out, err = cli("sweep", path, "--no-progress")
    assert code == 0, err
    study = _study(project)
    assert len(study.trials) == 1  # the search was done: only the refit ran again
    record = study.user_attrs["refit"]
    assert record["state"] == "COMPLETE" and record["steps"] == 100
    assert record["resumed_from"].endswith(f"refit-0/checkpoint-{killed_at}")  # its newest checkpoint
    c = _client(project)
    dead, done = _runs(c, "refit")
    assert dead.info.status == "FAILED" and "resumed in a new run" in dead.data.tags["afina.reason"]
    assert done.info.run_id == record["run_id"] and done.data.tags["afina.resumed_from"] == record["resumed_from"]
    steps = [m.step for m in c.get_metric_history(done.info.run_id, "loss")]
    start = int(record["resumed_from"].rsplit("-", 1)[1])
    assert min(steps) == start + 1 and max(steps) == 100  # it went on from the checkpoint, not from step 0
    assert not (project / "mlruns" / "checkpoints" / "tiny" / "refit-0").exists()  # scratch removed once kept

    code, out, err = cli("refit", path)  # done: nothing is trained again
    assert code == 0 and len(_runs(c, "refit")) == 2, err


def test_no_budget_no_refit_and_refit_needs_one(project, cli):
    path = write_spec(project, tiny_spec(search={"n_trials": 1}, samples={"prompts": []}))
    assert cli("sweep", path, "--no-progress")[0] == 0
    assert "refit" not in _study(project).user_attrs and not _runs(_client(project), "refit")
    code, out, err = cli("refit", path)
    assert code == 2 and "add `budget: {refit: 0.5}`" in err


def test_budget_arithmetic_on_a_study():
    """spent / room / refit_steps over a real (in-memory) Optuna study: finished trials count what they trained,
    a running one its full length; without budget.steps the refit's share comes from what the search spent."""
    from afina.search import budget
    from afina.spec import schema as spec_mod

    study = optuna.create_study()
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for state, steps in (("COMPLETE", 10), ("PRUNED", 5), ("FAIL", 3)):
        study.add_trial(
            optuna.trial.create_trial(
                state=getattr(optuna.trial.TrialState, state),
                value=1.0 if state == "COMPLETE" else None,
                intermediate_values={steps: 1.0} if state == "PRUNED" else None,
                params={"x": 0.5},
                distributions=dist,
                user_attrs={"steps": steps},
            )
        )
    assert budget.spent(study) == 18

    def spec(**b):
        return spec_mod.Spec.model_validate({**tiny_spec(train={"max_steps": 10}), "budget": b})

    assert budget.room(study, spec(steps=60, refit=0.5), 10)  # 18 + 10 <= 30
    assert not budget.room(study, spec(steps=50, refit=0.5), 10)  # 18 + 10 > 25
    assert budget.refit_steps(study, spec(steps=60, refit=0.5)) == 42  # all that is left
    assert budget.refit_steps(study, spec(refit=0.25)) == 6  # 18 * 0.25 / 0.75
    assert budget.refit_steps(study, spec(steps=60, refit=0.0)) == 0  # refit 0: none
    running = study.ask()
    running.set_user_attr("steps", 2)
    assert not budget.room(study, spec(steps=60, refit=0.5), 10)  # 18 finished + 10 running (at full length) + 10 > 30
    assert budget.spent(study) == 20 and budget.sweep_steps(study) == 20


def test_multi_objective_refit_choice_worse_refit_and_a_sweep_that_did_not_pay(tmp_path):
    """Over a real (in-memory) two-objective study and a real MLflow store: the refit's trial is picked by
    promote.objective (or the user is told to pick); a refit worse than its trial on that objective leaves
    the trial as the candidate; a default run that beats the sweep's model gets a plain "did NOT beat"."""
    import io

    from mlflow import MlflowClient
    from rich.console import Console

    from afina import UserError
    from afina.baselines import payoff
    from afina.search import winner_refit
    from afina.spec import schema as spec_mod

    c = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.create_experiment("tiny", artifact_location=(tmp_path / "artifacts").as_uri())
    prompts = [f"p{i}" for i in range(4)]

    def run(name: str, chrf: list[float]) -> str:
        rid = c.create_run(exp, run_name=name).info.run_id
        c.log_table(rid, {"prompt": prompts, "output": ["a"] * 4, "chrf": chrf}, "samples.json")
        c.log_param(rid, "rows.eval", 8)
        return rid

    study = optuna.create_study(directions=["minimize", "maximize"])
    study.set_user_attr("objectives", ["eval_loss", "chrf"])
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for x, values in ((0.1, [1.0, 30.0]), (0.2, [0.9, 20.0]), (0.3, [1.2, 25.0])):  # trial 1: lowest loss; trial 0: best chrf
        rid = run(f"trial-{len(study.trials)}", [values[1]] * 4)
        study.add_trial(
            optuna.trial.create_trial(
                values=values,
                params={"x": x},
                distributions=dist,
                user_attrs={"mlflow_run_id": rid, "results": {"eval_loss": values[0], "chrf": values[1]}},
            )
        )

    def spec(objective: str | None):
        search = {**tiny_spec()["search"], "objective": ["eval_loss", "chrf"]}  # the study's objectives
        return spec_mod.Spec.model_validate({**tiny_spec(), "search": search, "promote": {"objective": objective}, "budget": {"steps": 40}})

    with pytest.raises(UserError, match=r"objectives \['eval_loss', 'chrf'\]; set promote.objective or run `afina refit SPEC --trial N`"):
        winner_refit.pick(study, spec(None))
    assert winner_refit.pick(study, spec("chrf")).number == 0 and winner_refit.pick(study, spec("eval_loss")).number == 1

    said = io.StringIO()
    console = Console(file=said, width=300)
    trial0 = study.trials[0]
    # the refit of trial 0 has a lower loss but a worse chrf: on promote.objective chrf it does not beat its trial
    worse = run("refit-0", [28.0, 27.0, 29.0, 28.0])
    study.set_user_attr(
        "refit",
        {"state": "COMPLETE", "of": 0, "steps": 20, "run_id": worse, "values": [0.8, 28.0], "results": {"eval_loss": 0.8, "chrf": 28.0}},
    )
    assert winner_refit.prefer(study, spec("chrf"), trial0, console) is trial0
    assert "chrf 28 does not beat the trial's 30; the trial is the candidate" in said.getvalue()
    assert winner_refit.lineage(trial0) == {"afina.source": "trial"}
    assert payoff.sweep_model(study, spec("chrf"))[0] == "trial 0"

    better = run("refit-0b", [33.0, 32.0, 34.0, 33.0])
    study.set_user_attr(
        "refit",
        {
            "state": "COMPLETE",
            "of": 0,
            "of_run_id": trial0.user_attrs["mlflow_run_id"],
            "steps": 20,
            "run_id": better,
            "values": [1.1, 33.0],
            "results": {"eval_loss": 1.1, "chrf": 33.0},
        },
    )
    chosen = winner_refit.prefer(study, spec("chrf"), trial0, console)
    assert isinstance(chosen, winner_refit.Refit) and chosen.user_attrs["mlflow_run_id"] == better
    assert winner_refit.lineage(chosen)["afina.refit_of_run_id"] == trial0.user_attrs["mlflow_run_id"]

    # a default run of equal compute that answers better on chrf, paired prompt by prompt
    ref = run("reference", [40.0, 41.0, 39.0, 42.0])
    study.set_user_attr("reference", {"run_id": ref, "steps": 40, "results": {"eval_loss": 1.0, "chrf": 40.5}})
    parent = c.create_run(exp, run_name="sweep-tiny").info.run_id
    v = payoff.record(spec("chrf"), study, c, parent)
    assert v["model"] == "refit of trial 0" and v["objective"] == "chrf" and not v["beat_objective"]
    rows = {r["metric"]: r for r in v["rows"]}
    assert rows["chrf"]["verdict"] == "worse" and rows["chrf"]["n"] == 4 and rows["chrf"]["diff"] == pytest.approx(33.0 - 40.5)
    assert rows["chrf"]["se"] == pytest.approx(0.9574, abs=1e-3)  # sd of the paired differences (-7, -9, -5, -9) / sqrt(4)
    headline = payoff.headline(v)
    assert (
        headline.startswith("no: the sweep's model (refit of trial 0, ")
        and "did NOT beat one default run of equal compute on the objective (chrf)" in headline
    )
    lines = payoff.lines(study)
    assert lines[1] == f"Did the sweep pay? {headline}" and any(
        line.startswith("  chrf: 33 vs 40.5  -7.5 ± 0.96 (paired SE), n=4  → worse") for line in lines
    )
