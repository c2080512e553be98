"""Did the sweep pay for itself? Its model against one default run of equal compute.

The sweep's model is what `afina promote` would pick: the refit when it beats the trial it came
from, else the best trial. The reference is the default-run reference (`baseline: {default_run:
true}`): TRL's defaults with afina's LoRA defaults, trained on the same data for as many steps as
the sweep spent, evaluated like a trial, its record kept in the study's user attr `reference`
({run_id, steps, results, n}, baselines/default_run.py of issue 14). Every result both have is compared: the objective,
and each generation metric with its n and, from the per-prompt scores of both samples tables,
the paired standard error of the difference. A loss has one value per run: no error bar, and
the verdict says so. A sweep that lost is reported as lost.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from afina import tracking
from afina.evaluation import metrics
from afina.search import budget, records, winner_refit
from afina.search import study as study_mod
from afina.spec.trained import sense
from afina.tracking import samples

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from afina.spec.schema import Spec

SKIP = {*metrics.TRAINING, "judge_unparsed"}  # not quality, unless an objective


def reference(study: optuna.Study) -> records.Reference | None:
    """The default-run reference's record, None until it ran."""
    rec = records.load(study, records.Reference)
    return rec if rec and rec.run_id and rec.results else None


def sweep_model(study: optuna.Study, spec: Spec) -> tuple[str, dict[str, float], str] | None:
    """(label, results, run id) of the sweep's model: the refit if it beats its trial, else the best trial."""
    found = winner_refit.winner(study, winner_refit.objective_index(study, spec) or 0)  # no promote.objective: the first
    if found is None:
        return None
    best, refit = found
    if refit:
        return f"refit of trial {best.number}", dict(refit.results), refit.run_id
    return f"trial {best.number}", dict(best.user_attrs.get("results") or {}), study_mod.run_id(best, study)


def direction(name: str, study: optuna.Study) -> int:
    """+1 lower is better, -1 higher is better, 0 neither (answer length)."""
    names = study_mod.objectives(study)
    if name in names:
        return study_mod.signs(study)[names.index(name)]
    return {"minimize": 1, "maximize": -1, None: 0}[sense(name)]


def record(spec: Spec, study: optuna.Study, c: MlflowClient, parent_id: str) -> records.Payoff | None:
    """Compare, store the verdict on the study and the parent run; None until both runs exist."""
    rec, mine = reference(study), sweep_model(study, spec)
    if not rec or mine is None:
        return None
    ref, ref_run = rec.results, rec.run_id
    label, results, run_id = mine
    old = records.load(study, records.Payoff)
    if old and old.run_id == run_id and old.reference_run_id == ref_run:
        return old  # nothing new to compare
    n = winner_refit.state(study).n if label.startswith("refit") else {}
    n = n or rec.n or winner_refit.sizes(spec, _eval_rows(c, run_id), metrics.prompts(spec))
    objectives = study_mod.objectives(study)
    main = objectives[winner_refit.objective_index(study, spec) or 0]  # a multi-objective study is judged on promote.objective
    scores = (_scores(c, run_id), _scores(c, ref_run))
    rows = []
    for name in [*objectives, *sorted(k for k in results if k not in objectives and k not in SKIP)]:
        if name not in ref or name not in results:
            continue
        diff = float(results[name]) - float(ref[name])
        se, paired = _paired_se(*scores, name) if name not in metrics.TRAIN_RESULTS else (None, 0)
        sign = direction(name, study)
        noisy = se is not None and abs(diff) < 2 * se
        rows.append(
            {
                "metric": name,
                "objective": name in objectives,
                "sweep": float(results[name]),
                "reference": float(ref[name]),
                "diff": diff,
                "se": se,
                "n": paired or n.get(name),
                "verdict": "n/a"
                if sign == 0
                else "within noise"
                if noisy
                else "better"
                if sign * diff < 0
                else "worse"
                if diff
                else "equal",
            }
        )
    judged = [r for r in rows if r["verdict"] != "n/a"]
    verdict = records.Payoff(
        model=label,
        run_id=run_id,
        reference_run_id=ref_run,
        sweep_steps=budget.sweep_steps(study),
        reference_steps=rec.steps or _steps(c, ref_run),
        rows=rows,
        objective=main,
        beat_objective=any(r["metric"] == main and r["verdict"] == "better" for r in rows),
        beat_all=bool(judged) and all(r["verdict"] == "better" for r in judged),
    )
    records.save(study, verdict)
    if parent_id:
        c.set_tag(parent_id, f"{tracking.TAG}paid", headline(verdict))
        tracking.log_metrics(c, parent_id, {f"vs_reference.{r['metric']}": r["diff"] for r in rows}, 0, synchronous=True)
    return verdict


