"""afina benchmarks: one subcommand per figure in BENCHMARKS.md; each prints ratios and can write JSON.

    python bench/run.py overhead --model tiny-random          # afina trial vs bare SFTTrainer, tokens/s
    python bench/run.py fixed --model smollm2-135m           # fixed per-trial cost, sweep wall with/without reuse
    python bench/run.py logging --model tiny-random           # wall time with MLflow logging / without
    python bench/run.py search                                # compute to reach 1% of best, pruner / no pruner
    python bench/run.py cli                                   # `afina --help`, `afina status` on 200 trials
    python bench/run.py memory --model smollm2-135m           # peak RSS of a trial, RSS across trials
    python bench/run.py defaults --model tiny-random          # device defaults: eval loss vs the plain setup
    python bench/run.py slices --model smollm2-135m           # the quickstart's poesia verdict: 5 seeds x 40 steps
    python bench/run.py refit --model smollm2-135m --budget 60 --seeds 3   # search + refit vs a default run of equal compute
    python bench/run.py answers --model smollm2-135m --steps 16   # answer-only vs all-token loss: ROUGE-L, chrF, answer NLL
    python bench/run.py all --quick --json out.json           # everything, tiny sizes (the CI smoke)

A and B always run interleaved in one process (A B A B ...), after an unrecorded warm-up pair,
and ratios are medians of per-pair ratios, so a busy machine slows both sides alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (sets the offline environment before afina imports anything)


def overhead(a) -> dict:
    b = common.Bench(a.model, a.steps, **a.shape)
    ra, rb = common.interleave(a.repeats, lambda: b.afina(a.lr), lambda: b.bare(a.lr), warmup=not a.quick)
    return {
        "afina_tokens_per_s": common.med(ra, "tokens_per_s"),
        "bare_tokens_per_s": common.med(rb, "tokens_per_s"),
        "ratio_tokens_per_s": common.median_ratio(ra, rb, "tokens_per_s"),
        "ratio_trial_wall": common.median_ratio(ra, rb, "wall_s"),
        "eval_loss_afina": ra[-1]["eval_loss"],
        "eval_loss_bare": rb[-1]["eval_loss"],
    }


def fixed(a) -> dict:
    """Per-trial cost outside training: wall - train() - sample generation; with reuse vs a fresh load."""
    from afina import models
    from afina.data import token_cache
    from afina.training import train

    b = common.Bench(a.model, a.steps, **a.shape)
    prompts = [{"prompt": "¿Cuánto tarda el envío?", "reference": None}]
    gen: list[float] = []
    orig = train._samples

    def timed(*args, **kw):  # measure sample generation so it is not counted as overhead
        t0 = time.perf_counter()
        scores = orig(*args, **kw)
        gen.append(time.perf_counter() - t0)
        return scores

    train._samples = timed

    def one(reuse: bool):
        if not reuse:  # a cold worker: nothing cached in memory or on disk
            models._PRISTINE.clear()
            token_cache._TOKENS.clear()
        r = b.afina(reuse=reuse, prompts=prompts)
        r["gen_s"] = gen[-1]
        r["fixed_s"] = r["wall_s"] - r["train_s"] - r["gen_s"]
        return r

    first = one(True)  # loads the base and fills the token cache
    on, off = common.interleave(a.repeats, lambda: one(True), lambda: one(False), warmup=False)
    train._samples = orig
    return {
        "fixed_s_reuse": common.med(on, "fixed_s"),
        "fixed_s_fresh": common.med(off, "fixed_s"),
        "first_trial_fixed_s": first["fixed_s"],
        "trial_wall_s": common.med(on, "wall_s"),
        "train_s": common.med(on, "train_s"),
        "samples_s": common.med(on, "gen_s"),
        "fixed_over_wall_reuse": common.med(on, "fixed_s") / common.med(on, "wall_s"),
        "sweep_wall_s_reuse": sum(r["wall_s"] for r in on),
        "sweep_wall_s_fresh": sum(r["wall_s"] for r in off),
        "eval_losses_reuse": [r["eval_loss"] for r in on],
        "eval_losses_fresh": [r["eval_loss"] for r in off],
        "identical": len({r["eval_loss"] for r in on + off}) == 1,
    }


def logging_cost(a) -> dict:
    """Per-step curves to MLflow (batched, asynchronous) vs none; final results are logged by both."""
    from afina.training.callback import Watch

    b = common.Bench(a.model, a.steps, **a.shape)
    real = Watch.flush

    def without():
        Watch.flush = lambda self: self.pending.clear()
        try:
            return b.afina()
        finally:
            Watch.flush = real

    ra, rb = common.interleave(a.repeats, lambda: b.afina(), without, warmup=not a.quick)
    return {
        "ratio_train_wall": common.median_ratio(ra, rb, "train_s"),
        "ratio_trial_wall": common.median_ratio(ra, rb, "wall_s"),
        "train_s_logging": common.med(ra, "train_s"),
        "train_s_no_logging": common.med(rb, "train_s"),
        "steps": a.steps,
    }


def search(a) -> dict:
    import search as search_mod

    every = a.every or (4 if a.quick else 1)  # 1 of 12: afina's default for LoRA
    res = search_mod.efficiency(seeds=a.seeds, n_trials=a.trials, steps=12, every=every)
    pruned = {k: v for k, v in res.items() if not k.endswith("+none")}
    best = min(pruned, key=lambda k: (res[k]["median_ratio"], res[k]["median_steps"]))
    limits = search_mod.bounds(seeds=a.seeds, n_trials=a.trials, steps=12, every=every)  # what peer pruning can reach
    dupes = search_mod.duplicates(seeds=min(a.seeds, 20), n_trials=12, workers=4)  # what repeated trials cost
    return {
        "pairs": res,
        "chosen": best,
        "bounds": limits,
        "duplicates": dupes,
        "shape": f"{a.trials} trials, 12 steps, eval every {every}, {a.seeds} seeds; "
        f"duplicates: 4 processes x 12 trials, {min(a.seeds, 20)} seeds",
    }


def cli(a) -> dict:
    import subprocess
    import tempfile

    import optuna
    import yaml

    folder = Path(tempfile.mkdtemp(prefix="afina-cli-"))
    spec = common.spec_dict("tiny-random", 4, folder)
    spec["name"] = "status200"
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(study_name="status200", storage=spec["tracking"]["optuna_storage"], direction="minimize")
    dist = {"train.learning_rate": optuna.distributions.FloatDistribution(1e-4, 2e-3, log=True)}
    trials = []
    for i in range(a.trials):
        state = optuna.trial.TrialState.COMPLETE if i % 4 else optuna.trial.TrialState.PRUNED
        trials.append(
            optuna.trial.create_trial(
                params={"train.learning_rate": 1e-4 * (1 + i % 17)},
                distributions=dist,
                value=1.0 + i / 1000 if state == optuna.trial.TrialState.COMPLETE else None,
                state=state,
                user_attrs={"mlflow_run_id": f"{i:032x}"},
                intermediate_values={4: 1.5, 8: 1.2},
            )
        )
    study.add_trials(trials)
    exe = [sys.executable, "-m", "afina"]

    def timed(args) -> float:
        t0 = time.perf_counter()
        p = subprocess.run(exe + args, capture_output=True, text=True, cwd=folder)
        if p.returncode != 0:
            raise SystemExit(f"afina {' '.join(args)} failed: {p.stderr[-500:]}")
        return time.perf_counter() - t0

    import statistics

    def python_alone() -> float:  # the interpreter's own start-up, which no CLI can beat
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        return time.perf_counter() - t0

    timed(["--help"])
    base, helps, status = [], [], []
    for _ in range(a.repeats):  # interleaved, so machine load hits all three alike
        base.append(python_alone())
        helps.append(timed(["--help"]))
        status.append(timed(["status", str(path)]))
    return {
        "help_s_median": statistics.median(helps),
        "help_s_min": min(helps),
        "status_s_median": statistics.median(status),
        "status_s_min": min(status),
        "status_trials": a.trials,
        "python_startup_s_median": statistics.median(base),
        "python_startup_s_min": min(base),
    }


def memory(a) -> dict:
    import gc

    import psutil

    b = common.Bench(a.model, a.steps, **a.shape)
    proc = psutil.Process()
    rss = []
    for _ in range(a.trials):
        b.afina()
        gc.collect()
        rss.append(proc.memory_info().rss / 2**20)
    peak = _peak_rss_mib()
    return {
        "peak_rss_mib": peak,
        "rss_after_each_trial_mib": [round(x, 1) for x in rss],
        "growth_after_second_trial_mib": rss[-1] - rss[1] if len(rss) > 1 else 0.0,
    }


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def defaults(a) -> dict:
    """Afina's device defaults vs TRL's defaults (as a hand-written script has them), same data and batch.

    Both sides count non-padding tokens. afina: no gradient checkpointing, and on a GPU bf16, TF32,
    fused AdamW, Liger's layer kernels (when installed), padding-free with FlashAttention-2 (when
    installed). TRL: gradient checkpointing on, bf16 on a GPU. Eval loss must stay within 1%.
    """
    b = common.Bench(a.model, a.steps, **{"eval_steps": a.steps, **a.shape})
    ra, rb = common.interleave(a.repeats, lambda: b.afina(a.lr), lambda: b.bare(a.lr, same_defaults=False), warmup=not a.quick)
    rel = abs(ra[-1]["eval_loss"] - rb[-1]["eval_loss"]) / rb[-1]["eval_loss"]
    from afina.training import device

    out = {
        "device_defaults": device.device_defaults(),
        "attention": device.attention(),
        "shape": a.shape,
        "steps": a.steps,
        "eval_loss_afina": ra[-1]["eval_loss"],
        "eval_loss_trl_defaults": rb[-1]["eval_loss"],
        "relative_diff": rel,
        "afina_tokens_per_s": common.med(ra, "tokens_per_s"),
        "trl_defaults_tokens_per_s": common.med(rb, "tokens_per_s"),
        "ratio_tokens_per_s": common.median_ratio(ra, rb, "tokens_per_s"),
    }
    for key in ("gpu_peak_gib", "mfu", "params"):
        if key in ra[-1]:
            out[f"afina_{key}"], out[f"trl_defaults_{key}"] = common.med(ra, key), common.med(rb, key)
    return out


def slices(a) -> dict:
    """The quickstart's own question, answered with more evidence: is `poesia` good for the shop's answers?

    One pinned configuration of the quickstart (poesia included, --lr, LoRA r 8) is trained, then
    `afina ablate` retrains it with and without poesia under --seeds paired seeds of --steps steps
    (defaults 5 and 40: the issue's "at least 5 seeds and 4x the quickstart's 10 steps").
    Reports the objective (eval_loss) and ROUGE-L/chrF of the answers to the quickstart's prompts.
    """
    import tempfile

    import optuna
    from rich.console import Console

    from afina.commands import ablate, sweep
    from afina.spec import schema as spec_mod

    folder = Path(tempfile.mkdtemp(prefix="afina-bench-slices-"))
    s = spec_mod.load(common.ROOT / "experiments" / "quickstart.yaml")
    s.model.ref = common.model_ref(a.model)
    s.tracking.mlflow_uri, s.tracking.optuna_storage = f"sqlite:///{folder}/mlflow.db", f"sqlite:///{folder}/optuna.db"
    s.tracking.artifact_root, s.tracking.checkpoint_dir = str(folder / "artifacts"), str(folder / "checkpoints")
    s.search.n_trials, s.search.ablate, s.budget = 1, False, None  # one pinned trial; no refit, no ablation inside the sweep
    s.train = {**s.train, "max_steps": a.steps}
    config = {"train.learning_rate": a.lr, "lora.r": 8, "slices.poesia.include": True}
    optuna.create_study(study_name=s.name, storage=s.tracking.optuna_storage).enqueue_trial(config)
    console = Console(quiet=True)
    sweep.run(s, "experiments/quickstart.yaml", console, progress=False)
    summary = ablate.run(s, "experiments/quickstart.yaml", console, seeds=a.seeds, steps=a.steps)["ablation"]
    rows = {r["metric"]: {k: r[k] for k in ("delta", "lo", "hi", "n", "verdict", "why")} for r in summary["rows"]}
    return {"config": config, "seeds": summary["seeds"], "steps": a.steps, "noise": summary["noise"], "poesia_false_to_true": rows}


def refit(a) -> dict:
    """Both shipped specs (or --spec): search + refit vs one default run of equal total steps, per seed (bench/refit.py)."""
    import refit as refit_mod

    names = ["quickstart.yaml"] if a.quick else ["quickstart.yaml", "customer_support.yaml"]
    specs = [Path(a.spec)] if a.spec else [common.ROOT / "experiments" / n for n in names]
    budget = a.budget or (12 if a.quick else 60)
    out = {}
    for p in specs:
        out[p.stem] = refit_mod.compare(p, a.model, budget, a.refit_share, a.seeds, a.steps, a.prompts, a.first_seed)
    return out


def answers(a) -> dict:
    """Both shipped specs (or --spec), answer-only vs all-token loss at equal steps (bench/answers.py)."""
    import answers as answers_mod

    if a.sweeps:  # figures of finished sweeps (e.g. before/after a change) instead of new runs
        return answers_mod.from_sweeps(Path(a.spec or common.ROOT / "experiments" / "quickstart.yaml"), [Path(f) for f in a.sweeps])
    names = ["quickstart.yaml"] if a.quick else ["quickstart.yaml", "customer_support.yaml"]
    specs = [Path(a.spec)] if a.spec else [common.ROOT / "experiments" / n for n in names]
    out = {}
    for p in specs:  # each spec's figures are printed as soon as they exist
        out[p.stem] = answers_mod.compare(p, a.model, a.steps, a.lr)
        print(f"  answers {p.stem}: {json.dumps(out[p.stem], default=str)}", flush=True)
    return out


COMMANDS = {
    "overhead": overhead,
    "fixed": fixed,
    "logging": logging_cost,
    "search": search,
    "cli": cli,
    "memory": memory,
    "defaults": defaults,
    "slices": slices,
    "refit": refit,
    "answers": answers,
}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=[*COMMANDS, "all"])
    p.add_argument(
        "--model",
        default="tiny-random",
        help="tiny-random, smollm2-135m (embedded, offline), a model folder, or random:smollm2-135m / random:0.7b",
    )
    p.add_argument("--method", choices=["lora", "full"], default="lora")
    p.add_argument("--batch", type=int, default=8, help="per-device train batch (overhead, defaults)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--padding-free", action="store_true", help="afina side: train.padding_free (varlen/packed-mask attention)")
    p.add_argument("--steps", type=int, default=None, help="training steps per trial")
    p.add_argument("--repeats", type=int, default=None, help="interleaved A/B pairs (or CLI runs)")
    p.add_argument("--trials", type=int, default=None, help="trials (memory, search) or study size (cli)")
    p.add_argument("--seeds", type=int, default=None, help="search: seeds")
    p.add_argument("--first-seed", type=int, default=0, help="refit: start at this seed (to add seeds to an earlier run)")
    p.add_argument("--every", type=int, default=None, help="search: steps between evaluations (of 12; default 1)")
    p.add_argument("--budget", type=int, default=None, help="refit: budget.steps of each sweep (default 60; 12 with --quick)")
    p.add_argument("--refit-share", type=float, default=0.5, help="refit: budget.refit")
    p.add_argument("--prompts", type=int, default=16, help="refit: held-out eval rows answered, besides the spec's samples")
    p.add_argument("--spec", default=None, help="refit, answers: one spec file (default: quickstart and customer_support)")
    p.add_argument("--sweeps", nargs="*", default=None, help="answers: folders of finished sweeps of --spec to score instead")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the harness")
    p.add_argument("--json", type=Path, help="write the results here")
    a = p.parse_args(argv)
    names = list(COMMANDS) if a.command == "all" else [a.command]
    results = {"machine": common.machine(), "model": a.model, "quick": a.quick}
    for name in names:
        sizes = {
            "steps": 2 if a.quick else {"refit": None}.get(name, 40 if a.model == "tiny-random" or name == "slices" else 8),
            "repeats": 1 if a.quick else 3,
            "trials": {"cli": 200, "search": 30, "memory": 3 if a.quick else 6}.get(name, 4),
            "seeds": 2 if a.quick else {"slices": 5, "refit": 3}.get(name, 100),
        }
        if name == "cli" and not a.quick:
            sizes["repeats"] = 10
        ns = argparse.Namespace(
            **{k: getattr(a, k) if getattr(a, k) is not None else v for k, v in sizes.items()},
            model=a.model,
            quick=a.quick,
            lr=a.lr,
            every=a.every,
            budget=a.budget,
            first_seed=a.first_seed,
            refit_share=a.refit_share,
            prompts=a.prompts,
            spec=a.spec,
            sweeps=a.sweeps,
            shape={
                "method": a.method,
                "batch": a.batch,
                "max_length": a.max_length,
                "train": {"padding_free": True} if a.padding_free else {},
            },
        )
        t0 = time.perf_counter()
        results[name] = COMMANDS[name](ns)
        results[name]["bench_s"] = time.perf_counter() - t0
        print(f"{name}: {json.dumps(results[name], default=str)}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
