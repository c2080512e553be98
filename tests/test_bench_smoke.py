"""A short run of the benchmark harness so it never rots; the figures live in BENCHMARKS.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_search_picks_a_pruner_that_saves_compute(tmp_path):
    import run

    out = run.main(["search", "--quick", "--seeds", "3", "--trials", "12", "--json", str(tmp_path / "s.json")])
    pairs = out["search"]["pairs"]
    assert {"tpe+none", "tpe+median", "tpe+successive_halving", "random+none"} <= set(pairs)
    assert out["search"]["chosen"] in pairs and not out["search"]["chosen"].endswith("+none")
    limits = out["search"]["bounds"]  # stopping every loser at once is the floor of peer pruning on the same path
    assert 0 < limits["oracle"] <= limits["records (path)"] and limits["records (live)"] > 0
    assert json.loads((tmp_path / "s.json").read_text())["search"]["chosen"] == out["search"]["chosen"]


@pytest.fixture
def bench_folders(tmp_path, monkeypatch):
    """The harness's scratch folders land in tmp_path; returns its stores' folders (afina-bench-*), in order."""
    import tempfile

    real, made = tempfile.mkdtemp, []

    def mkdtemp(suffix=None, prefix=None, dir=None):
        path = real(suffix, prefix, dir or tmp_path)
        if dir is None and (prefix or "").startswith("afina-bench-"):
            made.append(Path(path))
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    return made


def _bench_runs(folder: Path) -> dict:
    """{trial number: MLflow run} of a Bench's store."""
    from mlflow import MlflowClient

    c = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    found = c.search_runs([c.get_experiment_by_name("bench").experiment_id])
    return c, {int(r.info.run_name.removeprefix("trial-")): r for r in found if r.info.run_name.startswith("trial-")}


def test_overhead_and_logging_run_and_report_ratios(afina_cache, tmp_path, bench_folders):
    import run

    out = run.main(["overhead", "--quick", "--json", str(tmp_path / "o.json")])["overhead"]
    assert out["eval_loss_afina"] == out["eval_loss_bare"]  # same model, rows, seed and config
    _, trials = _bench_runs(bench_folders[0])
    (afina_run,) = trials.values()  # one afina trial (--quick: no warm-up pair); the bare side logs nowhere
    m = afina_run.data.metrics
    assert out["afina_tokens_per_s"] == pytest.approx(m["train_tokens"] / m["train_runtime"])
    assert out["ratio_tokens_per_s"] == pytest.approx(out["afina_tokens_per_s"] / out["bare_tokens_per_s"])
    assert json.loads((tmp_path / "o.json").read_text())["overhead"]["ratio_tokens_per_s"] == out["ratio_tokens_per_s"]

    log = run.main(["logging", "--quick", "--steps", "1"])["logging"]
    assert len(bench_folders) == 2  # overhead's store, then logging's
    c, trials = _bench_runs(bench_folders[1])
    assert sorted(trials) == [0, 1]  # with logging, then without
    curves = {n: c.get_metric_history(r.info.run_id, "loss") for n, r in trials.items()}
    assert [len(curves[0]), len(curves[1])] == [1, 0]  # the per-step curve only where logging is on
    assert all("best_eval_loss" in r.data.metrics for r in trials.values())  # final results: both
    with_, without = (trials[n].data.metrics["train_runtime"] for n in (0, 1))
    assert log["steps"] == 1 and log["train_s_logging"] == with_ and log["train_s_no_logging"] == without
    assert log["ratio_train_wall"] == pytest.approx(with_ / without)


