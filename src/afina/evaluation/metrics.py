"""Generation metrics: score a model's answers to the evaluation prompts, row by row.

A metric is a name in the spec's `evaluate.metrics` list, or a one-key mapping for the ones that
take an argument. Each scores one answer (0..1, except chrF on sacrebleu's 0..100 scale and
`length` in words); a trial's value is the mean over the rows it applies to. Reference-based
metrics (rougeL, chrf, exact_match) use only the prompts that have a reference.

    evaluate:
      metrics: [rougeL, chrf, exact_match, length, json,
                {contains: [envío, gratis]}, {not_contains: [poema], name: no_poetry},
                {regex: "^\\d+ €$", name: price}, {custom: "my_scorers:politeness"}]
      combine: {quality: {rougeL: 0.7, chrf: 0.003}}    # a weighted sum, usable as search.objective
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from typing import TYPE_CHECKING

from afina import UserError, hint, models
from afina.data import sources
from afina.evaluation import judge

# the grammar lives with the spec (it checks names at load); callers score and name metrics through this module
from afina.spec.metric_names import TRAIN_RESULTS, TRAINING, Metric, parse  # noqa: F401

if TYPE_CHECKING:
    from afina.spec.schema import Spec


def prompts(spec: Spec) -> list[dict]:
    """The evaluation prompts: the samples prompts plus `evaluate.path` rows ({prompt, reference})."""
    out = sources.prompts(spec)
    if spec.evaluate.path:
        out += sources.prompt_rows(sources.files(spec.evaluate.path, spec.base_dir)[0], spec.evaluate.path, "evaluate ")
    return out


def for_spec(spec: Spec, rows: list[dict]) -> list[Metric]:
    entries = spec.evaluate.metrics if spec.evaluate.metrics is not None else defaults(rows)
    return parse(entries, spec.base_dir)


def results_known(spec: Spec, metrics: list[Metric]) -> set[str]:
    """Every result name a trial of this spec reports (any of them may be an objective)."""
    judged = {"judge", "judge_unparsed"} if spec.evaluate.judge else set()
    return set(TRAIN_RESULTS) | {m.name for m in metrics} | judged | set(spec.evaluate.combine)


def validate(spec: Spec, rows: list[dict]) -> list[Metric]:
    """Called by `afina sweep` before anything is written."""
    ms = for_spec(spec, rows)
    known = results_known(spec, ms) - set(spec.evaluate.combine)
    for name, parts in spec.evaluate.combine.items():
        for part in parts:
            if part not in known:
                raise UserError(f"evaluate.combine.{name}: {part!r} is not measured{hint(part, known)}; known: {', '.join(sorted(known))}")
    if spec.evaluate.judge and not rows:
        raise UserError("evaluate.judge needs prompts to judge; add samples.prompts or evaluate.path")
    judge = spec.evaluate.judge
    if judge and judge.api_key_env and judge.api_key_env not in os.environ:
        raise UserError(f"evaluate.judge.api_key_env: the environment variable {judge.api_key_env} is not set; export it first")
    if judge and judge.model:
        models.resolve(judge.model)
    check(ms, rows, spec.search.objectives, results_known(spec, ms))
    return ms


def evaluate(spec: Spec, rows: list[dict], outputs: list[str]) -> tuple[dict[str, float], dict[str, list]]:
    """Metrics, judge and combinations for one model's answers: (results, per-row columns)."""
    means, columns = score(for_spec(spec, rows), rows, outputs)
    if spec.evaluate.judge:
        scores, raw = judge.score(spec.evaluate.judge, rows, outputs)
        parsed = [s for s in scores if s is not None]
        means["judge_unparsed"] = float(len(scores) - len(parsed))
        if parsed:
            means["judge"] = sum(parsed) / len(parsed)
        elif "judge" in spec.search.objectives or any("judge" in w for w in spec.evaluate.combine.values()):
            raise ValueError(f"the judge gave no parseable score for any of {len(raw)} answers (first reply: {raw[0][:80]!r})")
        columns["judge"], columns["judge_reply"] = scores, raw
    return means, columns


def metric_name(objective: str) -> str:
    """The MLflow metric holding an objective: a trial's `eval_loss` curve ends on its last evaluation, the best is `best_eval_loss`."""
    return "best_eval_loss" if objective == "eval_loss" else objective


def generation(spec: Spec, prompts: list[dict]) -> list[str]:
    """Names of the generation results a trial reports: metrics, judge, weighted combinations."""
    names = [m.name for m in for_spec(spec, prompts)] if prompts else []
    return names + (["judge"] if spec.evaluate.judge else []) + list(spec.evaluate.combine)


