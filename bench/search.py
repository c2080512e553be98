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

SPACE = {"train.learning_rate": {"float": [1e-5, 1e-2], "log": True}, "lora.r": {"categorical": [4, 8, 16]},
         "slices.poesia.include": {"categorical": [True, False]}}


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


def run_study(sampler: str, pruner: str, seed: int, n_trials: int, budget: float | None, steps: int, every: int,
              pruner_args: dict | None = None) -> list[tuple[float, float]]:
    """[(cumulative steps, completed value)] in the order trials finished."""
    import optuna

    from afina import space, sweep
    from afina.spec import Search

    search = Search(space=SPACE, sampler=sampler, pruner=pruner, seed=seed, pruner_args=pruner_args or {})
    study = optuna.create_study(sampler=sweep.sampler(search), pruner=sweep.pruner(search, first_eval=every),
                                direction="minimize")
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


def efficiency(seeds: int = 20, n_trials: int = 30, steps: int = 12, every: int = 4) -> dict:
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
    return {k: {"median_ratio": statistics.median(v["ratios"]), "median_steps": statistics.median(v["steps"]),
                "reached": f"{v['reached']}/{seeds}"} for k, v in out.items()}
