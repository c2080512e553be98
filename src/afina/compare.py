"""The base model next to the trials: the sweep's baseline run and `afina compare`.

`baseline` evaluates the untouched base model once per study (eval loss, generation metrics,
judge) as a child run tagged afina.role=baseline, so every leaderboard shows the gain over it.
`run` puts the same prompts' answers of the base model, the top-K trials and the current
@champion side by side: a rich table in the terminal and `compare.html` on the parent run.
Answers come from each run's samples table; a prompt a run never answered is generated from its
checkpoint.
"""

from __future__ import annotations

import random
import tempfile
import traceback
from pathlib import Path

from afina import distributed, metrics, models, report, tracking
from afina.errors import UserError


def baseline(spec, prepared, ctx: dict, study, console=None) -> dict | None:
    """Once per study; a failure is reported and leaves the sweep running (it is retried next sweep)."""
    c = ctx["client"]
    rid = study.user_attrs.get("baseline_run_id")
    if rid:
        try:
            if c.get_run(rid).info.status == "FINISHED":
                return study.user_attrs.get("baseline")
        except Exception:  # the MLflow store was wiped: evaluate again
            pass
    run_id = c.create_run(
        ctx["experiment_id"],
        run_name="baseline",
        tags={
            "mlflow.parentRunId": ctx["parent_id"],
            f"{tracking.TAG}role": "baseline",
            f"{tracking.TAG}study": study.study_name,
            f"{tracking.TAG}state": "RUNNING",
            "mlflow.note.content": "The untouched base model on the same eval set and prompts as every trial.",
        },
    ).info.run_id
    try:
        tok, model = _base(spec, ctx["model_dir"])
        distributed.share({"kind": "baseline"})  # under torchrun the other ranks evaluate their shards with us
        results = {"eval_loss": _eval_loss(spec, model, tok, prepared)}
        prompts = ctx["prompts"]
        if prompts:
            import mlflow

            outputs = _generate(spec, model, tok, prompts)
            scores, columns = metrics.evaluate(spec, prompts, outputs)
            results |= scores
            mlflow.log_table(
                {
                    "trial": ["base"] * len(prompts),
                    "prompt": [p["prompt"] for p in prompts],
                    "reference": [p.get("reference") or "" for p in prompts],
                    "output": outputs,
                    **columns,
                },
                artifact_file="samples.json",
                run_id=run_id,
            )
        for name in spec.evaluate.combine:  # only the combinations the base model has every part of
            try:
                results |= metrics.combine({name: spec.evaluate.combine[name]}, results)
            except ValueError:
                pass
        tracking.log_params(c, run_id, {"model.ref": spec.model.ref, "rows.eval": len(prepared.eval)})
        tracking.log_metrics(c, run_id, results, 0, synchronous=True)
    except Exception as e:
        c.log_text(run_id, traceback.format_exc(), "error.txt")
        tracking.finish(c, run_id, "FAIL", f"{type(e).__name__}: {e}")
        if console is not None:
            console.print(f"[yellow]baseline failed[/]: {type(e).__name__}: {e} (the sweep goes on; it is retried next time)")
        return None
    tracking.finish(c, run_id, "COMPLETE")
    study.set_user_attr("baseline", results)
    study.set_user_attr("baseline_run_id", run_id)
    return results


def eval_loss_of_base(spec, prepared, model_dir) -> float:
    """The same eval loss the trials report, measured with SFTTrainer before any training (on every rank)."""
    tok, model = _base(spec, model_dir)
    return _eval_loss(spec, model, tok, prepared)


def _base(spec, model_dir):
    """A copy of the worker's base model, loaded as the trials load it (so they reuse it)."""
    from afina.trial import attention

    return models.fresh(model_dir, spec.model.trust_remote_code, attention(), share_weights=True)  # evaluation only