def headline(spec: Spec, prompts: list[dict]) -> list[str]:
    """The MLflow metrics a reader looks at first: the objectives, the best eval loss, the generation results."""
    names = [metric_name(o) for o in spec.search.objectives]
    return names + [m for m in ("best_eval_loss", *generation(spec, prompts)) if m not in names]


def with_combined(spec: Spec, results: dict[str, float]) -> dict[str, float]:
    """Results plus the spec's weighted combinations of them."""
    return {**results, **combine(spec.evaluate.combine, results)}


def defaults(prompts: list[dict]) -> list[str]:
    """Without `evaluate.metrics`: overlap with the references where there are any, and length."""
    return (["rougeL", "chrf"] if any(p.get("reference") for p in prompts) else []) + ["length"]


def check(metrics: list[Metric], prompts: list[dict], objectives: list[str], known: set[str]) -> None:
    """Run before the sweep starts: every metric must be computable on the prompts, every objective known."""
    with_ref = sum(1 for p in prompts if p.get("reference"))
    for m in metrics:
        if m.needs_reference and not with_ref:
            raise UserError(
                f"evaluate.metrics: {m.name} compares with references, but no sample prompt has one; "
                "add `reference:` to samples.prompts (or the samples/evaluate file) or drop the metric"
            )
    for o in objectives:
        if o not in known:
            raise UserError(f"search.objective {o!r} is not measured; known: {', '.join(sorted(known))}")
        if o not in TRAIN_RESULTS and not prompts:
            raise UserError(f"search.objective {o!r} is scored on generated answers, but there are no prompts; add samples.prompts")


def score(metrics: list[Metric], prompts: list[dict], outputs: list[str]) -> tuple[dict[str, float], dict[str, list]]:
    """(metric means, per-row columns). Rows a metric does not apply to get None in its column."""
    means: dict[str, float] = {}
    columns: dict[str, list] = {}
    for m in metrics:
        col: list = []
        for p, out in zip(prompts, outputs, strict=True):
            ref = p.get("reference")
            if m.needs_reference and not ref:
                col.append(None)
                continue
            value = _one(m, out, ref, p["prompt"])
            if not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise ValueError(f"scorer {m.name!r} returned {value!r} for prompt {p['prompt'][:60]!r}; it must return a finite number")
            col.append(float(value))
        vals = [v for v in col if v is not None]
        columns[m.name] = col
        if vals:
            means[m.name] = sum(vals) / len(vals)
    return means, columns


def combine(weights: dict[str, dict[str, float]], results: dict[str, float]) -> dict[str, float]:
    """Weighted sums of already measured results (e.g. {quality: {rougeL: 0.7, eval_loss: -0.3}})."""
    out = {}
    for name, parts in weights.items():
        missing = [k for k in parts if k not in results]
        if missing:
            raise ValueError(f"evaluate.combine.{name}: {missing[0]!r} was not measured in this trial")
        out[name] = sum(w * float(results[k]) for k, w in parts.items())
    return out


def _one(m: Metric, out: str, ref: str | None, prompt: str) -> float:
    if m.kind == "rougeL":
        return _rouge().score(ref, out)["rougeL"].fmeasure
    if m.kind == "chrf":
        import sacrebleu

        return sacrebleu.sentence_chrf(out, [ref]).score
    if m.kind == "exact_match":
        return float(_norm(out) == _norm(ref))
    if m.kind == "length":
        return float(len(out.split()))
    if m.kind == "json":
        try:
            json.loads(out)
            return 1.0
        except (ValueError, RecursionError):  # a generated "[[[[..." deeper than the stack is not JSON we can use
            return 0.0
    if m.kind == "contains":
        return float(all(w.lower() in out.lower() for w in m.arg))
    if m.kind == "not_contains":
        return float(not any(w.lower() in out.lower() for w in m.arg))
    if m.kind == "regex":
        return float(re.search(m.arg, out) is not None)
    try:
        value = m.fn(out, ref, prompt)
    except Exception as e:  # the user's code: any error, named with the scorer that raised it
        raise RuntimeError(f"custom scorer {m.arg!r} raised {type(e).__name__}: {e}") from e
    return float(value) if isinstance(value, bool) else value


def _norm(s: str | None) -> str:
    return " ".join((s or "").lower().split()).strip(" .!¡?¿")


class _Words:
    """rouge-score's own tokenizer keeps only [a-z0-9]; shop answers are Spanish, so keep Unicode words."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


@functools.cache
def _rouge():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=_Words())
