"""`afina promote` and `afina rollback`: pick a trial, gate it against @champion, register, move aliases.

Everything that can be wrong with the input (study, trial, artifact, promotion set) is checked
before the registry is touched. The gate scores the candidate and the current champion with the
same metric on the same promotion set; a refused candidate leaves the registry unchanged. Every
comparison is logged as a `promotion` run in the spec's MLflow experiment. Nothing is deleted:
the old champion keeps the alias `previous`, and rollback swaps the two.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from afina import data, models, pyfunc, tracking
from afina.errors import UserError

NOISE = 1e-6  # float noise: identical weights loaded two ways must not count as "better"
MAX_TOKENS = 1024  # longer promotion rows are truncated (same cut for candidate and champion)


def previous_alias(alias: str) -> str:
    return "previous" if alias == "champion" else f"{alias}-previous"


# ---------------------------------------------------------------- the gate metric


def answer_nll(model, tok, rows: list[data.Row], batch_size: int = 8) -> float:
    """Mean negative log-likelihood per token of each row's final assistant answer.

    Teacher-forced, chat template applied, batched. The prompt (everything before the last
    answer) is context only, so the score measures the answers the model gives, not how well it
    predicts the user's questions. Rows without an assistant answer are scored on all tokens.
    """
    import torch
    import torch.nn.functional as F

    items = [_encode(tok, r.messages) for r in rows]
    total, count = 0.0, 0
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for i in range(0, len(items), batch_size):
        batch = items[i : i + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, (seq, start) in enumerate(batch):
            ids[j, : len(seq)] = torch.tensor(seq)
            labels[j, start : len(seq)] = torch.tensor(seq[start:])
            mask[j, : len(seq)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        target = labels[:, 1:].to(logits.device)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum")
        total += loss.item()
        count += int((target != -100).sum())
    if count == 0:
        raise UserError("the promotion set has no answer tokens to score; check promote.path")
    return total / count


def _encode(tok, messages: list[dict]) -> tuple[list[int], int]:
    """(token ids, index of the first scored token)."""
    full = tok.apply_chat_template(messages, tokenize=False)
    prefix = ""
    if len(messages) > 1 and messages[-1]["role"] == "assistant":
        prefix = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    if not full.startswith(prefix):
        prefix = ""
    head = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    seq = (head + tok(full[len(prefix) :], add_special_tokens=False)["input_ids"])[:MAX_TOKENS]
    return seq, max(1, min(len(head), len(seq) - 1))


# Lower is better. A generation metric (e.g. from afina.metrics) can be added here with its sign.
METRICS: dict[str, tuple[Callable[..., float], bool]] = {"answer_nll": (answer_nll, True)}
METRIC = "answer_nll"


# ---------------------------------------------------------------- selection


def select(study, spec, number: int | None):
    """The trial to promote: `number`, or the best COMPLETE one by the study's objective."""
    trials = study.get_trials(deepcopy=False)
    if number is not None:
        match = [t for t in trials if t.number == number]
        if not match:
            raise UserError(f"study {study.study_name!r} has no trial {number} (trials 0-{len(trials) - 1}); see `afina status`")
        if match[0].state.name != "COMPLETE":
            raise UserError(f"trial {number} is {match[0].state.name}; only COMPLETE trials can be promoted")
        return match[0]
    done = [t for t in trials if t.state.name == "COMPLETE" and t.values and all(math.isfinite(v) for v in t.values)]
    if not done:
        raise UserError(f"study {study.study_name!r} has no COMPLETE trial yet; run `afina sweep` until one finishes")
    index = 0
    if len(study.directions) > 1:
        names = study.user_attrs.get("objectives") or spec.search.objectives
        if not spec.promote.objective:
            raise UserError(
                f"study {study.study_name!r} has {len(names)} objectives; pass --trial N or set promote.objective to one of {names}"
            )
        if spec.promote.objective not in names:
            raise UserError(f"promote.objective {spec.promote.objective!r} is not an objective of the study; use one of {names}")
        index = names.index(spec.promote.objective)
    sign = 1 if study.directions[index].name == "MINIMIZE" else -1
    return min(done, key=lambda t: (sign * t.values[index], t.number))


def promotion_set(spec) -> list[data.Row]:
    """promote.path if set, else the spec's eval set."""
    if spec.promote.path is None:
        return data.prepare(spec).eval
    rows = []
    for p in data.files(spec.promote.path, spec.base_dir):
        rows += data.normalize(data.read(p), p.name)
    if not rows:
        raise UserError(f"promote.path {spec.promote.path!r} has no rows; point it at held-out prompts with answers")
    return rows


# ---------------------------------------------------------------- promote