def _eval_loss(spec, model, tok, prepared) -> float:
    from transformers import PrinterCallback, ProgressCallback
    from trl import SFTConfig, SFTTrainer

    from afina import data
    from afina.trial import device_defaults

    fixed = {k: v for k, v in spec.train.items() if k not in ("eval_steps", "save_steps", "logging_steps")}
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(output_dir=tmp, report_to="none", disable_tqdm=True, **{**device_defaults(), **fixed})
        ds = data.to_dataset(prepared.eval)
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, eval_dataset=ds, processing_class=tok)
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        return float(trainer.evaluate()["eval_loss"])


def _generate(spec, model, tok, prompts: list[dict]) -> list[str]:
    from afina import generate

    return generate.generate(
        model, tok, [p["prompt"] for p in prompts], spec.samples.max_new_tokens, spec.samples.temperature, spec.samples.system
    )


def contenders(spec, study, c, top: int) -> list[tuple[str, str | None]]:
    """(label, MLflow run id) for base, the top-K completed trials and the @champion."""
    from afina import status

    out: list[tuple[str, str | None]] = [("base", study.user_attrs.get("baseline_run_id"))]
    done = [r for r in status.rows(study) if r["state"] == "COMPLETE" and r["run_id"]]
    out += [(f"trial {r['number']}", r["run_id"]) for r in done[:top]]
    try:
        mv = c.get_model_version_by_alias(spec.model_name, spec.promote.alias)
        if mv.run_id:
            out.append((f"@{spec.promote.alias} v{mv.version}", mv.run_id))
    except Exception:  # nothing registered yet
        pass
    return out


def answers(spec, c, label: str, run_id: str | None, prompts: list[dict]) -> list[str]:
    stored = report.samples(c, run_id) if run_id else {}
    if all(p["prompt"] in stored for p in prompts):
        return [stored[p["prompt"]] for p in prompts]
    model, tok = _load(spec, c, label, run_id)
    fresh = dict(zip([p["prompt"] for p in prompts], _generate(spec, model, tok, prompts), strict=True))
    return [stored.get(p["prompt"], fresh[p["prompt"]]) for p in prompts]


def _load(spec, c, label: str, run_id: str | None):
    base_dir = models.resolve(spec.model.ref)
    if label == "base" or not run_id:
        return models.load_model(base_dir, spec.model.trust_remote_code), models.load_tokenizer(base_dir, spec.model.trust_remote_code)
    tmp = tempfile.mkdtemp(prefix="afina-compare-")
    try:
        ckpt = Path(c.download_artifacts(run_id, "checkpoint", tmp))
    except Exception:
        raise UserError(f"{label}: run {run_id} has no checkpoint/ artifact to answer new prompts with") from None
    tok = models.load_tokenizer(ckpt, spec.model.trust_remote_code)
    if (ckpt / "adapter_config.json").is_file():
        from peft import PeftModel

        return PeftModel.from_pretrained(models.load_model(base_dir, spec.model.trust_remote_code), str(ckpt)), tok
    return models.load_model(ckpt, spec.model.trust_remote_code), tok


def win_rates(spec, prompts: list[dict], table: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """Pairwise judge verdicts of each contender against the base; the order alternates against position bias."""
    from afina import judge

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


def run(spec, console, top: int = 3, use_judge: bool = False) -> Path:
    from rich.table import Table

    from afina import sweep

    if use_judge and not spec.evaluate.judge:
        raise UserError("--judge needs evaluate.judge in the spec (a model or an OpenAI-compatible url)")
    if top < 1:
        raise UserError("--top must be at least 1")
    prompts = metrics.prompts(spec)
    if not prompts:
        raise UserError("nothing to compare: add samples.prompts (or samples.path / evaluate.path) to the spec")
    study = sweep.open_study(spec, create=False)
    c = tracking.client(spec.tracking.mlflow_uri)
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    table = {label: answers(spec, c, label, rid, prompts) for label, rid in contenders(spec, study, c, top)}
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
