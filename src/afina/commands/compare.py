"""`afina compare`: the base model next to the trials.

`run` puts the same prompts' answers of the base model, the top-K trials and the current
@champion side by side: a rich table in the terminal and `compare.html` on the parent run.
Answers come from each run's samples table; a prompt a run never answered is generated from its
checkpoint.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from afina import UserError, models, tracking
from afina.evaluation import judge, metrics, textgen
from afina.models import loader
from afina.reporting import report
from afina.search import records
from afina.search import study as study_mod
from afina.tracking import samples

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from afina.spec.schema import Spec


def contenders(spec: Spec, study: optuna.Study, c: MlflowClient, top: int) -> list[tuple[str, str | None]]:
    """(label, MLflow run id) for base, the top-K completed trials and the @champion."""
    out: list[tuple[str, str | None]] = [("base", study_mod.baseline(study)[1] or None)]
    done = [r for r in study_mod.rows(study) if r["state"] == "COMPLETE" and r["run_id"]]
    out += [(f"trial {r['number']}", r["run_id"]) for r in done[:top]]
    try:
        mv = c.get_model_version_by_alias(spec.model_name, spec.promote.alias)
        trained = mv.tags.get(tracking.RUN_ID) or mv.run_id  # the trial's run (the model is logged from the promotion run)
        if trained:
            out.append((f"@{spec.promote.alias} v{mv.version}", trained))
    except Exception:  # nothing registered yet
        pass
    return out


def answers(spec: Spec, c: MlflowClient, label: str, run_id: str | None, prompts: list[dict]) -> list[str]:
    stored = samples.answers(c, run_id) if run_id else {}
    if all(p["prompt"] in stored for p in prompts):
        return [stored[p["prompt"]] for p in prompts]
    model, tok = _load(spec, c, label, run_id)
    fresh = dict(zip([p["prompt"] for p in prompts], textgen.answer(spec, model, tok, prompts), strict=True))
    return [stored.get(p["prompt"], fresh[p["prompt"]]) for p in prompts]


def _load(spec: Spec, c: MlflowClient, label: str, run_id: str | None):
    if label == "base" or not run_id:
        base_dir = models.resolve(spec.model.ref)
        return models.load_model(base_dir, spec.model.trust_remote_code), models.load_tokenizer(base_dir, spec.model.trust_remote_code)
    tmp = tempfile.mkdtemp(prefix="afina-compare-")
    try:
        ckpt = Path(c.download_artifacts(run_id, "checkpoint", tmp))
    except Exception:  # MLflow raises several kinds for a missing artifact; the one line says what is wrong
        raise UserError(f"{label}: run {run_id} has no checkpoint/ artifact to answer new prompts with") from None
    base, trust = loader.trained_on(ckpt, spec)  # the base the trial was trained on, as promote uses
    tok = models.load_tokenizer(ckpt, trust)
    if (ckpt / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(models.load_model(models.resolve(base), trust), str(ckpt)), tok
    return models.load_model(ckpt, trust), tok


def win_rates(spec: Spec, prompts: list[dict], table: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Pairwise judge verdicts of each contender against the base; the order alternates against position bias."""
    cfg = spec.evaluate.judge
    base = table["base"]
    out = {}
    for label, outs in table.items():
        if label == "base":
            continue
        swap = [random.Random(f"{label}:{i}").random() < 0.5 for i in range(len(prompts))]
        a = [b if s else o for o, b, s in zip(outs, base, swap, strict=True)]
        b = [o if s else b for o, b, s in zip(outs, base, swap, strict=True)]
        counts = {"win": 0, "loss": 0, "tie": 0, "unparsed": 0}
        for v, s in zip(judge.verdicts(cfg, prompts, a, b), swap, strict=True):
            if v is None:
                counts["unparsed"] += 1
            elif v == "tie":
                counts["tie"] += 1
            else:
                counts["win" if (v == "A") != s else "loss"] += 1
        out[label] = counts
    return out


def run(spec: Spec, console, top: int = 3, use_judge: bool = False, slices: bool = False) -> Path:
    from rich.table import Table

    if use_judge and not spec.evaluate.judge:
        raise UserError("--judge needs evaluate.judge in the spec (a model or an OpenAI-compatible url)")
    if top < 1:
        raise UserError("--top must be at least 1")
    prompts = metrics.prompts(spec)
    if not prompts:
        raise UserError("nothing to compare: add samples.prompts (or samples.path / evaluate.path) to the spec")
    study = study_mod.open(spec)
    c = study_mod.client(spec)  # compare.html goes through the outage-safe client
    parent_id = study_mod.parent_id(study)
    if slices:  # base, the best configuration, and it with each slice toggled (the ablation's first seed)
        from afina.attribution import data_section

        who = data_section.slice_contenders(records.load(study, records.Verdicts), study_mod.baseline(study)[1])
        if len(who) < 3:
            raise UserError("--slices needs an ablation: run `afina ablate SPEC` first (or set search.ablate: true)")
    else:
        who = contenders(spec, study, c, top)
    table = {label: answers(spec, c, label, rid, prompts) for label, rid in who}
    ms = metrics.for_spec(spec, prompts)
    scores = {label: metrics.score(ms, prompts, outs)[0] for label, outs in table.items()}
    wins = win_rates(spec, prompts, table) if use_judge else {}

    tab = Table(title=f"{spec.name} · {len(prompts)} prompts", header_style="bold", show_lines=True)
    tab.add_column("prompt", ratio=2)
    for label in table:
        tab.add_column(label, ratio=3)
    for i, p in enumerate(prompts):
        tab.add_row(p["prompt"], *(outs[i] for outs in table.values()))
    for m in scores["base"] if scores else []:
        tab.add_row(f"[bold]{m}[/]", *(f"{scores[label].get(m, float('nan')):.3g}" for label in table))
    if wins:
        tab.add_row("[bold]judge vs base[/]", "", *(_win_text(wins[label]) for label in list(table)[1:]))
    console.print(tab)

    rows = [[p["prompt"], p.get("reference") or "", *(outs[i] for outs in table.values())] for i, p in enumerate(prompts)]
    rows += [[m, "", *(scores[label].get(m) for label in table)] for m in scores.get("base", {})]
    if wins:
        rows.append(["judge vs base (win/loss/tie/unparsed)", "", "", *(_win_text(wins[label]) for label in list(table)[1:])])
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{spec.name} · afina compare</title>{report.STYLE}</head><body>"
        f"<h1>Compare: {spec.name}</h1>" + report.table_html(["prompt", "reference", *table], rows) + "</body></html>"
    )
    out = report.folder(spec) / f"{spec.name}-compare.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    if parent_id:
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "compare.html").write_text(page, encoding="utf-8")
            c.log_artifact(parent_id, str(Path(tmp) / "compare.html"))
    console.print(f"Written {out}" + (" and logged as compare.html on the sweep's run" if parent_id else ""))
    return out


def _win_text(w: dict[str, int]) -> str:
    judged = w["win"] + w["loss"] + w["tie"]
    rate = (w["win"] + 0.5 * w["tie"]) / judged if judged else float("nan")
    return f"{rate:.0%} ({w['win']}/{w['loss']}/{w['tie']}/{w['unparsed']})"