def run(spec, console, number: int | None = None, force: bool = False, merge: bool = False) -> bool:
    """Returns True when the alias moved (or the candidate already holds it)."""
    from afina import resilience, status, sweep

    pyfunc.quiet()
    tracking.check_url(spec.tracking.mlflow_uri, "mlflow_uri")
    tracking.check_url(spec.tracking.optuna_storage, "optuna_storage")
    store = tracking.sqlite_path(spec.tracking.optuna_storage)
    if store is not None and not store.is_file():
        raise UserError(f"no study named {spec.name!r}: {store} does not exist; run `afina sweep` first")
    pyfunc.check_store(spec.tracking.mlflow_uri)
    study = sweep.open_study(spec, create=False)
    trial = select(study, spec, number)
    c = tracking.client(spec.tracking.mlflow_uri)
    run_id = status.run_id(trial, study)
    if run_id.startswith(resilience.OFFLINE):
        raise UserError(f"trial {trial.number}'s MLflow records are still kept locally (the server was down); run `afina sync` first")
    try:
        source = c.get_run(run_id) if run_id else None
    except Exception:
        source = None
    if source is None:
        raise UserError(f"trial {trial.number} has no MLflow run in {tracking.redact(spec.tracking.mlflow_uri)}; was the store moved?")
    if not any(
        a.path == "checkpoint/adapter_config.json" or a.path == "checkpoint/config.json" for a in c.list_artifacts(run_id, "checkpoint")
    ):
        raise UserError(f"trial {trial.number} (run {run_id}) has no checkpoint/ artifact with weights; nothing to promote")
    rows = promotion_set(spec)
    set_print = data.fingerprint(rows)
    name, alias = spec.model_name, spec.promote.alias
    champion = _by_alias(c, name, alias)
    same = champion is not None and champion.tags.get("afina.run_id") == run_id
    if same and not force and (not merge or champion.tags.get("afina.format") == "merged"):
        console.print(f"trial {trial.number} is already @{alias} ({name} v{champion.version}); nothing to do")
        return True

    metric, lower_better = METRICS[METRIC]
    with tempfile.TemporaryDirectory(prefix="afina-promote-") as tmp:
        import mlflow

        ckpt = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="checkpoint", dst_path=tmp))
        cand_dir = package(ckpt, Path(tmp) / pyfunc.ARTIFACT, spec, merge)
        cand = metric(*pyfunc.load(cand_dir), rows)
        champ = None
        if champion is not None:
            with pyfunc.fetched(f"models:/{name}/{champion.version}") as d:
                champ = metric(*pyfunc.load(d), rows)
        sign = 1 if lower_better else -1
        better = champ is None or sign * (champ - cand) > max(spec.promote.margin, NOISE)
        decision = "promoted" if better else "forced" if force else "refused"
        _report(console, trial, cand, champ, champion, alias, set_print, len(rows), spec.promote.margin, decision)
        gate = {
            "afina.gate.metric": METRIC,
            "afina.gate.score": f"{cand:.6g}",
            "afina.gate.set_fingerprint": set_print,
            "afina.gate.champion_score": "" if champ is None else f"{champ:.6g}",
            "afina.gate.decision": decision,
        }
        promo_id = _log_promotion(c, source.info.experiment_id, spec, trial, run_id, champion, gate, cand, champ, len(rows))
        if decision == "refused":
            return False
        info = pyfunc.log(cand_dir, run_id, source.info.experiment_id)
        meta = pyfunc.read_meta(cand_dir)
        tags = {**_lineage(study, trial, source, meta), **gate, "afina.promotion_run": promo_id}
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    if champion is not None:
        c.set_registered_model_alias(name, previous_alias(alias), champion.version)
    c.set_registered_model_alias(name, alias, version.version)  # one update: @champion is never missing
    c.set_tag(promo_id, "afina.version", str(version.version))
    c.set_tag(run_id, "afina.registered", f"{name}/{version.version}")
    moved = f"; @{previous_alias(alias)} → v{champion.version}" if champion is not None else ""
    console.print(f"{name} v{version.version} ({meta['format']}) is now @{alias}{moved}  ·  models:/{name}@{alias}")
    return True


def package(ckpt: Path, out: Path, spec, merge: bool) -> Path:
    """The trial's checkpoint as a self-contained model folder: weights + tokenizer + afina-model.json."""
    from afina import export

    trained = yaml.safe_load((ckpt / "afina-spec.yaml").read_text(encoding="utf-8")) if (ckpt / "afina-spec.yaml").is_file() else {}
    model = trained.get("model") or {}
    base = model.get("ref", spec.model.ref)
    adapter = (ckpt / "adapter_config.json").is_file()
    base_dir = models.resolve(base)
    meta = {
        "format": "adapter" if adapter else "full",
        "base": base,
        "base_sha256": models.fingerprint(base_dir),
        "trust_remote_code": bool(model.get("trust_remote_code", spec.model.trust_remote_code)),
    }
    if adapter:
        # PEFT wrote the base's local path here; the reference is what travels.
        cfg = json.loads((ckpt / "adapter_config.json").read_text(encoding="utf-8"))
        cfg["base_model_name_or_path"] = base
        (ckpt / "adapter_config.json").write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    pyfunc.write_meta(ckpt, meta)
    if adapter and merge:
        return export.merged(ckpt, out)
    shutil.copytree(ckpt, out)
    return out