def test_cli_timings_on_a_study(tmp_path, bench_folders, monkeypatch):
    """The timed commands succeed and say what they should: the help, and a status of the 20 made-up trials."""
    import subprocess

    import run

    seen, real = [], subprocess.run

    def spy(cmd, *args, **kw):
        done = real(cmd, *args, **kw)
        seen.append((cmd, done))
        return done

    monkeypatch.setattr(subprocess, "run", spy)
    out = run.main(["cli", "--quick", "--trials", "20", "--repeats", "1"])["cli"]
    assert out["status_trials"] == 20 and out["help_s_median"] > 0 and out["status_s_median"] > 0
    helps = [done for cmd, done in seen if cmd[-1] == "--help"]
    (status,) = [done for cmd, done in seen if "status" in cmd]
    assert len(helps) == 2 and all(h.stdout.startswith("Usage: afina") and " sweep " in h.stdout for h in helps)
    assert "status200 · 20 trials" in status.stdout, status.stdout
    # the table, best first: the 15 complete trials by value (1 + n/1000), then the 5 pruned ones (every 4th)
    rows = [cells for line in status.stdout.splitlines() if len(cells := [c.strip() for c in line.split("│")[1:-1]]) == 6]
    complete = [n for n in range(20) if n % 4]
    assert [(int(r[0]), r[1]) for r in rows] == [(n, "COMPLETE") for n in complete] + [(n, "PRUNED") for n in range(0, 20, 4)]
    for number, _, value, lr, _, _ in rows:
        n = int(number)
        assert float(lr) == pytest.approx(1e-4 * (1 + n % 17))
        if n % 4:
            assert float(value) == pytest.approx(1 + n / 1000)
        else:
            assert value == "-"


def test_defaults_full_fine_tuning_and_padding_free_keep_the_eval_loss(afina_cache):
    """afina's defaults vs TRL's: same loss; padding-free under SDPA gives the loss of padded batches."""
    import run

    full = run.main(["defaults", "--quick", "--steps", "2", "--method", "full"])["defaults"]
    defaults = full["device_defaults"]  # the name depends on the transformers release (renamed to activation_checkpointing)
    assert defaults.get("activation_checkpointing", defaults.get("gradient_checkpointing")) is False
    assert full["relative_diff"] < 1e-6 and full["ratio_tokens_per_s"] > 0
    free = run.main(["defaults", "--quick", "--steps", "2", "--padding-free"])["defaults"]
    assert free["shape"]["train"] == {"padding_free": True}
    assert free["relative_diff"] < 1e-5  # attention never crosses the flattened rows


@pytest.mark.slow  # SmolLM2's full size: a minute of building, saving and training 135M parameters
def test_random_weight_architecture_and_its_parameter_count(afina_cache):
    """The GPU harness's random SmolLM2-135M: real architecture, and MFU's N matches the model's parameters."""
    import json

    import common
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(common.model_ref("random:smollm2-135m"))
    assert common.model_ref("random:smollm2-135m") == str(folder)  # built once, then reused
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    real = sum(p.numel() for p in model.parameters())  # tied embeddings are counted once
    assert common._param_count(json.loads((folder / "config.json").read_text())) == real
    assert 130e6 < real < 140e6
    from transformers import AutoConfig

    cfg = {**json.loads((folder / "config.json").read_text()), **common.CONFIGS["0.7b"]}
    with torch.device("meta"):  # the 0.7B config's parameters, counted without allocating them
        big = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    assert common._param_count(cfg) == sum(p.numel() for p in big.parameters()) > 0.5e9
    import run

    out = run.main(["defaults", "--quick", "--model", "random:smollm2-135m", "--steps", "1", "--batch", "2", "--max-length", "128"])[
        "defaults"
    ]
    assert out["relative_diff"] < 1e-6


def test_answers_compares_answer_only_with_all_token_loss(afina_cache):
    import run

    out = run.main(["answers", "--quick", "--steps", "2"])["answers"]["quickstart"]
    for mode in ("answer_only", "all_tokens"):
        assert {"answer_nll", "rougeL", "chrf", "eval_loss"} <= set(out[mode])
    assert out["n_prompts"] == out["n_eval_rows"] == 24
    assert out["answer_only"]["eval_loss"] == pytest.approx(out["answer_only"]["answer_nll"], rel=0.02)
