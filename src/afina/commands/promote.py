"""`afina promote`: pick a trial, gate it against @champion (evaluation/answer_loss.py), register, move aliases.

Everything that can be wrong with the input (study, trial, artifact, promotion set) is checked
before the registry is touched. The gate scores the candidate and the current champion with the
same metric on the same promotion set; a refused candidate leaves the registry unchanged. Every
comparison is logged as a `promotion` run in the spec's MLflow experiment. Nothing is deleted:
the old champion keeps the alias `previous` (`afina rollback` swaps the two back).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from afina import UserError, data, models, tracking
from afina.data import chat_rows, sources
from afina.evaluation import answer_loss
from afina.models import loader
from afina.promotion import pyfunc, registry
from afina.reporting import run_descriptions
from afina.search import study as study_mod
from afina.search import winner_refit
from afina.tracking import logs, samples, spool

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient

    from afina.spec.schema import Spec

NOISE = 1e-6  # float noise: identical weights loaded two ways must not count as "better"


# ---------------------------------------------------------------- the promotion set


def promotion_set(spec: Spec) -> list[chat_rows.Row]:
    """promote.path if set, else the spec's eval set."""
    if spec.promote.path is None:
        return data.prepare(spec).eval
    rows = []
    for p in sources.files(spec.promote.path, spec.base_dir):
        rows += chat_rows.normalize(sources.read(p), p.name)
    if not rows:
        raise UserError(f"promote.path {spec.promote.path!r} has no rows; point it at held-out prompts with answers")
    return rows


# ---------------------------------------------------------------- promote


def run(spec: Spec, console, number: int | None = None, force: bool = False, merge: bool = False) -> bool:
    """Returns True when the alias moved (or the candidate already holds it)."""
    logs.quiet()
    tracking.check_url(spec.tracking.mlflow_uri, "mlflow_uri")
    tracking.check_url(spec.tracking.optuna_storage, "optuna_storage")
    study = study_mod.open(spec)
    c = study_mod.reader(spec.tracking.mlflow_uri)
    trial = winner_refit.prefer(study, spec, winner_refit.pick(study, spec, number, "promote"), console)  # its refit, when that beats it
    run_id = study_mod.run_id(trial, study)
    if run_id.startswith(spool.OFFLINE):
        raise UserError(f"trial {trial.number}'s MLflow records are still kept locally (the server was down); run `afina sync` first")
    try:
        source = c.get_run(run_id) if run_id else None
    except Exception:  # a deleted run, or another store's id: the one line below says so
        source = None
    if source is None:
        raise UserError(f"trial {trial.number} has no MLflow run in {tracking.redact(spec.tracking.mlflow_uri)}; was the store moved?")
    if not any(
        a.path == "checkpoint/adapter_config.json" or a.path == "checkpoint/config.json" for a in c.list_artifacts(run_id, "checkpoint")
    ):
        raise UserError(f"trial {trial.number} (run {run_id}) has no checkpoint/ artifact with weights; nothing to promote")
    rows = promotion_set(spec)
    set_print = chat_rows.fingerprint(rows)
    name, alias = spec.model_name, spec.promote.alias
    champion = registry.by_alias(c, name, alias)
    same = champion is not None and champion.tags.get(tracking.RUN_ID) == run_id
    if same and not force and (not merge or champion.tags.get(tracking.FORMAT) == "merged"):
        console.print(f"trial {trial.number} is already @{alias} ({name} v{champion.version}); nothing to do")
        return True

    gate_metric = answer_loss.metric(spec)
    metric, lower_better = answer_loss.METRICS[gate_metric]
    with tempfile.TemporaryDirectory(prefix="afina-promote-") as tmp:
        import mlflow

        ckpt = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint", dst_path=tmp))
        cand_dir = package(ckpt, Path(tmp) / loader.ARTIFACT, spec, merge)
        cand = metric(*loader.load(cand_dir), rows)
        champ = None
        if champion is not None:
            with loader.fetched(f"models:/{name}/{champion.version}") as d:
                champ = metric(*loader.load(d), rows)
        sign = 1 if lower_better else -1
        better = champ is None or sign * (champ - cand) > max(spec.promote.margin, NOISE)
        decision = "promoted" if better else "forced" if force else "refused"
        _report(console, gate_metric, trial, cand, champ, champion, alias, set_print, len(rows), spec.promote.margin, decision)
        gate_tags = {  # the decision first: the order MLflow is given them
            tracking.GATE_DECISION: decision,
            tracking.GATE_METRIC: gate_metric,
            tracking.GATE_SCORE: f"{cand:.6g}",
            tracking.GATE_CHAMPION_SCORE: "none" if champ is None else f"{champ:.6g}",
            tracking.GATE_SET_FINGERPRINT: set_print,
        }
        exp_id = source.info.experiment_id
        promo_id = _log_promotion(c, exp_id, spec, trial, run_id, champion, gate_tags, cand, champ, len(rows))
        samples.copy(c, run_id, promo_id)  # the candidate's answers, in the Evaluation view
        if decision == "refused":
            return False
        # The model is logged from the promotion run, so its page lists the registered version;
        # afina.run_id and the description lead back to the trial that trained it.
        info = pyfunc.log(cand_dir, promo_id, exp_id)
        meta = loader.read_meta(cand_dir)
        tags = {
            **gate_tags,
            **_lineage(study, trial, source, meta),
            **winner_refit.lineage(trial),
            f"{tracking.TAG}promotion_run": promo_id,
        }
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    c.update_registered_model(name, description=run_descriptions.model_note(name, study.study_name, alias))
    c.update_model_version(
        name,
        version.version,
        description=run_descriptions.version_note(
            name, version.version, meta, trial.number, study.study_name, exp_id, run_id, gate_tags, promo_id
        ),
    )
    if champion is not None:
        c.set_registered_model_alias(name, registry.previous_alias(alias), champion.version)
    c.set_registered_model_alias(name, alias, version.version)  # one update: @champion is never missing
    c.set_tag(promo_id, f"{tracking.TAG}version", str(version.version))
    c.set_tag(
        promo_id,
        tracking.NOTE,
        run_descriptions.promotion_note(gate_tags, len(rows), trial.number, exp_id, run_id, champion)
        + f"\n\nRegistered as `{name}` v{version.version} @{alias}.",
    )
    c.set_tag(run_id, f"{tracking.TAG}registered", f"{name}/{version.version}")
    _rereport(spec, study, c, console)
    moved = f"; @{registry.previous_alias(alias)} → v{champion.version}" if champion is not None else ""
    console.print(f"{name} v{version.version} ({meta['format']}) is now @{alias}{moved}  ·  models:/{name}@{alias}")
    return True


