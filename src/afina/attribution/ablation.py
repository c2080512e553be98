"""Controlled ablation: retrain the best trial's configuration with each searched slice toggled.

Paired design. The unchanged configuration (the reference arm) and every changed arm (a searched
`include` flipped; a searched weight/fraction at each of its bounds) are trained under the same k
training seeds: `train.seed`, `train.seed + 1`, ... The training seed drives the data order and the
LoRA initialisation; `data.seed` stays fixed, so a slice holds the same rows in every arm. The reference
is retrained, not read from the best trial: that trial was picked for being best, so its own value is
biased in its favour (winner's curse). Every run is evaluated exactly like a trial and is an MLflow child
run of the sweep tagged `afina.role=ablation` with `afina.arm`, `afina.slice`, `afina.seed`, `afina.steps`.
A run that already finished with the same arm, seed, steps and best trial is reused, so an interrupted
`afina ablate` resumes where it stopped.

The statistics are in attribution/verdicts.py; this module trains, and records the summary on the study (user
attribute `verdicts`), on the parent run (`verdicts.json`, `verdicts-summary.json`, the description).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from afina import UserError, tracking
from afina.attribution import data_section, verdicts
from afina.evaluation import metrics
from afina.search import records
from afina.search import study as study_mod

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from afina.spec.schema import Spec
    from afina.training.context import TrialContext

SKIP = metrics.TRAINING  # not comparable across mixtures, or not a quality


@dataclass
class Arm:
    name: str  # "reference" or "<slice>.<attr>=<value>"
    key: str | None  # the searched key it changes
    value: Any
    more: bool  # this arm has more of the slice than the reference
    change: str  # "poesia include false → true", always from less to more of the slice


def objective(spec: Spec) -> tuple[int, str]:
    name = spec.promote.objective or spec.search.objectives[0]  # the spec holds promote.objective to the objectives
    return spec.search.objectives.index(name), name


def completed(spec: Spec, study) -> list[tuple[dict, float, int]]:
    """(params, objective value, number) of every COMPLETE trial."""
    i, _ = objective(spec)
    return [(t.params, t.values[i], t.number) for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.values]


def best_trial(spec: Spec, study) -> tuple[dict, int]:
    """(params, number) of the best COMPLETE trial on `objective`. Not winner_refit.pick: a multi-objective study
    without promote.objective is ablated on its first objective instead of refused."""
    best = study_mod.best(study, objective(spec)[0])
    if best is None:
        raise UserError(f"study {spec.name!r} has no completed trial to ablate; run `afina sweep` first")
    return best.params, best.number


def arms(spec: Spec, params: dict) -> tuple[list[Arm], list[str]]:
    """The reference and one arm per changed slice choice; notes say what was left out and why."""
    out, notes = [Arm("reference", None, None, False, "")], []
    for key, dim in spec.search.space.items():
        if not key.startswith("slices."):
            continue
        _, name, attr = key.split(".", 2)
        cur = params.get(key, getattr(spec.data.slices[name], attr))
        if attr == "include":
            out.append(Arm(f"{name}.include={str(not cur).lower()}", key, not cur, not cur, f"{name} include false → true"))
            continue
        if not params.get(f"slices.{name}.include", spec.data.slices[name].include):
            notes.append(f"{key}: the best configuration excludes {name}, so its {attr} changes nothing")
            continue
        bounds = list(dim.float or dim.int or [min(dim.categorical), max(dim.categorical)])
        for b in bounds:
            if b != cur:
                lo, hi = sorted([b, cur])
                out.append(Arm(f"{name}.{attr}={b:g}", key, b, b > cur, f"{name} {attr} {lo:g} → {hi:g}"))
    if len(out) == 1:
        notes.append("the search varies no slice: nothing to ablate")
    return out, notes


def train_one(ctx: TrialContext, params: dict, seed: int, steps: int | None, number: int, tags: dict[str, str]) -> tuple[str, dict | None]:
    """Train one configuration with this training seed as a child run, evaluated exactly like a trial
    (trial.run with a FixedTrial, role "ablation"). Returns (MLflow run id, results); results are None
    when the run failed (its reason is on the run)."""
    import optuna

    from afina.training import trial

    run_spec = ctx.spec.model_copy(deep=True)
    run_spec.train = {**ctx.spec.train, "seed": seed, **({"max_steps": steps} if steps else {})}
    params = {**params, **({"train.max_steps": steps} if steps and "train.max_steps" in params else {})}
    fixed = optuna.trial.FixedTrial(params, number=number)
    ok = True
    try:
        trial.run(dataclasses.replace(ctx, spec=run_spec), fixed, role="ablation")
    except (Exception, optuna.TrialPruned):  # failed or empty: trial.run closed the run with the reason
        ok = False
    finally:  # also on Ctrl-C: the run says what it was (the next `afina ablate` trains it again)
        run_id = fixed.user_attrs.get("mlflow_run_id")
        if run_id:
            c = ctx.client
            c.update_run(run_id, name=f"ablation-{tags['arm']}-seed{seed}")
            for k, v in {**tags, "seed": str(seed)}.items():
                c.set_tag(run_id, f"{tracking.TAG}{k}", v)
    results = dict(fixed.user_attrs.get("results", {})) if ok else None
    if ok:
        ctx.client.set_tag(run_id, f"{tracking.TAG}results", json.dumps(results))  # what a resumed ablation reads back
    return run_id or "", results


def _done(ctx: TrialContext) -> dict[tuple[str, str, str, str], tuple[str, dict]]:
    """Finished ablation runs under this parent: (arm, seed, steps, from_trial) -> (run id, results)."""
    found = ctx.client.search_runs(
        [ctx.experiment_id],
        filter_string=f"tags.`{tracking.ROLE}` = 'ablation' and tags.`{tracking.PARENT}` = '{ctx.parent_id}'",
        max_results=5000,
    )
    out = {}
    for r in found:
        t = r.data.tags
        if t.get(tracking.STATE) == "COMPLETE" and f"{tracking.TAG}results" in t:
            results = json.loads(t[f"{tracking.TAG}results"])
            key = tuple(t.get(f"{tracking.TAG}{k}", "") for k in ("arm", "seed", "steps", "from_trial"))
            out[key] = (r.info.run_id, results)
    return out


def run(ctx: TrialContext, study, seeds: int = 3, steps: int | None = None, console=None, command: str = "") -> dict:
    """Train every arm under the same seeds, then measure each change; returns the ablation summary."""
    spec = ctx.spec
    params, number = best_trial(spec, study)
    plan, notes = arms(spec, params)
    if len(plan) == 1:
        raise UserError(
            "search.space varies no slice, so there is nothing to ablate; search e.g. slices.<name>.include: {categorical: [true, false]}"
        )
    steps = steps or params.get("train.max_steps") or spec.train.get("max_steps")
    base_seed = int(spec.train.get("seed", 42))  # transformers' default seed when the spec sets none
    seed_list = [base_seed + i for i in range(seeds)]
    done, results, failed = _done(ctx), {}, 0
    todo = [(a, s) for a in plan for s in seed_list]
    for i, (arm, seed) in enumerate(todo):
        key = (arm.name, str(seed), str(steps or ""), str(number))
        if key in done:
            results[arm.name, seed] = done[key]
            continue
        tags = {"arm": arm.name, "slice": arm.key or "", "steps": str(steps or ""), "from_trial": str(number)}
        run_id, res = train_one(ctx, {**params, **({arm.key: arm.value} if arm.key else {})}, seed, steps, i, tags)
        failed += res is None
        if res is not None:
            results[arm.name, seed] = (run_id, res)
        if console is not None:
            shown = f"{res.get('eval_loss', float('nan')):.4g}" if res else "failed"
            console.print(f"ablation {i + 1}/{len(todo)}: {arm.name} seed {seed} → eval_loss {shown}")
    return summarize(spec, plan, seed_list, results, number, steps, failed, notes, command)


def summarize(
    spec: Spec, plan: list[Arm], seeds: list[int], results: dict, number: int, steps, failed: int, notes: list[str], command: str
) -> dict:
    """Noise floor per metric from the reference arm; each arm's change as a paired effect."""
    _, obj = objective(spec)
    known = dict(zip(spec.search.objectives, spec.search.directions, strict=True))
    ref = {s: results[("reference", s)][1] for s in seeds if ("reference", s) in results}
    names = sorted({m for r in ref.values() for m in r if m not in SKIP}, key=lambda m: (m != obj, m))
    noise = {m: dict(zip(("sd", "n"), verdicts.noise_floor([r.get(m) for r in ref.values()]), strict=True)) for m in names}
    rows = []
    for arm in plan[1:]:
        paired = [s for s in seeds if s in ref and (arm.name, s) in results]
        for m in names:
            a = [results[(arm.name, s)][1].get(m, math.nan) for s in paired]
            r = [ref[s].get(m, math.nan) for s in paired]
            more, less = (a, r) if arm.more else (r, a)
            e = verdicts.paired(more, less, m, verdicts.direction(m, known), noise[m]["sd"])
            rows.append({"slice": arm.key, "change": arm.change, "arm": arm.name, **e.as_dict()})
    runs = {f"{a}|{s}": rid for (a, s), (rid, _) in results.items()}
    return {
        "best_trial": number,
        "k": len(seeds),
        "seeds": seeds,
        "steps": steps or "the trial's",
        "objective": obj,
        "method": verdicts.METHOD,
        "noise": noise,
        "rows": rows,
        "runs": runs,
        "failed": failed,
        "notes": notes,
        "command": command,
    }


