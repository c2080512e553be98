"""End-to-end sweeps on real stores: MLflow SQLite + Optuna SQLite in a temp project, real TRL
training of the tiny random model, real generation. Results are read back with MlflowClient."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from helpers.specs import tiny_spec, write_spec


def client(folder: Path) -> MlflowClient:
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def runs(folder: Path, name: str = "tiny") -> tuple:
    """(parent run, {trial number: child run}) of the spec's experiment."""
    c = client(folder)
    exp = c.get_experiment_by_name(name)
    assert exp is not None
    found = c.search_runs([exp.experiment_id], run_view_type=ViewType.ALL, max_results=1000)
    parents = [r for r in found if r.data.tags.get("afina.role") == "sweep"]
    assert len(parents) == 1, [r.data.tags for r in found]
    children = {int(r.data.tags["afina.trial"]): r for r in found if r.data.tags.get("afina.role") == "trial"}
    others = [r for r in found if r.data.tags.get("afina.role") not in ("sweep", "trial")]
    assert [r.data.tags.get("afina.role") for r in others] in ([], ["baseline"]), "a run that is neither the sweep nor a trial"
    assert len(children) == sum(r.data.tags.get("afina.role") == "trial" for r in found), "two runs for one trial"
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in others)
    return parents[0], children


def study(folder: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}")


def planted(folder: Path, params: list[dict], name: str = "tiny") -> None:
    """Create the study first and enqueue exact trials, the way a user pins a known config."""
    (folder / "mlruns").mkdir(exist_ok=True)
    s = optuna.create_study(study_name=name, storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}", load_if_exists=True)
    for p in params:
        s.enqueue_trial(p)


def scratch_left(folder: Path) -> list[Path]:
    return sorted((folder / "mlruns" / "checkpoints").rglob("trial-*"))


def samples(c: MlflowClient, run_id: str, dst: Path) -> dict:
    path = c.download_artifacts(run_id, "samples.json", str(dst))
    table = json.loads(Path(path).read_text(encoding="utf-8"))
    return dict(zip(table["columns"], zip(*table["data"], strict=True), strict=True))


@pytest.fixture(scope="module")
def swept(tmp_path_factory, afina_cache):
    """One 3-trial sweep shared by the read-only checks below (the CLI in-process, progress on)."""
    from afina.cli.app import main

    folder = tmp_path_factory.mktemp("swept")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        for key in ("AFINA_OPTUNA_STORAGE", "AFINA_TRACKING_URI", "MLFLOW_TRACKING_URI"):
            mp.delenv(key, raising=False)
        # sampled, not greedy: the untrained tiny model's greedy answer is only newlines (stripped to "")
        path = write_spec(folder, tiny_spec(samples={"temperature": 1.0}))
        # both slice choices, whatever the sampler draws: the first two trials are pinned, the third is sampled
        (folder / "mlruns").mkdir()
        pinned = optuna.create_study(study_name="tiny", storage=f"sqlite:///{folder / 'mlruns' / 'optuna.db'}")
        for include in (True, False):
            pinned.enqueue_trial({"train.learning_rate": 1e-3, "slices.poesia.include": include})
        mp.setattr(sys, "argv", ["afina", "sweep", str(path)])  # progress display on, not a tty
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code
    assert code in (0, None), out.getvalue()
    return folder, out.getvalue()


