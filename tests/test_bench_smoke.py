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


def test_overhead_and_logging_run_and_report_ratios(afina_cache, tmp_path):
    import run

    out = run.main(["overhead", "--quick", "--json", str(tmp_path / "o.json")])["overhead"]
    assert out["ratio_tokens_per_s"] > 0 and out["bare_tokens_per_s"] > 0
    assert out["eval_loss_afina"] == out["eval_loss_bare"]  # same model, rows, seed and config
    log = run.main(["logging", "--quick", "--steps", "1"])["logging"]
    assert log["ratio_train_wall"] > 0


def test_cli_timings_on_a_study(tmp_path):
    import run

    out = run.main(["cli", "--quick", "--trials", "20", "--repeats", "1"])["cli"]
    assert out["status_trials"] == 20 and out["help_s_median"] > 0 and out["status_s_median"] > 0


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
