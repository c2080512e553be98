"""What the MLflow UI says about a sweep: descriptions, the runs table's columns, the deep link.

Descriptions are markdown in the places MLflow shows them: a run's `mlflow.note.content` tag, a
registered model's and a model version's description. Each one is composed from what exists at
the time, so calling a function again later (after more trials, after slice verdicts) retells it.
The runs table's columns live in an experiment tag that MLflow 3's UI reads as a shared view
(`?viewStateShareKey=afina`); the link opens the machine-learning runs table with it.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from afina import tracking
from afina.attribution import data_section
from afina.evaluation import metrics
from afina.spec.trained import sense

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from afina.spec.schema import Spec

VIEW_KEY = "afina"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"  # MLflow 3.17's UI: experiment tag behind ?viewStateShareKey=
STATES = ("COMPLETE", "PRUNED", "FAIL")


def path(experiment_id: str, run_id: str | None = None) -> str:
    """The UI's address of an experiment's runs table or of one run, every link afina writes. MLflow 3.17's UI
    opens both in its GenAI layout unless the link asks for the model-training one: it follows this parameter,
    not the experiment tag `mlflow.experimentKind`, which its open-source build does not read."""
    return f"#/experiments/{experiment_id}/runs{f'/{run_id}' if run_id else ''}?workflowType=machine_learning"


def run_link(experiment_id: str, run_id: str, text: str) -> str:
    return f"[{text}]({path(experiment_id, run_id)})"


def link(experiment_id: str, host: str = "127.0.0.1", port: int = 5000) -> str:
    """The runs table of the experiment (not the GenAI traces page), with afina's columns."""
    return f"http://{host}:{port}/{path(experiment_id)}&viewStateShareKey={VIEW_KEY}"


# ---------------------------------------------------------------- the runs table


def view_state(spec: Spec, headline: list[str]) -> dict[str, Any]:
    """Search facets + columns of the runs table: the headline metrics (metrics.headline), searched params."""
    columns = [f"metrics.`{m}`" for m in headline] + [f"params.`{p}`" for p in spec.search.space] + [f"tags.`{tracking.STATE}`"]
    shown = ["attributes.`Dataset`", "attributes.`Models`"]
    # the UI's column ids; without an order it puts the attribute columns first and metrics alphabetically
    order = ["attributes.`Run Name`", "runDateAndNestInfo", *columns, "duration", *shown]
    return {
        "searchFilter": "",
        "orderByKey": "attributes.start_time",  # MLflow nests child runs under their parent only in this order
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "modelVersionFilter": "All Runs",
        "datasetsFilter": [],
        "selectedColumns": columns + shown,
        "columnOrder": order,
        "runsHiddenMode": "SHOW_ALL",
        "hideEmptyCharts": True,
    }


def set_view(c: MlflowClient, experiment_id: str, spec: Spec, headline: list[str]) -> None:
    c.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(view_state(spec, headline)))


# ---------------------------------------------------------------- the sweep (parent run)