def test_sweep_parent_and_children(swept):
    folder, out = swept
    parent, children = runs(folder)
    assert sorted(children) == [0, 1, 2]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["afina.study"] == "tiny"
    for n, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["afina.state"] == "COMPLETE"
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"trial-{n}"
    # the parent knows the best trial, and it is the trial with the lowest objective
    s = study(folder)
    assert parent.data.metrics["best_value"] == pytest.approx(s.best_value)
    assert parent.data.tags["afina.best_trial"] == str(s.best_trial.number)
    assert parent.data.tags["afina.best_run_id"] == children[s.best_trial.number].info.run_id
    assert "tiny · 3 trials" in out and "afina ui" in out
    # no ablation ran: the sweep names the one that decides, with its cost (2 arms x 5 seeds of 4 x 4 steps)
    said = " ".join(out.split())
    assert "--seeds 5 --steps 16` decides" in said and "(10 runs of 16 steps, the compute of about 40 trials)" in said, said[-1500:]
    exp = parent.info.experiment_id
    assert f"#/experiments/{exp}/runs?workflowType=machine_learning&viewStateShareKey=afina" in out.replace("\n", "")
    # the runs table's view: the objective's column, then the searched params (MLflow's shared-view tag)
    view = json.loads(client(folder).get_experiment(exp).tags["mlflow.sharedViewState.afina"])
    assert view["selectedColumns"][0] == "metrics.`best_eval_loss`" and "params.`slices.poesia.include`" in view["selectedColumns"]
    note = parent.data.tags["mlflow.note.content"]
    best_run = children[s.best_trial.number].info.run_id
    assert note.startswith(f"**Winner: [trial {s.best_trial.number}](#/experiments/{exp}/runs/{best_run}?workflowType=machine_learning)**")
    # every link afina writes keeps MLflow's model-training layout (a bare one opens the run in the GenAI layout)
    links = re.findall(r"#/experiments/[^)\s]*", out.replace("\n", "") + note)
    assert links and all("?workflowType=machine_learning" in x for x in links), links
    assert "3 trials: 3 complete, 0 pruned, 0 failed" in note and "**Data:**" in note
    assert parent.data.metrics["trials_complete"] == 3 and parent.data.metrics["best_eval_loss"] == pytest.approx(s.best_value)
    # the sweep's row fills the trials' columns with its winner's numbers
    won = s.best_trial.user_attrs["results"]
    assert {k: parent.data.metrics[k] for k in ("rougeL", "chrf", "length")} == pytest.approx(
        {k: won[k] for k in ("rougeL", "chrf", "length")}
    )
    assert not scratch_left(folder)


def test_sweep_trials_carry_run_ids(swept):
    folder, _ = swept
    _, children = runs(folder)
    trials = study(folder).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for t in trials:
        run = children[t.number]
        assert t.user_attrs["mlflow_run_id"] == run.info.run_id
        assert t.user_attrs["data_fingerprint"] == run.data.params["data.fingerprint"]
        # each resolved field once; the searched ones are named by a tag and the description
        assert float(run.data.params["train.learning_rate"]) == pytest.approx(t.params["train.learning_rate"])
        assert not [k for k in run.data.params if k.startswith("param.")]
        assert run.data.tags["afina.searched"] == "train.learning_rate, slices.poesia.include"
        note = run.data.tags["mlflow.note.content"]
        assert f"**trial {t.number}** · COMPLETE · rank " in note and "`train.learning_rate` = " in note and "Result: " in note
        assert run.data.params["slices.poesia.include"] == json.dumps(t.params["slices.poesia.include"])
        assert not {"epoch", "eval_runtime", "num_input_tokens_seen"} & set(run.data.metrics)  # Trainer's counters stay out
        assert run.data.metrics["best_eval_loss"] == pytest.approx(t.value)
        # MLflow's run page lists metrics as first logged: the results the reader wants come before the curves
        assert list(run.data.metrics)[:4] == ["best_eval_loss", "rougeL", "chrf", "length"], list(run.data.metrics)
        # the runs table's Dataset column: every slice the trial trained on, with its rows, and the eval set
        used = {d.dataset.name: d for d in run.inputs.dataset_inputs}
        trained = {n for n in ("faq", "productos", "poesia") if int(run.data.params[f"rows.{n}"])}
        assert set(used) == trained | {"eval"}, used
        for name, d in used.items():
            assert [(tag.key, tag.value) for tag in d.tags] == [("mlflow.data.context", "eval" if name == "eval" else "training")]
            rows = run.data.params["rows.eval" if name == "eval" else f"rows.{name}"]
            assert json.loads(d.dataset.profile) == {"num_rows": int(rows)}
            assert d.dataset.digest == run.data.params["data.eval" if name == "eval" else f"data.slice.{name}"][:36]