def _by_alias(c, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _lineage(study, trial, source, meta: dict) -> dict[str, str]:
    objectives = study.user_attrs.get("objectives") or [f"value{i}" for i in range(len(trial.values))]
    tags = dict(source.data.params)  # train.*, lora.*, slices.*, rows.*, data.*, model.*
    tags |= {f"afina.objective.{o}": f"{v:.6g}" for o, v in zip(objectives, trial.values, strict=False)}
    tags |= {
        "afina.study": study.study_name,
        "afina.trial": str(trial.number),
        "afina.run_id": source.info.run_id,
        "afina.data_fingerprint": trial.user_attrs.get("data_fingerprint", ""),
        "afina.slices": json.dumps(
            {
                k.removeprefix("rows."): int(v)
                for k, v in source.data.params.items()
                if k.startswith("rows.") and k not in ("rows.train", "rows.eval")
            }
        ),
        "afina.params": json.dumps(trial.params, default=str),
        "afina.base_model": meta.get("base", ""),
        "afina.base_sha256": meta.get("base_sha256", ""),
        "afina.format": meta["format"],
        "afina.checkpoint": f"runs:/{source.info.run_id}/checkpoint",
    }
    return {k: str(v)[:5000] for k, v in tags.items()}


def _log_promotion(c, experiment_id, spec, trial, run_id, champion, gate, cand, champ, n_rows) -> str:
    run = c.create_run(
        experiment_id,
        run_name=f"promote-trial-{trial.number}",
        tags={
            "afina.role": "promotion",
            "afina.study": spec.name,
            "afina.trial": str(trial.number),
            "afina.candidate_run_id": run_id,
            "afina.model_name": spec.model_name,
            **gate,
            "afina.champion_version": "" if champion is None else str(champion.version),
        },
    )
    rid = run.info.run_id
    tracking.log_params(
        c,
        rid,
        {
            "metric": METRIC,
            "set_fingerprint": gate["afina.gate.set_fingerprint"],
            "rows": n_rows,
            "margin": spec.promote.margin,
            "candidate_trial": trial.number,
            "champion_version": "" if champion is None else champion.version,
        },
    )
    tracking.log_metrics(c, rid, {"candidate_score": cand, **({"champion_score": champ} if champ is not None else {})}, 0, synchronous=True)
    c.set_terminated(rid)
    return rid


def _report(console, trial, cand, champ, champion, alias, set_print, n, margin, decision) -> None:
    vs = f"@{alias} v{champion.version}: {champ:.4f}" if champion is not None else f"no @{alias} yet"
    console.print(f"gate: {METRIC} on {n} promotion rows (set {set_print}), lower is better")
    console.print(f"  candidate trial {trial.number}: {cand:.4f}   {vs}")
    if decision == "refused":
        console.print(
            f"refused: trial {trial.number} is not better than @{alias} by more than {margin}; registry unchanged (--force overrides)"
        )
    elif decision == "forced":
        console.print(f"--force: promoting trial {trial.number} although it does not beat @{alias}")


# ---------------------------------------------------------------- rollback


def rollback(name: str, tracking_uri: str, alias: str, reason: str, console) -> Any:
    """Swap @alias and @previous, and record who went back and why on both versions."""
    from mlflow.exceptions import MlflowException

    pyfunc.check_store(tracking_uri)
    c = tracking.client(tracking_uri)
    try:
        c.get_registered_model(name)
    except MlflowException:
        raise UserError(
            f"no registered model named {name!r} in {tracking.redact(tracking_uri)}; check the name (the spec's promote.model_name or name)"
        ) from None
    prev_alias = previous_alias(alias)
    current, previous = _by_alias(c, name, alias), _by_alias(c, name, prev_alias)
    if previous is None or current is None:
        raise UserError(f"{name} has no @{prev_alias if current is not None else alias} version to roll back to")
    c.set_registered_model_alias(name, alias, previous.version)
    c.set_registered_model_alias(name, prev_alias, current.version)
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record = json.dumps({"time": when, "from": str(current.version), "to": str(previous.version), "reason": reason}, ensure_ascii=False)
    c.set_model_version_tag(name, current.version, "afina.rolled_back", record)
    c.set_model_version_tag(name, previous.version, "afina.restored", record)
    c.set_registered_model_tag(name, "afina.last_rollback", record)
    console.print(f"{name}: @{alias} v{current.version} → v{previous.version} ({reason}); @{prev_alias} is now v{current.version}")
    return previous
