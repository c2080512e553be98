"""The sweep report: one self-contained HTML file (plots inlined) per study, refreshed as trials finish.

`refresh` is what the sweep calls after each trial: plots -> parent run `plots/`, the leaderboard
-> `leaderboard.csv`, the report -> `report.html` on the parent run and `<store>/reports/<study>.html`.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from afina import tracking
from afina.baselines import payoff
from afina.evaluation import metrics
from afina.reporting import plots
from afina.search import records
from afina.search import study as study_mod
from afina.tracking import samples

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from afina.spec.schema import Spec

_LAST: dict[str, tuple[float, float]] = {}  # parent run id -> (when the last refresh ended, how long it took)


def folder(spec: Spec) -> Path:
    """Next to the study: the SQLite file's folder, else the project's mlruns/."""
    db = tracking.sqlite_path(spec.tracking.optuna_storage)
    return (db.parent if db is not None else Path("mlruns")) / "reports"


def path(spec: Spec) -> Path:
    return folder(spec) / f"{spec.name}.html"


def refresh(spec: Spec, study: optuna.Study, c: MlflowClient, parent_id: str) -> Path:
    """Re-render plots, leaderboard and report, and log them to the sweep's parent run."""
    with tempfile.TemporaryDirectory() as tmp:
        pics = plots.render(study, Path(tmp) / "plots")
        if pics:
            c.log_artifacts(parent_id, str(Path(tmp) / "plots"), "plots")
        board = leaderboard(study)
        (Path(tmp) / "leaderboard.csv").write_text(_csv(board), encoding="utf-8")
        c.log_artifact(parent_id, str(Path(tmp) / "leaderboard.csv"))
        # the leaderboard's top trial, not winner_refit.winner: the refit is no row of the board, nor its table here
        winner = next((r for r in board if r["trial"] != "base" and r["state"].startswith("COMPLETE") and r["run_id"]), None)
        if winner:  # the Evaluation view's column for the sweep: its winner's answers
            samples.copy(c, winner["run_id"], parent_id)
        out = path(spec)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render(spec, study, c, parent_id, board, [p for p in pics if p.suffix == ".png"]), encoding="utf-8")
        (Path(tmp) / "report.html").write_bytes(out.read_bytes())
        c.log_artifact(parent_id, str(Path(tmp) / "report.html"))
    c.set_tag(parent_id, f"{tracking.TAG}report", str(out))
    return out


def refresh_quietly(spec: Spec, study: optuna.Study, c: MlflowClient, parent_id: str, console=None, force: bool = True) -> Path | None:
    """refresh() for the sweep loop: a plotting problem is printed, never fails the sweep.

    Without `force` it skips while the last refresh was less than 10x its own duration ago, so
    rendering stays under ~10% of the sweep's time even when trials take seconds.
    """
    last_end, took = _LAST.get(parent_id, (0.0, 0.0))
    if not force and time.monotonic() - last_end < 10 * took:
        return None
    try:
        t0 = time.monotonic()
        out = refresh(spec, study, c, parent_id)
        _LAST[parent_id] = (time.monotonic(), time.monotonic() - t0)
        return out
    except Exception as e:  # a picture of the study, redrawn after every trial: never fails the sweep
        if console is not None:
            console.print(f"[yellow]report not refreshed[/]: {tracking.redact(f'{type(e).__name__}: {e}')}")
        return None