def test_sweep_params_follow_slice_choices(swept):
    folder, _ = swept
    _, children = runs(folder)
    prints = {}
    for run in children.values():
        p = run.data.params
        assert {
            "train.max_steps",
            "lora.r",
            "model.ref",
            "rows.faq",
            "rows.productos",
            "rows.poesia",
            "rows.train",
            "rows.eval",
            "data.slice.faq",
            "data.eval",
        } <= set(p)
        assert p["train.max_steps"] == "4" and p["lora.r"] == "4" and p["model.ref"] == "tiny-random"
        assert p["rows.eval"] == "8"
        rows = {k: int(p[f"rows.{k}"]) for k in ("faq", "productos", "poesia")}
        assert int(p["rows.train"]) == sum(rows.values())
        included = json.loads(p["slices.poesia.include"])
        assert (rows["poesia"] > 0) == included
        assert run.data.tags["afina.data_fingerprint"] == p["data.fingerprint"]
        prints.setdefault(included, set()).add(p["data.fingerprint"])
    # the fingerprint is a function of the rows: same slice choice, same print; the other choice, another print
    assert set(prints) == {True, False}, prints  # the fixture pins one trial of each
    assert all(len(v) == 1 for v in prints.values()), prints
    assert prints[True] != prints[False]


def test_sweep_curves(swept):
    folder, _ = swept
    c = client(folder)
    _, children = runs(folder)
    for run in children.values():
        for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second"):
            history = c.get_metric_history(run.info.run_id, key)
            assert len(history) == 4, key  # logged every step of max_steps 4
            assert sorted(m.step for m in history) == [1, 2, 3, 4]
        evals = c.get_metric_history(run.info.run_id, "eval_loss")
        assert sorted(m.step for m in evals) == [2, 4]  # eval_steps 2
        assert all(m.value > 0 for m in c.get_metric_history(run.info.run_id, "tokens_per_second"))
        assert run.data.metrics["best_eval_loss"] == pytest.approx(min(m.value for m in evals))


def test_sweep_samples_table(swept, tmp_path):
    folder, _ = swept
    c = client(folder)
    _, children = runs(folder)
    base = samples(c, study(folder).user_attrs["baseline_run_id"], tmp_path / "base")
    for n, run in children.items():
        table = samples(c, run.info.run_id, tmp_path / str(n))
        assert list(table)[:4] == ["prompt", "reference", "base", "output"]  # the Evaluation view groups by the first
        assert table["base"] == base["output"]  # the base model's answers, from the baseline run
        assert table["prompt"] == ("Describe una camiseta básica blanca", "¿Puedo devolver un pedido?")
        assert table["reference"] == ("Una camiseta.", "")
        assert all(isinstance(o, str) and o.strip() for o in table["output"]), table["output"]


def test_sweep_checkpoint_artifact(swept, tmp_path):
    import yaml

    folder, _ = swept
    c = client(folder)
    _, children = runs(folder)
    for run in children.values():
        assert run.data.tags["afina.checkpoint"] == "checkpoint"
        names = {Path(a.path).name for a in c.list_artifacts(run.info.run_id, "checkpoint")}
        assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "afina-spec.yaml"} <= names
        assert not any(n.startswith("checkpoint-") for n in names)
        # safetensors and text only: the pickled training_args.bin (it holds train.hub_token) never leaves the machine
        assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))], names
    run = children[0]
    spec_file = c.download_artifacts(run.info.run_id, "checkpoint/afina-spec.yaml", str(tmp_path))
    kept = yaml.safe_load(Path(spec_file).read_text(encoding="utf-8"))
    assert kept["name"] == "tiny" and set(kept["trial_params"]) == {"train.learning_rate", "slices.poesia.include"}


