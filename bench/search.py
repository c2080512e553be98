"""Search efficiency on a synthetic objective shaped like the quickstart sweep.

A trial is a learning curve: eval loss reported every `every` steps for `steps` steps, its floor and
speed set by the learning rate, LoRA rank and whether the literary slice is in (the quickstart's
space), plus seeded noise. Compute is counted in training steps. For each sampler/pruner pair:
steps until a trial lands within 1% of the best value the same sampler finds without pruning
(in `n_trials` trials), divided by the steps the unpruned run needed; the pruned run may keep
going on the same compute budget. Median over seeds.
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
    study = optuna.create_study(sampler=sweep.sampler(search), pruner=sweep.pruner(search), direction="minimize")
    used, hits = 0.0, []

    def objective(trial):
        nonlocal used
        params = space.suggest(trial, search.space)
        for s, loss in curve(params, steps, every, seed):
            used += every
            trial.report(loss, s)
            if trial.should_prune():
                raise optuna.TrialPruned()
        hits.append((used, loss))
        return loss

    done = 0
    while done < n_trials if budget is None else used < budget:
        study.optimize(objective, n_trials=1)
        done += 1
    return hits


def efficiency(seeds: int = 20, n_trials: int = 30, steps: int = 12, every: int = 4) -> dict:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    pairs = [(s, p) for s in ("tpe", "random") for p in ("median", "successive_halving", "hyperband")]
    out: dict[str, dict] = {}
    for sampler in ("tpe", "random"):
        for seed in range(seeds):
            ref = run_study(sampler, "none", seed, n_trials, None, steps, every)
            best = min(v for _, v in ref)
            target = best * 1.01
            ref_cost = next(c for c, v in ref if v <= target)
            total = ref[-1][0] if ref else steps * n_trials
            rec = out.setdefault(f"{sampler}+none", {"ratios": [], "steps": [], "reached": 0})
            rec["ratios"].append(1.0)
            rec["steps"].append(ref_cost)
            rec["reached"] += 1
            for s, p in pairs:
                if s != sampler:
                    continue
                hits = run_study(s, p, seed, n_trials * 10, total, steps, every)
                cost = next((c for c, v in hits if v <= target), math.inf)
                rec = out.setdefault(f"{s}+{p}", {"ratios": [], "steps": [], "reached": 0})
                rec["ratios"].append(cost / ref_cost)
                rec["steps"].append(cost)
                rec["reached"] += cost < math.inf
    return {k: {"median_ratio": statistics.median(v["ratios"]), "median_steps": statistics.median(v["steps"]),
                "reached": f"{v['reached']}/{seeds}"} for k, v in out.items()}
