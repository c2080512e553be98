"""The sweep as pictures: Optuna's plots (PNG via matplotlib, interactive HTML via plotly).

`render(study, folder)` writes what the finished trials can support: optimisation history,
parameter importances (data slices are parameters too; only from IMPORTANCE_MIN complete trials),
parallel coordinates, the Pareto front of a multi-objective study, and the data slices' effect: the
controlled ablation's verdict as a forest plot when the study has one (`verdicts.png`, read from the
study's `verdicts` attribute, never recomputed), else the observational with/without chart. A plot the
data cannot support yet (one trial, no variation) is skipped, never an error.
"""

from __future__ import annotations

import html
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afina.search import records
from afina.search import study as study_mod

if TYPE_CHECKING:
    import optuna


def render(study: optuna.Study, folder: Path) -> list[Path]:
    """PNG per plot plus one `interactive.html` holding all plotly figures (plotly.js inlined once)."""
    import matplotlib

    matplotlib.use("Agg")  # no display; also safe inside a worker thread
    folder.mkdir(parents=True, exist_ok=True)
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.values]
    if not done:
        return []
    names = study_mod.objectives(study)
    written: list[Path] = []
    figures: list[tuple[str, Any]] = []
    for name, draw in _plots(study, names, done):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks the matplotlib backend experimental
            try:
                png, fig = draw()
            except (ValueError, RuntimeError, ZeroDivisionError, IndexError):
                continue  # not enough variation yet for this plot
        if png is not None:
            path = folder / f"{name}.png"
            png.savefig(path, dpi=90, bbox_inches="tight")
            written.append(path)
        if fig is not None:
            figures.append((name, fig))
        import matplotlib.pyplot as plt

        plt.close("all")
    if figures:
        written.append(_interactive(figures, folder / "interactive.html", study.study_name, names))
    return written


def _plots(study, names: list[str], done) -> list[tuple[str, Callable]]:
    import optuna.visualization as pv
    import optuna.visualization.matplotlib as pm

    multi = len(study.directions) > 1
    abl = ((v := records.load(study, records.Verdicts)) and v.ablation) or {}
    out: list[tuple[str, Callable]] = []
    for i, name in enumerate(names):
        kw: dict[str, Any] = {"target_name": name}
        if multi:
            kw["target"] = _value(i)
        suffix = f"-{_safe(name)}" if multi else ""
        out.append((f"history{suffix}", _both(pm.plot_optimization_history, pv.plot_optimization_history, study, **kw)))
        if len({tuple(sorted(t.params.items(), key=str)) for t in done}) > 1:
            if importances_left_out(study) is None:
                imp = {**kw, "evaluator": _evaluator()}
                out.append((f"importances{suffix}", _both(pm.plot_param_importances, pv.plot_param_importances, study, **imp)))
            out.append((f"parallel{suffix}", _both(pm.plot_parallel_coordinate, pv.plot_parallel_coordinate, study, **kw)))
        if not abl.get("rows"):  # the controlled verdict replaces the observational chart
            out.append((f"slices{suffix}", lambda i=i, name=name: slice_effect(done, i, name)))
    if abl.get("rows"):
        known = {n: d.name.lower() for n, d in zip(names, study.directions, strict=True)}
        out.append(("verdicts", lambda: (forest(abl, known), None)))
    if multi and len(names) in (2, 3):
        out.append(("pareto", _both(pm.plot_pareto_front, pv.plot_pareto_front, study, target_names=names)))
    return out


# Optuna 5's importance evaluator, PED-ANOVA, scores a parameter by how its values among the top 10 % of trials
# differ from its values among all trials; Optuna's documentation asks for at least 5 trials in that top group.
# Fewer, and the "importance" describes one or two lucky trials (issue #29: learning_rate 0.99 from 4 trials).
TOP_QUANTILE, TOP_TRIALS = 0.1, 5
IMPORTANCE_MIN = math.ceil(TOP_TRIALS / TOP_QUANTILE)  # 50 complete trials


def _evaluator():
    from optuna.importance import PedAnovaImportanceEvaluator

    return PedAnovaImportanceEvaluator(target_quantile=TOP_QUANTILE)  # pinned: the rule above is about this evaluator


def importances_left_out(study: optuna.Study) -> str | None:
    """Why the importances plot is not drawn (too few complete trials), or None when it is."""
    n = len(study_mod.done(study))
    if n >= IMPORTANCE_MIN:
        return None
    return (
        f"Parameter importances left out: they need ≥ {IMPORTANCE_MIN} complete trials; this study has {n}. "
        f"Optuna's PED-ANOVA compares the top {TOP_QUANTILE:.0%} of trials with all of them and needs ≥ {TOP_TRIALS} trials "
        "in that top group; below that it ranks parameters by one or two lucky trials."
    )


TITLES = {
    "history": "Optimisation history: {name} of each trial, and the best so far",
    "importances": "Which searched parameters (data slices included) mattered for {name}",
    "parallel": "Parallel coordinates: each trial's picks and its {name}",
    "slices": "{name} with vs without each data slice: observational (trials differ in other parameters too)",
    "verdicts": "Controlled ablation: each slice's effect with its paired interval, and the noise floor",
    "pareto": "Pareto front of the objectives",
}


def caption(stem: str, names: list[str]) -> str:
    """A plot's title from its file name (`history`, or `history-<objective>` in a multi-objective study)."""
    kind, _, suffix = stem.partition("-")
    name = next((n for n in names if _safe(n) == suffix), suffix) if suffix else (names[0] if names else "the objective")
    return TITLES.get(kind, stem).format(name=name)


