"""`afina init` writes a working, commented spec from a bare data file; the shipped bitext example runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from afina import data
from afina.spec import schema as spec_mod
from helpers.specs import ROOT, SHARED_DATA, write_spec

BITEXT = SHARED_DATA / "bitext-customer-support" / "customer_support.csv"
needs_bitext = pytest.mark.skipif(not BITEXT.is_file(), reason="../shared/data/bitext-customer-support is absent")


@pytest.fixture
def tickets(project) -> Path:
    lines = ["instruction,response,category,agent"]
    for cat, n in (("REFUND", 30), ("ORDER", 20), ("SHIPPING ADDRESS", 10)):
        lines += [f"question {i} about {cat.lower()},answer {i} about {cat.lower()} with details,{cat},agent{i}" for i in range(n)]
    path = project / "inbox" / "tickets.csv"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_init_writes_a_spec_that_loads_and_checks(tickets, cli, project):
    code, out, err = cli("init", tickets, "--model", "tiny-random")
    assert code == 0, err
    target = project / "experiments" / "tickets.yaml"
    text = target.read_text(encoding="utf-8")
    assert text.splitlines()[0] == "# afina sweep experiments/tickets.yaml" and "check: 0 errors" in out
    spec = spec_mod.load(target)
    assert sorted(spec.data.slices) == ["order", "refund", "shipping_address"]  # one slice per category value
    s = spec.data.slices["shipping_address"]
    assert s.path == "../inbox/tickets.csv" and s.where == {"category": "SHIPPING ADDRESS"}
    assert s.columns == {"prompt": "instruction", "completion": "response"}
    assert spec.data.eval.split == 0.1 and spec.model.ref == "tiny-random"
    assert set(spec.search.space) == {"train.learning_rate", "lora.r", *(f"slices.{n}.weight" for n in spec.data.slices)}
    prepared = data.prepare(spec)
    held = {m["content"] for r in prepared.eval for m in r.messages}
    assert len(spec.samples.prompts) == 3 and all(p.prompt in held and p.reference in held for p in spec.samples.prompts)
    assert spec.budget.steps == 8 * 30 + 60 and spec.budget.refit == 0.2  # every trial fits, then a refit of 2 trials' length
    assert int(spec.budget.steps * (1 - spec.budget.refit)) >= spec.search.n_trials * spec.train["max_steps"]
    assert "about 8.9 epochs" in text  # what the refit buys: 60 steps x 8 rows over 54 training rows
    assert "\n# baseline: {default_run: true}\n" in text and "twice as long" in text  # the default run, off, with its cost
    on = project / "experiments" / "on.yaml"
    on.write_text(text.replace("\n# baseline:", "\nbaseline:"), encoding="utf-8")
    assert spec_mod.load(on).baseline.default_run is True
    code, _, err = cli("init", tickets)
    assert code == 2 and "already exists; pass --force" in err
    assert target.read_text(encoding="utf-8") == text
    target.write_text("# my own edits\n" + text.replace("max_steps: 30", "max_steps: 99"), encoding="utf-8")
    code, out, err = cli("init", tickets, "--model", "tiny-random", "--force", "--name", "tickets")
    assert code == 0, err
    assert target.read_text(encoding="utf-8") == text  # overwritten with a fresh spec: the edits are gone
    assert "check: 0 errors" in out and spec_mod.load(target).train["max_steps"] == 30


def test_an_init_spec_sweeps_and_refits(tickets, cli, project):
    code, _, err = cli("init", tickets, "--model", "tiny-random")
    assert code == 0, err
    code, out, err = cli("sweep", project / "experiments" / "tickets.yaml", "--no-progress", "--n-trials", "2")
    assert code == 0, err
    c = MlflowClient(f"sqlite:///{project}/mlruns/mlflow.db")
    runs = c.search_runs(c.get_experiment_by_name("tickets").experiment_id, "tags.`afina.role` = 'refit'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["train.max_steps"] == str(300 - 2 * 30)  # the budget's rest after two trials


def test_a_first_init_is_quiet(tickets, project, tmp_path):
    """The first init builds the embedded model: its loading and shard-writing bars show only with --verbose."""
    env = {**os.environ, "AFINA_CACHE": str(tmp_path / "fresh-cache")}
    cmd = [sys.executable, "-m", "afina", "init", str(tickets), "--model", "tiny-random"]
    done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "fresh-cache" / "models").is_dir()  # it did build the model
    printed = done.stdout + done.stderr
    assert "Loading weights" not in printed and "Writing model shards" not in printed, printed[-2000:]


def test_init_on_chats_without_a_category_makes_one_slice(project, cli):
    rows = [
        {"messages": [{"role": "user", "content": f"pregunta {i}"}, {"role": "assistant", "content": f"respuesta número {i}"}]}
        for i in range(20)
    ]
    (project / "chats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, _, err = cli("init", project / "chats.jsonl", "--model", "tiny-random", "--name", "mine")
    assert code == 0, err
    spec = spec_mod.load(project / "experiments" / "mine.yaml")
    assert list(spec.data.slices) == ["chats"] and "slices.chats.weight" not in spec.search.space


def test_init_refuses_what_it_cannot_read(project, cli):
    (project / "odd.csv").write_text("foo,bar\n1,2\n", encoding="utf-8")
    code, _, err = cli("init", project / "odd.csv", "--model", "tiny-random")
    assert code == 2 and "cannot tell the format from columns ['bar', 'foo']" in err
    code, _, err = cli("init", project / "missing.jsonl")
    assert code == 2 and "no such file" in err
    assert not (project / "experiments").exists()


def test_every_shipped_spec_starts_with_its_command_and_loads():
    for path in sorted((ROOT / "experiments").glob("*.yaml")):
        assert path.read_text(encoding="utf-8").splitlines()[0] == f"# afina sweep experiments/{path.name}"
        spec_mod.load(path)


@needs_bitext
def test_init_on_bitext_proposes_category_slices(project, cli):
    code, out, err = cli("init", BITEXT, "--model", "tiny-random", "--name", "bitext")
    assert code == 0, err
    spec = spec_mod.load(project / "experiments" / "bitext.yaml")
    assert len(spec.data.slices) == 11 and spec.data.slices["refund"].where == {"category": "REFUND"}


@needs_bitext
def test_customer_support_example_sweeps_category_weights(project, cli):
    raw = yaml.safe_load((ROOT / "experiments" / "customer_support.yaml").read_text(encoding="utf-8"))
    for s in raw["data"]["slices"].values():
        assert (ROOT / "experiments" / s["path"]).resolve() == BITEXT.resolve()
        s["path"], s["max_rows"] = str(BITEXT), 24
    raw["model"]["ref"], raw["search"]["n_trials"] = "tiny-random", 2
    raw["train"].update(max_steps=2, eval_steps=1, max_length=128)
    raw["data"]["eval"]["max_rows"] = 8
    raw["samples"]["max_new_tokens"] = 4
    code, _, err = cli("sweep", write_spec(project, raw), "--no-progress")
    assert code == 0, err
    c = MlflowClient(f"sqlite:///{Path('mlruns/mlflow.db').resolve()}")
    runs = c.search_runs(c.get_experiment_by_name("customer_support").experiment_id, "tags.`afina.role` = 'trial'")
    assert len(runs) == 2
    for run in runs:
        p = run.data.params
        assert {f"slices.{n}.weight" for n in raw["data"]["slices"]} <= set(p)
        assert int(p["rows.train"]) == sum(int(p[f"rows.{n}"]) for n in raw["data"]["slices"]) > 0
        # a constant learning rate is a param, not a flat curve that MLflow's chart draws at "0"
        assert float(p["train.learning_rate"]) > 0 and "learning_rate" not in run.data.metrics and "loss" in run.data.metrics