def leaderboard(study: optuna.Study) -> list[dict]:
    """Status rows (best first) with every measured result, the gain over the base model, params."""
    names = study_mod.objectives(study)
    base = study_mod.baseline(study)[0]
    pareto = {t.number for t in study_mod.pareto(study)}
    out = []
    if base:
        out.append({"trial": "base", "state": "BASELINE", **{n: base.get(n) for n in names}, **_extra(base, names)})
    ref = records.load(study, records.Reference)
    if ref:
        res = ref.results
        out.append(
            {"trial": "reference", "state": f"REFERENCE ({ref.steps} steps)", **{n: res.get(n) for n in names}, **_extra(res, names)}
        )
    for r in study_mod.rows(study):
        t = study.trials[r["number"]]
        results = t.user_attrs.get("results") or {}
        row = {"trial": r["number"], "state": r["state"] + (" ★" if r["number"] in pareto else "")}
        row |= {n: v for n, v in zip(names, r["values"], strict=True)} if r["values"] else {n: None for n in names}
        for n in names:
            if base.get(n) is not None and row.get(n) is not None:
                row[f"{n} vs base"] = row[n] - base[n]
        row |= _extra(results, names) | {k: v for k, v in r["params"].items()}
        row |= {"seconds": round(r["duration"], 1) if r["duration"] is not None else None, "run_id": r["run_id"], "reason": r["reason"]}
        out.append(row)
    return out


def _extra(results: dict, names: list[str]) -> dict:
    return {k: v for k, v in sorted(results.items()) if k not in names}


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def _csv(rows: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_columns(rows))
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def table_html(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}th{background:#f3f3f3}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}.pics{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:1em}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}</style>"""


def render(spec: Spec, study: optuna.Study, c: MlflowClient, parent_id: str, board: list[dict], pngs: list[Path]) -> str:
    names = study_mod.objectives(study)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(spec.name)} · afina report</title>{STYLE}</head><body>",
        f"<h1>Sweep report: {html.escape(spec.name)}</h1><p>{html.escape(spec.description)}</p>",
        f"<p>Model <code>{html.escape(spec.model.ref)}</code> ({spec.model.method}) · objective "
        + ", ".join(f"<b>{html.escape(n)}</b> ({d})" for n, d in zip(names, spec.search.directions, strict=True))
        + f" · {len(study.trials)} trials · MLflow parent run <code>{parent_id}</code></p>",
    ]
    from afina.attribution import data_section

    forest = [p for p in pngs if p.stem == "verdicts"]  # the controlled verdict as a picture, in its own section
    parts.append(data_section.html_section(records.load(study, records.Verdicts)) + "".join(_figure(p, names) for p in forest))
    parts.append(payoff.html(study))
    parts.append("<h2>Leaderboard</h2>" + (("<p>★ = on the Pareto front</p>") if len(study.directions) > 1 else ""))
    cols = _columns(board)
    parts.append(table_html(cols, [[r.get(k) for k in cols] for r in board]))
    parts.append(_worth_it(study))
    if pngs:
        left_out = plots.importances_left_out(study)
        parts.append(
            "<h2>Plots</h2>"
            + (f"<p>{html.escape(left_out)}</p>" if left_out else "")
            + f"<div class='pics'>{''.join(_figure(p, names) for p in pngs if p not in forest)}</div>"
        )
    prompts = metrics.prompts(spec)
    trials = [r for r in board if r["trial"] not in ("base", "reference") and r["state"].startswith("COMPLETE")]
    base_out = samples.answers(c, study_mod.baseline(study)[1])
    if prompts and trials:
        best = trials[0]  # the leaderboard's top trial (a multi-objective board sorts by each objective in turn)
        best_out = samples.answers(c, best["run_id"])
        ref_id = ref.run_id if (ref := records.load(study, records.Reference)) else None
        ref_out = samples.answers(c, ref_id) if ref_id else {}
        parts.append(f"<h2>Best trial ({best['trial']}) vs base model</h2>")
        parts.append(
            table_html(
                ["prompt", "reference", "base model", *(["default run"] if ref_id else []), f"trial {best['trial']}"],
                [
                    [
                        p["prompt"],
                        p.get("reference") or "",
                        base_out.get(p["prompt"], ""),
                        *([ref_out.get(p["prompt"], "")] if ref_id else []),
                        best_out.get(p["prompt"], ""),
                    ]
                    for p in prompts
                ],
            )
        )
        outs = {r["trial"]: samples.answers(c, r["run_id"]) for r in trials}
        parts.append(f"<details><summary><b>Every trial's answers</b> ({len(outs)} trials)</summary>")
        parts.append(
            table_html(
                ["prompt", "base", *(f"trial {n}" for n in outs)],
                [[p["prompt"], base_out.get(p["prompt"], ""), *(o.get(p["prompt"], "") for o in outs.values())] for p in prompts],
            )
        )
        parts.append("</details>")
    parts.append(_registry_section(spec, c))
    parts.append(_data_section(c, parent_id))
    parts.append("</body></html>")
    return "".join(parts)


