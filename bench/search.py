"""Search efficiency on a synthetic objective shaped like the quickstart sweep.

A trial is a learning curve: eval loss reported every `every` steps for `steps` steps, its floor and
speed set by the learning rate, LoRA rank and whether the literary slice is in (the quickstart's
space), plus seeded noise. A finished trial's value is its best evaluation, as in afina (the best
checkpoint is kept). Compute is counted in training steps. For each sampler/pruner pair:
steps until a trial lands within 1% of the best value TPE finds without pruning (in `n_trials`
trials), divided by the steps that unpruned run needed; every other pair may keep going on the
same compute budget. Median over seeds.
"""

from __future__ import annotations

import math
import random
import statistics

SPACE = {
    "train.learning_rate": {"float": [1e-5, 1e-2], "log": True},
    "lora.r": {"categorical": [4, 8, 16]},
    "slices.poesia.include": {"categorical": [True, False]},
}


def curve(params: dict, steps: int, every: int, seed: int) -> list[tuple[int, float]]:
    lr, r, poetry = params["train.learning_rate"], params["lora.r"], params["slices.poesia.include"]
    d = math.log10(lr) - math.log10(8e-4)  # best learning rate around 8e-4
    floor = 1.20 + 0.18 * d * d + (0.06 if poetry else 0.0) - 0.01 * math.log2(r / 4)
    speed = min(1.0, 0.9 * lr / 8e-4) ** 0.7 * 4.0 / steps
    rng = random.Random(f"{seed}:{lr}:{r}:{poetry}")
    out = []
    for s in range(every, steps + 1, every):
        loss = floor + 1.8 * math.exp(-speed * s) + rng.gauss(0, 0.004)
        if lr > 6e-3 and s > steps // 2:
            loss += (lr - 6e-3) * 400  # too hot: diverges late
        out.append((s, loss))
    return out


def run_study(
    sampler: str,
    pruner: str,
    seed: int,
    n_trials: int,
    budget: float | None,
    steps: int,
    every: int,
    pruner_args: dict | None = None,
    pruner_obj=None,
) -> list[tuple[float, float]]:
    """[(cumulative steps, completed value)] in the order trials finished; pruner_obj: an Optuna pruner
    outside afina's choices, in place of `pruner`."""
    import optuna

    from afina.search import study as study_mod
    from afina.spec import space
    from afina.spec.schema import Search

    search = Search(space=SPACE, sampler=sampler, pruner=pruner, seed=seed, pruner_args=pruner_args or {})
    study = optuna.create_study(
        sampler=study_mod.sampler(search), pruner=pruner_obj or study_mod.pruner(search, first_eval=every), direction="minimize"
    )
    used, hits = 0.0, []

    def objective(trial):
        nonlocal used
        params = space.suggest(trial, search.space)
        points = curve(params, steps, every, seed)
        for s, loss in points:
            used += every
            trial.report(loss, s)
            if trial.should_prune():
                raise optuna.TrialPruned()
        best = min(v for _, v in points)
        hits.append((used, best))
        return best

    done = 0
    while done < n_trials if budget is None else used < budget:
        study.optimize(objective, n_trials=1)
        done += 1
    return hits