def sweep_note(spec: Spec, study, experiment_id: str, spec_path: str, data_verdict: str | None = None) -> str:
    """The parent run's description: winner, gain over the base model, trial counts, data verdict.

    `data_verdict` is the slice verdicts' summary once they exist; until then the note says so.
    """
    from afina.search import records, winner_refit
    from afina.search import study as study_mod

    names = study.user_attrs.get("objectives") or spec.search.objectives
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state.name == s for t in trials) for s in STATES}
    lines = []  # the winner first: MLflow shows a description's first lines and folds the rest
    base = study.user_attrs.get("baseline") or {}
    if len(study.directions) > 1:
        front = study_mod.pareto(study)
        links = ", ".join(run_link(experiment_id, study_mod.run_id(t, study), f"trial {t.number}") for t in front)
        lines.append(f"Pareto front: {links or 'none yet'}")
    else:
        found = winner_refit.winner(study)  # the model `afina promote` will register leads
        if found is None:
            lines.append("Winner: none yet (no trial has completed).")
        else:
            best, kept = found
            trial = run_link(experiment_id, study_mod.run_id(best, study), f"trial {best.number}")
            value = kept.values[0] if kept else best.values[0]
            who = run_link(experiment_id, kept.run_id, f"refit of trial {best.number}") if kept else trial
            gain = f" · base model {_num(base[names[0]])}, gain {_signed(value - base[names[0]])}" if names[0] in base else ""
            lineage = f" · {trial}'s configuration trained for {kept.steps} steps; the trial scored {_num(best.values[0])}" if kept else ""
            lines.append(
                f"**Winner: {who}** · {names[0]} {_num(value)}{gain}{lineage} (one run each on the same eval set and prompts; "
                f"no noise estimate; `afina compare {spec_path}` shows the answers side by side)"
            )
    lines.append(
        f"{len(trials)} trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed · objective "
        + ", ".join(f"{n} ({d})" for n, d in zip(names, spec.search.directions, strict=False))
    )
    if data_verdict is None:  # the slice verdicts kept on the study (attribution/ablation.py)
        data_verdict = "\n".join(f"- {line.strip()}" for line in data_section.lines(records.load(study, records.Verdicts), spec_path))
    lines.append(f"**Data:** {'see What your data did below.' if data_verdict else f'no slice verdict yet (`afina ablate {spec_path}`).'}")
    if data_verdict:
        lines.append(f"### What your data did\n{data_verdict}")
    lines.append(f"afina sweep `{spec.name}` · model `{spec.model.ref}` ({spec.model.method}) · `afina sweep {spec_path}`")
    if spec.description:
        lines.append(spec.description)
    lines.append("Report: `report.html` and `plots/` in this run's artifacts; `samples.json` holds the winner's answers.")
    return "\n\n".join(lines)


def sweep_metrics(study) -> dict[str, float]:
    """The parent's own metrics: trial counts, the best of each measured result over completed trials, and
    the winner's results under the trials' names (chrf, rougeL...), so its row fills the runs table's columns."""
    from afina.search import study as study_mod

    trials = study.get_trials(deepcopy=False)
    out: dict[str, float] = {f"trials_{s.lower()}": float(sum(t.state.name == s for t in trials)) for s in STATES}
    done = [t for t in trials if t.state.name == "COMPLETE"]
    names = study.user_attrs.get("objectives") or []
    for i, name in enumerate(names):
        values = [t.values[i] for t in done if t.values and math.isfinite(t.values[i])]
        if values:
            minimize = study.directions[i].name == "MINIMIZE"
            out[f"best_{name}"] = min(values) if minimize else max(values)
    for t in done:  # generation metrics and eval loss; the training counters have no "best"
        for k, v in (t.user_attrs.get("results") or {}).items():
            if k in names or k in metrics.TRAINING or not math.isfinite(v):
                continue
            lower = sense(k) == "minimize"
            key = f"best_{k}"
            out[key] = v if key not in out else (min(out[key], v) if lower else max(out[key], v))
    winner = study_mod.best(study) if len(study.directions) == 1 else None
    if winner:  # the sweep's row in the runs table shows its winner's numbers in the trials' own columns
        for k, v in (winner.user_attrs.get("results") or {}).items():
            if k not in metrics.TRAIN_RESULTS and math.isfinite(v):
                out[k] = v
    return out


# ---------------------------------------------------------------- one trial


def trial_note(study, t, experiment_id: str) -> str:
    """A trial run's description: its searched picks, its result and its rank among completed trials."""
    names = study.user_attrs.get("objectives") or [f"value{i}" for i in range(len(study.directions))]
    lines = [f"**trial {t.number}** · {t.state.name}" + (f" · {_rank(study, t, names)}" if t.state.name == "COMPLETE" else "")]
    if t.params:
        lines.append("Searched picks: " + " · ".join(f"`{k}` = {_num(v)}" for k, v in t.params.items()))
    results = t.user_attrs.get("results") or {}
    base = study.user_attrs.get("baseline") or {}
    if results:
        rank = {**dict.fromkeys(results, 2), "eval_loss": 1, **{k: 3 for k in results if k.startswith("train_")}, **dict.fromkeys(names, 0)}
        shown = sorted(results, key=lambda k: rank[k])  # objectives, eval loss, generation metrics, training counters
        lines.append(
            "Result: "
            + " · ".join(
                f"{k} {_num(results[k])}" + (f" (base {_num(base[k])})" if k in base and k in names else "") for k in shown if k in results
            )
        )
    reason = t.user_attrs.get("fail_reason") or t.user_attrs.get("prune_reason")
    if reason and t.state.name != "COMPLETE":
        lines.append(f"Stopped: {reason}")
    return "\n\n".join(lines)