def across_trials(spec: Spec, study) -> dict:
    """The regression over the sweep's own trials, and the RegMix mixture for searched weights."""
    i, obj = objective(spec)
    trials = [(p, v) for p, v, _ in completed(spec, study)]
    sense = spec.search.directions[i]
    kept = records.load(study, records.Verdicts)
    noise = ((kept and kept.ablation) or {}).get("noise", {}).get(obj, {}).get("sd")
    out: dict[str, Any] = {"objective": obj, "regression": None, "mixture": None}
    if verdicts.slice_keys(spec.search.space) and trials:
        out["regression"] = verdicts.regression(trials, spec.search.space, obj, sense, noise)
        at, _ = best_trial(spec, study)
        out["mixture"] = verdicts.best_mixture(trials, spec.search.space, sense, at)
    return out


def record(spec: Spec, study: optuna.Study, c: MlflowClient, parent_id: str | None, summary: records.Verdicts | dict) -> records.Verdicts:
    """Keep the summary on the study (status reads it from there) and on the sweep's parent run."""
    summary = records.parse(records.Verdicts, summary) or records.Verdicts()
    records.save(study, summary)
    if not parent_id:
        return summary
    rows = [{"source": "ablation", **r} for r in (summary.ablation or {}).get("rows", [])]
    rows += [{"source": "regression", "slice": k, **e} for k, e in ((summary.regression or {}).get("effects") or {}).items()]
    if rows:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        c.log_dict(parent_id, {"columns": cols, "data": [[r.get(k) for k in cols] for r in rows]}, "verdicts.json")
    c.log_dict(parent_id, json.loads(json.dumps(records.stored(summary), default=str)), "verdicts-summary.json")
    return summary


