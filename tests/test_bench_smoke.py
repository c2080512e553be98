"""A short run of the benchmark harness so it never rots; the figures live in BENCHMARKS.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_search_picks_a_pruner_that_saves_compute(tmp_path):
    import run

    out = run.main(["search", "--quick", "--seeds", "3", "--trials", "12", "--json", str(tmp_path / "s.json")])
    pairs = out["search"]["pairs"]
    assert {"tpe+none", "tpe+median", "tpe+successive_halving", "random+none"} <= set(pairs)
    assert out["search"]["chosen"] in pairs and not out["search"]["chosen"].endswith("+none")
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