def _rereport(spec: Spec, study: optuna.Study, c: MlflowClient, console) -> None:
    """The sweep report names the new @champion (re-rendered; a plotting problem is only printed)."""
    from afina.reporting import report

    parent_id = study_mod.parent_id(study)
    if parent_id:
        report.refresh_quietly(spec, study, c, parent_id, console)


def package(ckpt: Path, out: Path, spec: Spec, merge: bool) -> Path:
    """The trial's checkpoint as a self-contained model folder: weights + tokenizer + afina-model.json."""
    base, trust = loader.trained_on(ckpt, spec)  # the base it was trained on, not today's spec's
    adapter = (ckpt / "adapter_config.json").is_file()
    base_dir = models.resolve(base)
    meta = {
        "format": "adapter" if adapter else "full",
        "base": base,
        "base_sha256": models.fingerprint(base_dir),
        "trust_remote_code": trust,
    }
    if adapter:
        # PEFT wrote the base's local path here; the reference is what travels.
        cfg = json.loads((ckpt / "adapter_config.json").read_text(encoding="utf-8"))
        cfg["base_model_name_or_path"] = base
        (ckpt / "adapter_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    loader.write_meta(ckpt, meta)
    if adapter and merge:
        return loader.merged(ckpt, out)
    shutil.copytree(ckpt, out)
    return out


def _lineage(study: optuna.Study, trial, source, meta: dict) -> dict[str, str]:
    objectives = study_mod.objectives(study)
    # The run keeps every param; the version carries what identifies it (the picks are in afina.params).
    tags = {f"{tracking.TAG}objective.{o}": f"{v:.6g}" for o, v in zip(objectives, trial.values, strict=False)}
    tags |= {
        tracking.STUDY: study.study_name,
        tracking.TRIAL: str(trial.number),
        tracking.RUN_ID: source.info.run_id,
        tracking.DATA_FINGERPRINT: trial.user_attrs.get("data_fingerprint", ""),
        f"{tracking.TAG}slices": json.dumps(
            {
                k.removeprefix("rows."): int(v)
                for k, v in source.data.params.items()
                if k.startswith("rows.") and k not in ("rows.train", "rows.eval")
            }
        ),
        f"{tracking.TAG}params": json.dumps(trial.params, default=str),
        f"{tracking.TAG}base_model": meta.get("base", ""),
        f"{tracking.TAG}base_sha256": meta.get("base_sha256", ""),
        tracking.FORMAT: meta["format"],
        tracking.CHECKPOINT: f"runs:/{source.info.run_id}/checkpoint",
    }
    return {k: str(v)[:5000] for k, v in tags.items()}


def _log_promotion(
    c: MlflowClient, experiment_id: str, spec: Spec, trial, run_id: str, champion, gate_tags: dict, cand: float, champ, n_rows: int
) -> str:
    run = c.create_run(
        experiment_id,
        run_name=f"promote-trial-{trial.number}",
        tags={
            tracking.ROLE: "promotion",
            tracking.STUDY: spec.name,
            tracking.TRIAL: str(trial.number),
            f"{tracking.TAG}candidate_run_id": run_id,
            f"{tracking.TAG}model_name": spec.model_name,
            **gate_tags,
            f"{tracking.TAG}champion_version": "none" if champion is None else str(champion.version),
            tracking.NOTE: run_descriptions.promotion_note(gate_tags, n_rows, trial.number, experiment_id, run_id, champion),
        },
    )
    rid = run.info.run_id
    tracking.log_params(
        c,
        rid,
        {
            "metric": gate_tags[tracking.GATE_METRIC],
            "set_fingerprint": gate_tags[tracking.GATE_SET_FINGERPRINT],
            "rows": n_rows,
            "margin": spec.promote.margin,
            "candidate_trial": trial.number,
            "champion_version": "none" if champion is None else champion.version,
        },
    )
    tracking.log_metrics(c, rid, {"candidate_score": cand, **({"champion_score": champ} if champ is not None else {})}, 0, synchronous=True)
    c.set_terminated(rid)
    return rid


def _report(console, gate_metric: str, trial, cand, champ, champion, alias, set_print, n, margin, decision) -> None:
    vs = f"@{alias} v{champion.version}: {champ:.4f}" if champion is not None else f"no @{alias} yet"
    console.print(f"gate: {gate_metric} on {n} promotion rows (set {set_print}), lower is better")
    console.print(f"  candidate trial {trial.number}: {cand:.4f}   {vs}")
    if decision == "refused":
        console.print(
            f"refused: trial {trial.number} is not better than @{alias} by more than {margin}; registry unchanged (--force overrides)"
        )
    elif decision == "forced":
        console.print(f"--force: promoting trial {trial.number} although it does not beat @{alias}")
