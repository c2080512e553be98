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
import importlib
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afina import data_read, judge, models
from afina.errors import UserError, hint

if TYPE_CHECKING:
    from afina.spec import Spec

# What a trial measures besides generation metrics; anything here may be a search objective.
TRAINING = ("train_loss", "train_runtime", "train_tokens")  # how training went: not a quality of the answers
TRAIN_RESULTS = ("eval_loss", *TRAINING)
REFERENCE_BASED = {"rougeL", "chrf", "exact_match"}
PLAIN = {"rougeL", "chrf", "exact_match", "length", "json"}
WITH_ARG = {"contains", "not_contains", "regex", "custom"}


@dataclass
class Metric:
    name: str
    kind: str
    arg: Any = None
    fn: Callable | None = None

    @property
    def needs_reference(self) -> bool:
        return self.kind in REFERENCE_BASED


def parse(entries: list, base_dir: Path | str = ".") -> list[Metric]:
    """Spec entries -> metrics; ValueError (turned into a one-line UserError by spec.load) on bad ones."""
    out: list[Metric] = []
    for i, entry in enumerate(entries):
        where = f"evaluate.metrics[{i}]"
        if isinstance(entry, str):
            if entry not in PLAIN:
                near = hint(entry, PLAIN | WITH_ARG)
                raise ValueError(
                    f"{where}: unknown metric {entry!r}{near}; "
                    f"known: {', '.join(sorted(PLAIN))}, or {{contains|not_contains|regex|custom: ...}}"
                )
            out.append(Metric(entry, entry))
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: a metric is a name or a mapping such as {{contains: [word]}}")
        kinds = [k for k in entry if k != "name"]
        if len(kinds) != 1 or kinds[0] not in WITH_ARG:
            raise ValueError(
                f"{where}: a mapping needs exactly one of {', '.join(sorted(WITH_ARG))} (plus an optional name), got {sorted(entry)}"
            )
        kind, arg = kinds[0], entry[kinds[0]]
        name = entry.get("name")
        if kind in ("contains", "not_contains"):
            arg = [arg] if isinstance(arg, str) else arg
            if not isinstance(arg, list) or not arg or not all(isinstance(w, str) and w for w in arg):
                raise ValueError(f"{where}.{kind}: give a keyword or a list of keywords")
        elif kind == "regex":
            try:
                re.compile(arg)
            except (re.error, TypeError) as e:
                raise ValueError(f"{where}.regex {arg!r} is not a valid regular expression ({e})") from None
        else:
            fn = load_scorer(arg, base_dir, where)
            name = name or fn.__name__
            out.append(Metric(name, kind, arg, fn))
            continue
        out.append(Metric(name or kind, kind, arg))
    names = [m.name for m in out]
    for i, name in enumerate(names):  # each becomes an MLflow metric key and a report column
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name):
            raise ValueError(
                f"evaluate.metrics[{i}]: name {str(name)[:80]!r} is not allowed; use letters, digits, _ and - (at most 64 characters)"
            )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"evaluate.metrics: the name {dupes[0]!r} is used twice; give one of them `name: ...`")
    return out


def load_scorer(ref: Any, base_dir: Path | str, where: str = "custom") -> Callable:
    """`module:function`, importable from the spec's folder or the environment."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise ValueError(f"{where}.custom must be 'module:function', e.g. my_scorers:politeness")
    mod_name, fn_name = ref.split(":")
    folder = str(Path(base_dir).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)  # scorers may live next to the spec
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # any import-time error is the user's to fix
        raise ValueError(
            f"{where}.custom: cannot import {mod_name!r} ({type(e).__name__}: {e}); put {mod_name}.py next to the spec or install it"
        ) from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ValueError(f"{where}.custom: {mod_name!r} has no function {fn_name!r}")
    return fn


def prompts(spec: Spec) -> list[dict]:
    """The evaluation prompts: the samples prompts plus `evaluate.path` rows ({prompt, reference})."""
    out = data_read.prompts(spec)
    if spec.evaluate.path:
        out += data_read.prompt_rows(data_read.files(spec.evaluate.path, spec.base_dir)[0], spec.evaluate.path, "evaluate ")
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
    except Exception as e:
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