def efficiency(seeds: int = 20, n_trials: int = 30, steps: int = 12, every: int = 1) -> dict:
    """Per seed, the target is 1 % of the best value TPE (afina's default sampler) finds without pruning
    in `n_trials` trials; every pair gets the same target and the same compute budget."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # afina's pruners (first rung on the first evaluation), and successive halving as Optuna sets it up alone
    pairs = [(s, p, {}, f"{s}+{p}") for s in ("tpe", "random") for p in ("none", "median", "successive_halving", "hyperband")]
    pairs.append(("tpe", "successive_halving", {"min_resource": "auto"}, "tpe+successive_halving(min_resource=auto)"))
    out: dict[str, dict] = {}
    for seed in range(seeds):
        ref = run_study("tpe", "none", seed, n_trials, None, steps, every)
        target = min(v for _, v in ref) * 1.01
        ref_cost, total = next(c for c, v in ref if v <= target), ref[-1][0]
        for s, p, args, label in pairs:
            hits = ref if label == "tpe+none" else run_study(s, p, seed, n_trials * 10, total, steps, every, args)
            cost = next((c for c, v in hits if v <= target), math.inf)
            rec = out.setdefault(label, {"ratios": [], "steps": [], "reached": 0})
            rec["ratios"].append(cost / ref_cost)
            rec["steps"].append(cost)
            rec["reached"] += cost < math.inf
    return {
        k: {
            "median_ratio": statistics.median(v["ratios"]),
            "median_steps": statistics.median(v["steps"]),
            "reached": f"{v['reached']}/{seeds}",
        }
        for k, v in out.items()
    }


def bounds(seeds: int = 20, n_trials: int = 30, steps: int = 12, every: int = 1) -> dict:
    """How far any pruner that only compares a trial with its peers can go, per seed against TPE unpruned.

    oracle: the unpruned TPE run, with every trial that is not the hit stopped at its first evaluation.
    records (path): the same run, where a trial goes on only while it beats every finished trial at
        the same step; the finished trials are then the records, each the best so far, which no
        peer comparison can stop (infinite where the rule stops the hit itself).
    records (live): that rule as a real pruner in a live TPE study (Optuna's PercentilePruner at
        0.1 %, compared with finished trials), so the sampler sees pruned trials as it would in afina.
    """
    import optuna

    from afina.spec import space
    from afina.spec.schema import Search

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    dims = Search(space=SPACE).space
    out: dict[str, list[float]] = {"oracle": [], "records (path)": [], "records (live)": []}
    for seed in range(seeds):
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed), direction="minimize")
        curves: list[list[tuple[int, float]]] = []

        def objective(trial, curves=curves, seed=seed):
            curves.append(curve(space.suggest(trial, dims), steps, every, seed))
            return min(v for _, v in curves[-1])

        study.optimize(objective, n_trials=n_trials)
        finals = [min(v for _, v in c) for c in curves]
        target = min(finals) * 1.01
        hit = next(i for i, v in enumerate(finals) if v <= target)
        ref = steps * (hit + 1)
        out["oracle"].append((every * hit + steps) / ref)
        used, records = 0, []
        for c in curves[: hit + 1]:
            for j, (_, loss) in enumerate(c):
                used += every
                if records and loss > min(r[j][1] for r in records):
                    break
            else:
                records.append(c)
        kept = bool(records) and records[-1] is curves[hit]  # else the rule stopped the hit itself
        out["records (path)"].append(used / ref if kept else math.inf)
        live = run_study(
            "tpe",
            "none",
            seed,
            n_trials * 10,
            steps * n_trials,
            steps,
            every,
            pruner_obj=optuna.pruners.PercentilePruner(0.1, n_startup_trials=1, n_warmup_steps=0),
        )
        out["records (live)"].append(next((c for c, v in live if v <= target), math.inf) / ref)
    return {k: round(statistics.median(v), 3) for k, v in out.items()}


def duplicates(seeds: int = 20, n_trials: int = 12, workers: int = 4, steps: int = 12) -> dict:
    """What repeated trials cost: `workers` processes on one study, either started together (taking
    trials in turn) or one after another (a sweep resumed workers-1 times), unpruned, TPE.

    same seed: every process seeds its sampler with search.seed (afina before this change);
    own streams: distinct.stream_seed per process, and a draw equal to an earlier trial's is skipped
    untrained and drawn again (distinct.check). Compute is counted in training steps; a duplicate
    trains `steps` for a value already known. Medians over seeds.
    """
    import optuna

    from afina.search import distinct
    from afina.search import study as study_mod
    from afina.spec import space
    from afina.spec.schema import Search

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out: dict[str, dict] = {}
    for layout in ("together", "resumed"):
        for mode in ("same seed", "own streams"):
            wasted, best, redraws = [], [], []
            for seed in range(seeds):
                storage = optuna.storages.InMemoryStorage()
                search = Search(space=SPACE, seed=seed)
                study = optuna.create_study(storage=storage, study_name="d", direction="minimize")
                procs = []
                for _ in range(workers):
                    s = optuna.load_study(study_name="d", storage=storage)
                    s.sampler = study_mod.sampler(search, distinct.stream_seed(s, seed) if mode == "own streams" else seed)
                    procs.append(s)
                seen: set[tuple] = set()
                dup = skipped = 0

                def objective(trial, search=search, mode=mode, study=study, seen=seen, seed=seed):
                    nonlocal dup
                    params = space.suggest(trial, search.space)
                    if mode == "own streams":
                        distinct.check(study, trial, params)
                    key = tuple(sorted(params.items()))
                    dup += key in seen
                    seen.add(key)
                    return min(v for _, v in curve(params, steps, 1, seed))

                order = (
                    [i % workers for i in range(n_trials)] if layout == "together" else [i * workers // n_trials for i in range(n_trials)]
                )
                for w in order:
                    while True:
                        procs[w].optimize(objective, n_trials=1, catch=(distinct.Duplicate,))
                        if procs[w].trials[-1].state.name != "FAIL":
                            break
                        skipped += 1
                wasted.append(dup / n_trials)
                best.append(study.best_value)
                redraws.append(skipped)
            out[f"{layout}, {mode}"] = {
                "duplicate_share_of_compute": round(statistics.median(wasted), 3),
                "mean_duplicate_share": round(statistics.fmean(wasted), 3),
                "median_best": round(statistics.median(best), 4),
                "median_redraws": statistics.median(redraws),
            }
    return out