def test_status_leaderboard(swept, cli, monkeypatch):
    folder, _ = swept
    monkeypatch.chdir(folder)
    code, out, err = cli("status", "spec.yaml")
    assert code == 0, err
    assert "tiny · 3 trials" in out
    for t in study(folder).get_trials():
        assert t.user_attrs["mlflow_run_id"][:12] in out
    assert out.count("COMPLETE") == 3


def test_status_without_study(project, cli):
    write_spec(project, tiny_spec())
    code, out, err = cli("status", "spec.yaml")
    assert code == 2
    assert err.startswith("error: no Optuna storage at") and err.count("\n") == 1
    assert not (project / "mlruns").exists()  # status never creates a store

    (project / "mlruns").mkdir()
    optuna.create_study(study_name="other", storage="sqlite:///mlruns/optuna.db")
    code, out, err = cli("status", "spec.yaml")
    assert code == 2
    assert err.startswith("error: no study named 'tiny'") and err.count("\n") == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[str]:
    """The command lines of every process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])  # field 4, after "(comm)"
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            with contextlib.suppress(OSError):
                out.append((Path("/proc") / str(child) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return out


def test_ui_serves_the_store(swept):
    folder, _ = swept
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "afina", "ui", "--port", str(port)],
        cwd=folder,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline, status = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    status = r.status
                    break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-2000:]
        assert status == 200
        # the server reads the sweep's store: its REST API lists the experiment
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get-by-name?experiment_name=tiny", timeout=10
        ) as r:
            assert json.load(r)["experiment"]["name"] == "tiny"
        # one server process with one worker, and no job runner beside it (a 2-core machine serves one person)
        cmds = descendants(proc.pid)
        servers = [c for c in cmds if "uvicorn" in c or "gunicorn" in c]
        assert len(servers) == 1 and "--workers 1" in servers[0], cmds
        assert len(cmds) == 2 and not [c for c in cmds if "huey" in c or "job" in c], cmds  # `mlflow ui` and its server
        # SIGTERM to `afina ui` alone reaches the server it started: it stops, and nothing keeps the port
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        printed = proc.stdout.read().decode(errors="replace")
        assert f"tiny: http://127.0.0.1:{port}/#/experiments/1/runs?workflowType=machine_learning&viewStateShareKey=afina" in printed
        # a quiet start: MLflow's registry note, Starlette's deprecation and uvicorn's INFO lines only with --verbose
        for chatter in ("Registry store URI not provided", "StarletteDeprecationWarning", "INFO:"):
            assert chatter not in printed, printed
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # mlflow ui runs a server child process
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_ui_without_store(project, cli):
    code, out, err = cli("ui", "--port", str(_free_port()))
    assert code == 2
    assert err.startswith("error: no MLflow store") and err.count("\n") == 1
    assert not (project / "mlruns").exists()


def test_planted_pruning(project, cli):
    spec = tiny_spec(
        search={
            "n_trials": 3,
            "pruner": "median",
            "pruner_args": {"n_startup_trials": 2, "n_warmup_steps": 0},
            "space": {"train.learning_rate": {"float": [1e-8, 1e-2], "log": True}},
        }
    )
    planted(project, [{"train.learning_rate": 1e-2}, {"train.learning_rate": 5e-3}, {"train.learning_rate": 1e-8}])
    code, out, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 0, err
    trials = study(project).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"], [(t.state, t.intermediate_values) for t in trials]
    pruned = trials[2]
    assert list(pruned.intermediate_values) == [2]  # stopped at its first evaluation, not trained to the end
    assert pruned.user_attrs["prune_reason"].startswith("pruned at step 2")
    _, children = runs(project)
    run = children[2]
    assert run.info.status == "KILLED"
    assert run.data.tags["afina.state"] == "PRUNED"
    assert run.data.tags["afina.reason"].startswith("pruned at step 2")
    assert run.info.run_id == pruned.user_attrs["mlflow_run_id"]
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("**trial 2** · PRUNED") and "Stopped: pruned at step 2" in note
    assert client(project).get_metric_history(run.info.run_id, "loss")[-1].step == 2
    assert math.isnan(run.data.metrics["best_eval_loss"])  # reserved at the start, never measured: NaN, not a number
    assert not scratch_left(project)
    assert "trial 2 pruned: pruned at step 2" in out


def test_planted_nan_fails_and_sweep_goes_on(project, cli, tmp_path):
    spec = tiny_spec(search={"n_trials": 3, "space": {"train.learning_rate": {"float": [1e-4, 1e6], "log": True}}})
    # lr 1e3: the step-2 eval is finite (and its checkpoint saved), the loss is NaN by step 4
    planted(project, [{"train.learning_rate": 5e-3}, {"train.learning_rate": 1e3}, {"train.learning_rate": 1e-3}])
    code, out, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 0, err
    trials = study(project).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    failed = trials[1]
    assert "FloatingPointError" in failed.user_attrs["fail_reason"] and "nan" in failed.user_attrs["fail_reason"]
    parent, children = runs(project)
    run = children[1]
    assert run.info.status == "FAILED"
    assert run.data.tags["afina.state"] == "FAIL"
    assert "nan" in run.data.tags["afina.reason"]
    c = client(project)
    error = Path(c.download_artifacts(run.info.run_id, "error.txt", str(tmp_path))).read_text(encoding="utf-8")
    assert "FloatingPointError" in error and "Traceback" in error
    assert not [a for a in c.list_artifacts(run.info.run_id) if a.path == "checkpoint"]
    assert [m.step for m in c.get_metric_history(run.info.run_id, "eval_loss")] == [2]  # a checkpoint was written...
    assert [children[n].info.status for n in (0, 2)] == ["FINISHED", "FINISHED"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["afina.best_trial"] in ("0", "2")
    assert not scratch_left(project)  # ...and removed with the failed trial
    assert "trial 1 fail: FloatingPointError" in out


def test_resume_adds_only_new_trials(project, cli):
    path = write_spec(project, tiny_spec(search={"n_trials": 2}))
    code, _, err = cli("sweep", path, "--no-progress")
    assert code == 0, err
    parent, first = runs(project)
    assert sorted(first) == [0, 1]
    before = {n: r.info.run_id for n, r in first.items()}
    params = [t.params for t in study(project).get_trials()]

    code, out, err = cli("sweep", path, "--n-trials", "4", "--no-progress")
    assert code == 0, err
    again, children = runs(project)  # asserts a single parent run
    assert again.info.run_id == parent.info.run_id and again.info.status == "FINISHED"
    assert sorted(children) == [0, 1, 2, 3]
    assert {n: children[n].info.run_id for n in (0, 1)} == before  # the old trials were not re-run
    trials = study(project).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert [t.params for t in trials[:2]] == params
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in children.values()}

    # a third run with the budget spent adds nothing
    code, out, err = cli("sweep", path, "--n-trials", "4", "--no-progress")
    assert code == 0, err
    assert "all 4 trials are done" in out
    assert len(study(project).get_trials()) == 4 and len(runs(project)[1]) == 4


def test_all_slices_excluded_is_pruned(project, cli):
    slices = tiny_spec()["data"]["slices"]
    spec = tiny_spec(
        data={"slices": {"faq": slices["faq"], "poesia": slices["poesia"]}, "eval": tiny_spec()["data"]["eval"]},
        search={
            "n_trials": 1,
            "space": {"slices.faq.include": {"categorical": [True, False]}, "slices.poesia.include": {"categorical": [True, False]}},
        },
    )
    planted(project, [{"slices.faq.include": False, "slices.poesia.include": False}])
    code, out, err = cli("sweep", write_spec(project, spec), "--progress")  # progress on, not a tty
    assert code == 0, err
    [trial] = study(project).get_trials()
    assert trial.state.name == "PRUNED"
    assert "every slice is excluded" in trial.user_attrs["prune_reason"]
    parent, children = runs(project)
    assert children[0].info.status == "KILLED" and children[0].data.tags["afina.state"] == "PRUNED"
    assert "every slice is excluded" in children[0].data.tags["afina.reason"]
    assert children[0].data.params["rows.train"] == "0"
    assert parent.info.status == "FINISHED"
    assert "trial 0 pruned: every slice is excluded" in out


def test_default_pruner_rungs_start_at_the_first_evaluation():
    """Successive halving judges a trial at its first evaluation even while its peer is still running
    (Optuna's min_resource="auto" prunes nothing until some trial has finished)."""
    from afina.search import study as study_mod
    from afina.spec.schema import Search
    from afina.training import schedule

    def second_is_pruned(search: Search, first_eval: int | None) -> bool:
        study = optuna.create_study(pruner=study_mod.pruner(search, first_eval))
        leader, follower = study.ask(), study.ask()
        leader.report(1.0, 5)  # still running: nothing has finished yet
        assert not leader.should_prune()  # afina asks after every evaluation, which enters the trial in the rung
        follower.report(2.0, 5)
        return follower.should_prune()

    space = {"train.learning_rate": {"float": [1e-5, 1e-3], "log": True}}
    assert Search(space=space).pruner == "successive_halving"
    assert second_is_pruned(Search(space=space), first_eval=5)
    assert not second_is_pruned(Search(space=space), first_eval=None)  # Optuna's auto
    assert not second_is_pruned(Search(space=space, pruner_args={"min_resource": "auto"}), first_eval=5)
    assert not second_is_pruned(Search(space=space, pruner_args={"min_resource": 10}), first_eval=5)  # the user's rung wins
    assert not second_is_pruned(Search(space=space, pruner="median", pruner_args={"n_startup_trials": 1}), first_eval=5)

    assert schedule.eval_every({"max_steps": 10, "eval_steps": 5}, 300) == 5
    assert schedule.eval_every({"max_steps": 10}, 300) == 1  # LoRA, eval set free: every step of a short trial
    assert schedule.eval_every({"max_steps": 10}, 300, full=True) == 2  # full: 4 checkpoints a trial
    assert schedule.eval_every({"max_steps": 300}, 3000, n_eval=12) == 25  # 12 reports; each eval about 2 % of 25 steps
    assert schedule.eval_every({"max_steps": 300}, 3000, n_eval=120) == 75  # a large eval set: 4 reports
    assert schedule.eval_every({"max_steps": 300}, 3000, n_eval=60) == 50  # 60 eval rows cost 2.5 training steps: 5 % of 50
    assert schedule.eval_every({"per_device_train_batch_size": 8, "num_train_epochs": 1}, 100, n_eval=12) == 3  # 13 steps


def test_default_pruner_stops_a_bad_trial_at_its_first_evaluation(project, cli):
    spec = tiny_spec(search={"n_trials": 2, "space": {"train.learning_rate": {"float": [1e-8, 1e-2], "log": True}}})
    del spec["search"]["pruner"]  # afina's default
    planted(project, [{"train.learning_rate": 5e-3}, {"train.learning_rate": 1e-8}])
    code, out, err = cli("sweep", write_spec(project, spec), "--no-progress")
    assert code == 0, err
    first, second = study(project).get_trials()
    assert (first.state.name, second.state.name) == ("COMPLETE", "PRUNED"), [(t.state, t.intermediate_values) for t in (first, second)]
    assert list(first.intermediate_values) == [2, 4] and list(second.intermediate_values) == [2]
    assert second.user_attrs["prune_reason"].startswith("pruned at step 2")