def _value(i: int) -> Callable:
    return lambda t: t.values[i]


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def _both(mpl_fn, plotly_fn, study, **kw) -> Callable:
    def draw():
        ax = mpl_fn(study, **kw)
        first = ax.flat[0] if hasattr(ax, "flat") else ax
        return first.figure, plotly_fn(study, **kw)

    return draw


def slice_effect(done, index: int, name: str):
    """Objective of trials with vs without each data slice (`slices.X.include` params)."""
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go

    keys = sorted({k for t in done for k in t.params if k.startswith("slices.") and k.endswith(".include")})
    keys = [k for k in keys if len({t.params.get(k) for t in done}) > 1]  # a slice every trial chose alike shows nothing
    groups = []
    for key in keys:
        slice_name = key.split(".")[1]
        for flag, label in ((True, "with"), (False, "without")):
            vals = [t.values[index] for t in done if t.params.get(key) == flag and math.isfinite(t.values[index])]
            groups.append((slice_name, label, vals))
    if not any(vals for _, _, vals in groups):
        raise ValueError("no slice was varied across the completed trials")
    fig, ax = plt.subplots(figsize=(max(4, 2.2 * len(keys)), 3.6))
    pfig = go.Figure()
    for j, (slice_name, label, vals) in enumerate(groups):
        colour = "tab:blue" if label == "with" else "tab:orange"
        if vals:
            ax.bar(j, sum(vals) / len(vals), color=colour, alpha=0.35)
            ax.scatter([j] * len(vals), vals, color=colour, zorder=3)
        pfig.add_trace(go.Box(y=vals, name=f"{slice_name} · {label}", boxpoints="all", marker_color=colour.removeprefix("tab:")))
    ax.set_xticks(range(len(groups)), [f"{s}\n{lab} (n={len(v)})" for s, lab, v in groups])
    ax.set_ylabel(name)
    title = f"{name} with vs without each data slice (trials differ in other parameters too)"
    ax.set_title(title, fontsize=9)
    pfig.update_layout(title=title, yaxis_title=name, showlegend=False)
    return fig, pfig


def forest(abl: dict, known: dict[str, str]):
    """The stored ablation as a forest plot: a panel per metric, a row per slice change; the effect (more minus
    less of the slice) as a point, its paired interval as a bar, 0 as a line, the noise floor (±sd) shaded."""
    import matplotlib.pyplot as plt

    from afina.attribution.verdicts import direction

    rows, colours = abl["rows"], {"helps": "tab:green", "hurts": "tab:red"}
    metrics_, changes = list(dict.fromkeys(r["metric"] for r in rows)), list(dict.fromkeys(r["change"] for r in rows))
    with plt.style.context("default"):  # Optuna's plots switch to ggplot, whose grey hides the noise band
        fig, axes = plt.subplots(len(metrics_), 1, figsize=(8, 1 + len(metrics_) * (0.8 + 0.45 * len(changes))), squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics_, strict=True):
        sd = (abl.get("noise", {}).get(metric) or {}).get("sd")
        if sd:
            ax.axvspan(-sd, sd, color="#cfe0f3", zorder=0)
        ax.axvline(0, color="0.3", lw=1)
        for y, change in enumerate(changes):
            r = next((r for r in rows if r["metric"] == metric and r["change"] == change), None)
            if r is None:
                continue
            colour = colours.get(r["verdict"], "0.45")
            if r["delta"] is not None and r["lo"] is not None and r["hi"] is not None:
                ax.plot([r["lo"], r["hi"]], [y, y], color=colour, lw=2.5, solid_capstyle="butt")
            if r["delta"] is not None:
                ax.plot([r["delta"]], [y], "o", color=colour, ms=7)
            ax.text(1.01, y, f"{r['verdict']} (n={r['n']})", transform=ax.get_yaxis_transform(), va="center", fontsize=8, color=colour)
        ax.set_yticks(range(len(changes)), changes, fontsize=8)
        ax.set_ylim(len(changes) - 0.5, -0.5)
        better = {"minimize": "lower is better", "maximize": "higher is better"}.get(direction(metric, known) or "", "no better direction")
        floor = f"blue band: noise floor ±{sd:.3g} (sd across seeds)" if sd is not None else "no noise floor (under 2 seeds)"
        ax.set_title(f"{metric} ({better}); {floor}", fontsize=9, loc="left")
        ax.set_xlabel(f"Δ {metric}: more − less of the slice", fontsize=8)
    fig.suptitle(f"Controlled ablation of trial {abl['best_trial']}: n = {abl['k']} paired seeds, {abl['method']}", fontsize=10)
    fig.tight_layout()
    return fig


def _interactive(figures: list[tuple[str, Any]], path: Path, title: str, names: list[str]) -> Path:
    from plotly.offline import get_plotlyjs

    parts = [
        f"<h2>{html.escape(caption(name, names))}</h2>" + fig.to_html(full_html=False, include_plotlyjs=False) for name, fig in figures
    ]
    # plotly.js inlined (not a CDN link): afina works offline and the MLflow UI shows it as is.
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title} · afina plots</title>"
        f"<script>{get_plotlyjs()}</script></head><body style='font-family:sans-serif'>"
        f"<h1>{title}</h1>{''.join(parts)}</body></html>",
        encoding="utf-8",
    )
    return path