def retell(
    c: MlflowClient, study, spec, experiment_id: str, parent_id: str, spec_path: str, trials: bool = True, data_verdict: str | None = None
) -> None:
    """Rewrite the parent's note and metrics and, with `trials`, every finished trial's note (ranks move)."""
    from afina import tracking

    c.set_tag(parent_id, tracking.NOTE, sweep_note(spec, study, experiment_id, spec_path, data_verdict))
    tracking.log_metrics(c, parent_id, sweep_metrics(study), 0, synchronous=True)
    for t in study.get_trials(deepcopy=False) if trials else []:
        tell_trial(c, study, t, experiment_id)


def tell_trial(c: MlflowClient, study, t, experiment_id: str) -> None:
    """A finished trial's note (its rank as of now)."""
    from afina.search import study as study_mod

    rid = study_mod.run_id(t, study)
    if t.state.name in STATES and rid:
        c.set_tag(rid, tracking.NOTE, trial_note(study, t, experiment_id))


# ---------------------------------------------------------------- promotion and the registry


def promotion_note(gate: dict[str, str], n_rows: int, trial_number: int, experiment_id: str, candidate_run: str, champion) -> str:
    decision = gate[tracking.GATE_DECISION]
    replaced = (
        f"@champion was v{champion.version} ({gate[tracking.GATE_CHAMPION_SCORE]})"
        if champion is not None
        else "no champion yet (first promotion)"
    )
    return "\n\n".join(
        [
            f"**Gate: {decision}** · {gate[tracking.GATE_METRIC]} on {n_rows} promotion rows "
            f"(set `{gate[tracking.GATE_SET_FINGERPRINT]}`), lower is better",
            f"Candidate: {run_link(experiment_id, candidate_run, f'trial {trial_number}')} scored {gate[tracking.GATE_SCORE]} · {replaced}",
        ]
    )


def version_note(
    name: str, version: str, meta: dict, trial_number: int, study_name: str, experiment_id: str, run_id: str, gate: dict, promo_id: str
) -> str:
    what = {"adapter": "LoRA adapter", "merged": "LoRA merged into the base", "full": "fully fine-tuned weights"}.get(
        meta["format"], meta["format"]
    )
    return "\n\n".join(
        [
            f"**Gate: {gate[tracking.GATE_DECISION]}** · {gate[tracking.GATE_METRIC]} {gate[tracking.GATE_SCORE]} vs champion "
            f"{gate[tracking.GATE_CHAMPION_SCORE]}, lower is better ({run_link(experiment_id, promo_id, 'promotion run')})",
            f"**{name} v{version}**: {what} over `{meta.get('base', '?')}`, "
            f"from {run_link(experiment_id, run_id, f'trial {trial_number}')} of study `{study_name}`.",
            "Load it with `afina generate models:/"
            + f"{name}/{version} \"...\"` or `mlflow.pyfunc.load_model('models:/{name}/{version}')`.",
        ]
    )


def model_note(name: str, study_name: str, alias: str) -> str:
    return (
        f"Checkpoints of the afina study `{study_name}` that passed the promotion gate. `@{alias}` is the current best; "
        f"the one it replaced keeps `@previous`. Each version's description says where it came from."
    )


# ---------------------------------------------------------------- helpers


def _rank(study, t, names: list[str]) -> str:
    done = [x for x in study.get_trials(deepcopy=False) if x.state.name == "COMPLETE" and x.values]
    if len(study.directions) > 1:
        from afina.search import study as study_mod

        return "on the Pareto front" if t.number in {x.number for x in study_mod.pareto(study)} else "not on the Pareto front"
    sign = 1 if study.directions[0].name == "MINIMIZE" else -1
    order = sorted(done, key=lambda x: (sign * x.values[0], x.number))
    rank = next((i for i, x in enumerate(order, 1) if x.number == t.number), None)
    return f"rank {rank} of {len(order)} completed by {names[0]}" if rank else "not ranked"


def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _signed(v: float) -> str:
    return f"{v:+.4g}"