def _figure(png: Path, names: list[str]) -> str:
    cap = html.escape(plots.caption(png.stem, names))
    data = base64.b64encode(png.read_bytes()).decode()
    return f"<figure><img alt='{cap}' src='data:image/png;base64,{data}'><figcaption>{cap}</figcaption></figure>"


def _worth_it(study: optuna.Study) -> str:
    """The best trial against one default run of the sweep's total compute (baseline.default_run)."""
    ref, rows = records.load(study, records.Reference), study_mod.reference_gaps(study)
    if not ref or not rows:
        return ""
    return (
        f"<h2>Was the sweep worth it?</h2><p>Best trial {rows[0]['trial']} against one run with TRL's and afina's default settings, "
        f"trained on the same data for the {ref.steps} steps all trials spent together (run <code>{ref.run_id}</code>). "
        "One run each: differences within seed noise are not effects.</p>"
        + table_html(
            ["metric", "best trial", "default run", "gap", "n"], [[g["metric"], g["best"], g["reference"], g["gap"], g["n"]] for g in rows]
        )
    )


def _data_section(c: MlflowClient, parent_id: str) -> str:
    """Rows and fingerprints per slice, and `afina check`'s report when the parent run has one."""
    run = c.get_run(parent_id)
    params = {k: v for k, v in sorted(run.data.params.items()) if k.startswith(("rows.", "data."))}
    out = "<h2>Data</h2>" + table_html(["param", "value"], [[k, v] for k, v in params.items()])
    summary = run.data.tags.get(tracking.CHECK)
    if summary:
        out += f"<p>Data check: <b>{html.escape(summary)}</b></p>"
        try:
            with tempfile.TemporaryDirectory() as tmp:
                md = Path(c.download_artifacts(parent_id, "check/report.md", tmp)).read_text(encoding="utf-8")
            out += f"<details><summary>check report</summary>{markdown(md[:20000])}</details>"
        except Exception:  # no check report on this parent run (an older sweep's, or the upload failed): left out
            pass
    return out


def markdown(text: str) -> str:
    """Markdown (headings, lists, tables) as HTML; raw HTML in it is escaped."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(text)


def _registry_section(spec: Spec, c: MlflowClient) -> str:
    """Which version holds the promotion alias, once `afina promote` moved it."""
    try:
        mv = c.get_model_version_by_alias(spec.model_name, spec.promote.alias)
    except Exception:  # nothing registered yet
        return (
            f"<h2>Registry</h2><p>No <code>@{html.escape(spec.promote.alias)}</code> yet: "
            "<code>afina promote</code> registers the best trial if it beats the champion.</p>"
        )
    tag = mv.tags.get
    return (
        f"<h2>Registry</h2><p><code>models:/{html.escape(spec.model_name)}@{html.escape(spec.promote.alias)}</code> is "
        f"version {mv.version} (trial {html.escape(tag(tracking.TRIAL, '?'))}, gate {html.escape(tag(tracking.GATE_DECISION, '?'))}: "
        f"{html.escape(tag(tracking.GATE_METRIC, ''))} {html.escape(tag(tracking.GATE_SCORE, ''))} vs champion "
        f"{html.escape(tag(tracking.GATE_CHAMPION_SCORE, 'none'))}).</p>"
    )