def headline(v: records.Payoff) -> str:
    steps = f"{v.sweep_steps} steps vs {v.reference_steps or '?'}"
    on = f"the objective ({v.objective})" if v.objective else "the objective"
    if v.beat_all:
        return f"yes: the sweep's model ({v.model}, {steps}) beat one default run of equal compute on every measure"
    if v.beat_objective:
        lost = [r["metric"] for r in v.rows if r["verdict"] not in ("better", "n/a")]
        return f"partly: the sweep's model ({v.model}, {steps}) beat the default run on {on}, not on {', '.join(lost)}"
    return f"no: the sweep's model ({v.model}, {steps}) did NOT beat one default run of equal compute on {on}"


def record_quietly(spec: Spec, study: optuna.Study, c: MlflowClient, parent_id: str, console) -> None:
    """record() once the default run or the refit exists (the sweep's and the refit's last step): the verdict is
    computed here, once, and the report, status and descriptions only read it. A problem is printed, never fatal."""
    try:
        record(spec, study, c, parent_id)
    except Exception as e:  # a reading of finished runs: the sweep's own results stand without it
        console.print(f"[yellow]did-it-pay verdict not computed[/]: {tracking.redact(f'{type(e).__name__}: {e}')}")


def lines(study: optuna.Study) -> list[str]:
    """The refit line and the verdict, for `afina status` and the end of a sweep."""
    out = [s] if (s := winner_refit.summary(study)) else []
    v = records.load(study, records.Payoff)
    if not v:
        return out
    out.append(f"Did the sweep pay? {headline(v)}")
    for r in v.rows:
        noise = f" ± {r['se']:.2g} (paired SE)" if r["se"] is not None else " (one run each: no error bar)"
        out.append(f"  {r['metric']}: {r['sweep']:.4g} vs {r['reference']:.4g}  {r['diff']:+.4g}{noise}, n={r['n']}  → {r['verdict']}")
    return out


def html(study: optuna.Study) -> str:
    """The report's section: the verdict and its table ("" before there is one)."""
    import html as h

    v, refit = records.load(study, records.Payoff), winner_refit.summary(study)
    said = f"<h2>Refit</h2><p>{h.escape(refit)}</p>" if refit else ""
    if not v:
        return said
    head = "".join(f"<th>{x}</th>" for x in ("metric", "sweep", "default run", "difference", "paired SE", "n", "verdict"))
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{h.escape(str(x))}</td>"
            for x in (
                r["metric"] + (" (objective)" if r["objective"] else ""),
                f"{r['sweep']:.4g}",
                f"{r['reference']:.4g}",
                f"{r['diff']:+.4g}",
                "one run each" if r["se"] is None else f"{r['se']:.2g}",
                r["n"],
                r["verdict"],
            )
        )
        + "</tr>"
        for r in v.rows
    )
    return said + (
        f"<h2>Did the sweep pay for itself?</h2><p><b>{h.escape(headline(v))}</b>. Sweep model run <code>{v.run_id}</code>, "
        f"default run <code>{v.reference_run_id}</code>.</p><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _scores(c: MlflowClient, run_id: str) -> dict[str, dict[str, Any]]:
    """{metric: {prompt: score}} from a run's samples table ({} without one: no per-prompt scores)."""
    table = samples.read(c, run_id)
    return {name: dict(zip(table["prompt"], column, strict=True)) for name, column in table.items()}


def _paired_se(a: dict, b: dict, name: str) -> tuple[float | None, int]:
    """Standard error of the mean per-prompt difference a - b on metric `name`, and the prompts it used."""
    sa, sb = a.get(name, {}), b.get(name, {})
    d = [float(sa[p]) - float(sb[p]) for p in sa if p in sb and isinstance(sa[p], (int, float)) and isinstance(sb[p], (int, float))]
    if len(d) < 2:
        return None, len(d)
    mean = sum(d) / len(d)
    return math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d)), len(d)


def _steps(c: MlflowClient, run_id: str) -> int | None:
    try:
        return int(c.get_run(run_id).data.params.get("train.max_steps"))
    except Exception:  # a deleted run, or one logged before afina recorded its steps: "?" in the headline
        return None


def _eval_rows(c: MlflowClient, run_id: str) -> int | None:
    try:
        return int(c.get_run(run_id).data.params["rows.eval"])
    except Exception:  # a run without the param (deleted, or an older afina's): sizes() falls back to the spec's
        return None