def refresh(
    ctx: TrialContext,
    study,
    console=None,
    ablate: bool | None = None,
    seeds: int | None = None,
    steps: int | None = None,
    spec_path: str = "SPEC",
) -> records.Verdicts:
    """The regression always; the ablation when asked (or when the spec's search.ablate says so). Records both."""
    spec, cfg = ctx.spec, ctx.spec.search.ablate
    ablate = cfg is not None if ablate is None else ablate
    seeds = seeds or (cfg.seeds if cfg else 3)
    steps = steps or (cfg.steps if cfg else None)
    summary = dataclasses.replace(records.load(study, records.Verdicts) or records.Verdicts(), spec_path=spec_path)
    if ablate:
        cmd = f"afina ablate {spec_path} --seeds {seeds}" + (f" --steps {steps}" if steps else "")
        summary.ablation = run(ctx, study, seeds, steps, console, cmd)
        records.save(study, summary)  # the regression's noise floor comes from the ablation
    elif not summary.ablation:
        summary.plan = deciding_run(spec, study, spec_path)
    summary = dataclasses.replace(summary, **across_trials(spec, study))
    return record(spec, study, ctx.client, ctx.parent_id, summary)


SEEDS, LONGER = 5, 4  # the ablation that decided the quickstart's question (BENCHMARKS row 9): 5 seeds, 4x a trial's steps


def deciding_run(spec: Spec, study, spec_path: str) -> dict | None:
    """The ablation that can answer, with its cost, for a sweep that ran none: every arm under SEEDS paired seeds
    at LONGER times the best trial's steps (short runs of few seeds end "not enough evidence", row 9's did not)."""
    try:
        params, _ = best_trial(spec, study)
    except UserError:
        return None
    plan, _ = arms(spec, params)
    if len(plan) == 1:
        return None
    steps = params.get("train.max_steps", spec.train.get("max_steps"))
    longer = LONGER * steps if isinstance(steps, int) and steps > 0 else None
    command = f"afina ablate {spec_path} --seeds {SEEDS}" + (f" --steps {longer}" if longer else "")
    return {"command": command, "runs": len(plan) * SEEDS, "steps": longer, "trials": len(plan) * SEEDS * LONGER if longer else None}


def after_sweep(ctx: TrialContext, study, console, spec_path: str) -> None:
    """The sweep's one call: verdicts are a reading of the trials, so a problem here never fails the sweep."""
    busy = any(t.state.name == "RUNNING" for t in study.get_trials(deepcopy=False))
    try:  # with several workers, the last one to finish runs the ablation, on the final best trial
        summary = refresh(ctx, study, console, ablate=ctx.spec.search.ablate is not None and not busy, spec_path=spec_path)
    except UserError as e:
        console.print(f"[yellow]no verdicts[/]: {e}")
        return
    except Exception as e:  # a reading of finished trials: the sweep's results stand without it
        console.print(f"[yellow]verdicts not computed[/]: {type(e).__name__}: {e}")
        return
    data_section.render(console, summary, spec_path)
