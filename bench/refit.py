"""Search + refit vs one default run of equal total compute, per shipped spec and seed.

For each seed: `afina sweep` with `budget: {steps: B, refit: R}` (search seed, training seed = the
seed), then one default run trained for exactly the steps the sweep spent (budget.sweep_steps): the
run `baseline: {default_run: true}` trains (baselines/default_run.default_spec): TRL's SFTConfig
defaults at the method's documented learning rate (2e-4 for LoRA, 2e-5 for full), PEFT's LoraConfig
defaults on all linear layers, the spec's batch size, max_length and loss, and the same data (every
slice at its spec setting). Both are evaluated the same way: eval loss on the spec's eval set, and ROUGE-L /
chrF of greedy answers to held-out prompts (the spec's samples plus up to `prompts` rows of its
eval set, answer = reference). payoff.record compares them, as `afina status` does.
"""

from __future__ import annotations

import io
import json
import statistics
import tempfile
from pathlib import Path


def compare(
    spec_path: Path, model: str, budget: int, share: float, seeds: int, trial_steps: int | None, prompts: int, first_seed: int = 0
) -> dict:
    out = {"spec": spec_path.name, "budget_steps": budget, "refit_share": share, "seeds": []}
    for seed in range(first_seed, first_seed + seeds):
        out["seeds"].append(_one(spec_path, model, budget, share, seed, trial_steps, prompts))
        print(f"  {spec_path.stem} seed {seed}: {json.dumps(out['seeds'][-1]['summary'])}", flush=True)
    for metric in ("eval_loss", "rougeL", "chrf"):
        diffs = [s["rows"][metric]["diff"] for s in out["seeds"] if metric in s["rows"]]
        if diffs:
            out[metric] = {
                "sweep_minus_default_mean": statistics.mean(diffs),
                "sd": statistics.stdev(diffs) if len(diffs) > 1 else None,
                "sweep_better": sum(s["rows"][metric]["verdict"] == "better" for s in out["seeds"] if metric in s["rows"]),
                "seeds": len(diffs),
            }
    return out


def _one(spec_path: Path, model: str, budget: int, share: float, seed: int, trial_steps: int | None, n_prompts: int) -> dict:
    import time

    import common
    import yaml
    from rich.console import Console

    from afina import data
    from afina.baselines import payoff
    from afina.commands import sweep
    from afina.search import budget as budget_mod
    from afina.search import study as study_mod
    from afina.search import winner_refit
    from afina.spec import schema as spec_mod

    folder = Path(tempfile.mkdtemp(prefix="afina-bench-refit-"))
    raw = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    raw["name"] = f"{raw['name']}-{seed}"
    raw["model"]["ref"] = common.model_ref(model)
    raw["train"]["seed"] = seed
    if trial_steps:
        raw["train"]["max_steps"], raw["train"]["eval_steps"] = trial_steps, max(1, trial_steps // 2)
    raw["search"].update(seed=seed, n_trials=1000)  # the budget decides
    raw["search"].pop("ablate", None)  # the comparison is search + refit vs one run: no slice ablation
    raw["budget"] = {"steps": budget, "refit": share}
    raw["tracking"] = {
        "mlflow_uri": f"sqlite:///{folder}/mlflow.db",
        "optuna_storage": f"sqlite:///{folder}/optuna.db",
        "artifact_root": str(folder / "artifacts"),
        "checkpoint_dir": str(folder / "checkpoints"),
    }
    spec = spec_mod.Spec.model_validate({**raw, "base_dir": spec_path.parent})
    held = [
        {"prompt": r.messages[-2]["content"], "reference": r.messages[-1]["content"]}
        for r in data.prepare(spec).eval
        if len(r.messages) >= 2 and r.messages[-1]["role"] == "assistant"
    ][:n_prompts]
    (folder / "held.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in held), encoding="utf-8")
    spec.evaluate.path = str(folder / "held.jsonl")
    quiet = Console(file=io.StringIO(), width=200)
    t0 = time.perf_counter()
    study = sweep.run(spec, str(spec_path), quiet, progress=False)
    sweep_s = time.perf_counter() - t0
    steps = budget_mod.sweep_steps(study)
    t0 = time.perf_counter()
    ref_id = _default_run(spec, study, steps, seed)
    default_s = time.perf_counter() - t0
    c = study_mod.client(spec)
    verdict = payoff.record(spec, study, c, study.user_attrs["mlflow_parent_run_id"])
    c.settle()
    rows = {r["metric"]: r for r in verdict["rows"]}
    refit = winner_refit.state(study)
    return {
        "seed": seed,
        "trials": len(study.trials),
        "search_steps": budget_mod.spent(study),
        "refit_steps": refit.get("steps"),
        "sweep_steps": steps,
        "default_run": ref_id,
        "model": verdict["model"],
        "sweep_s": sweep_s,
        "default_s": default_s,
        "rows": rows,
        "summary": {
            "model": verdict["model"],
            "steps": steps,
            **{m: f"{r['sweep']:.4g} vs {r['reference']:.4g} ({r['verdict']}, n={r['n']})" for m, r in rows.items()},
        },
    }


def _default_run(spec, study, steps: int, seed: int) -> str:
    """One run with the documented defaults for `steps` steps, evaluated like a trial (trial.run, role reference)."""
    import optuna

    from afina import data, models
    from afina.baselines import default_run
    from afina.evaluation import metrics
    from afina.search import records
    from afina.search import study as study_mod
    from afina.training import trial
    from afina.training.context import TrialContext

    ref = default_run.default_spec(spec, steps)  # what `baseline: {default_run: true}` trains: the method's documented rate
    ref.train = {**ref.train, "seed": seed}
    c = study_mod.client(spec)
    parent = study.user_attrs["mlflow_parent_run_id"]
    ctx = TrialContext(
        ref,
        data.prepare(ref),
        models.resolve(ref.model.ref),
        study.study_name,
        ref.search.directions,
        c,
        c.get_run(parent).info.experiment_id,
        parent,
        metrics.prompts(ref),
    )
    fixed = optuna.trial.FixedTrial({}, 0)
    trial.run(ctx, fixed, role="reference")
    records.save(study, records.Reference(fixed.user_attrs["mlflow_run_id"], steps, fixed.user_attrs["results"]))
    return fixed.user_attrs["mlflow_run_id"]
