"""How long the rows are in tokens, as SFTTrainer sees them (the chat template applied), and what max_length
cuts: the length part of the data check (data/health.py), and the token counts `afina init` sizes max_length from."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from afina.data import token_cache
from afina.data.chat_rows import Issue, Row
from afina.data.health_report import Report
from afina.spec.fields import sft_fields

if TYPE_CHECKING:
    from afina.spec.schema import Spec


def max_length(spec: Spec) -> int | None:
    """The max_length the data is checked against: the spec's, or the shortest a searched trial may use."""
    dim = spec.search.space.get("train.max_length")
    if dim is not None and (dim.int or dim.categorical):  # the shortest a trial may use
        return min(dim.int or [v for v in dim.categorical if v])
    return spec.train.get("max_length", sft_fields().get("max_length"))


def cuts_answers(spec: Spec) -> bool:
    """Whether max_length can cut a whole answer away: answer-only loss keeps the prompt's tokens first and
    TRL truncates the end (keep_start), so a prompt as long as max_length leaves no answer to learn or score."""
    train = spec.train
    return token_cache.answer_only(train) and train.get("truncation_mode", "keep_start") != "keep_end" and not train.get("packing")


def lengths(sets: dict[str, list[Row]], tokenizer, report: Report) -> None:
    """Per set: token statistics and a histogram, and a warning for every row longer than max_length."""
    limit = report.max_length
    try:
        lengths = {name: tokens(rows, tokenizer) for name, rows in sets.items()}
    except ValueError as e:  # no chat template: TRL would fail the same way
        report.issues.append(
            Issue("error", "model.ref", "chat_template", f"the tokenizer cannot render chats ({e}); pick a chat model", "model")
        )
        return
    top = report.longest = max((max(v) for v in lengths.values() if v), default=1)
    for name, counts in lengths.items():
        if not counts:
            continue
        ordered = sorted(counts)
        report.slices[name]["tokens"] = {
            "min": ordered[0],
            "median": int(statistics.median(ordered)),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "max": ordered[-1],
        }
        report.slices[name]["histogram"] = _histogram(counts, top)
        if limit:
            long = [(r, n) for r, n in zip(sets[name], counts, strict=True) if n > limit]
            report.slices[name]["truncated"] = len(long)
            for row, n in long:
                report.issues.append(
                    Issue(
                        "warning",
                        row.origin,
                        "messages",
                        f"{n} tokens after the chat template; truncated to max_length {limit}",
                        "too-long",
                    )
                )


def answers_cut(spec: Spec, sets: dict[str, list[Row]], tokenizer, report: Report, trained: set[str]) -> None:
    """Rows whose whole answer lies past max_length: TRL drops them. Every eval row cut means no eval loss
    after the first trial's training; every training row cut means nothing trains: both are errors now."""
    limit = report.max_length
    for name, rows in sets.items():
        asks = [(r, token_cache.answer(r.messages)) for r in rows]
        asks = [(r, a[0]) for r, a in asks if a]
        if not asks:
            continue
        heads = _counted([p for _, p in asks], tokenizer, generation_prompt=True)
        cut = [(r, n) for (r, _), n in zip(asks, heads, strict=True) if n >= limit]
        report.slices[name]["answer_cut"] = len(cut)
        for row, n in cut:
            report.issues.append(
                Issue("warning", row.origin, "messages", f"prompt of {n} tokens: max_length {limit} cuts its answer", "answer-cut")
            )
        trains = name in trained
        if cut and len(cut) == len(rows) and (trains or name in ("eval", "promote")):
            shortest = min(n for _, n in cut)
            where = {"eval": "data.eval", "promote": "promote.path"}.get(name, f"data.slices.{name}")
            fix = "the lower bound of search.space train.max_length" if "train.max_length" in spec.search.space else "train.max_length"
            report.issues.append(
                Issue(
                    "error",
                    where,
                    "max_length",
                    f"max_length {limit} cuts off the answer of every {name} row (the shortest prompt has {shortest} tokens); "
                    f"raise {fix} above {shortest}",
                    "max-length",
                )
            )


def tokens(rows: list[Row], tokenizer) -> list[int]:
    """Token count per row as SFTTrainer sees it: the chat template applied, then tokenized."""
    return _counted([r.messages for r in rows], tokenizer)


def _counted(chats: list[list[dict]], tokenizer, generation_prompt: bool = False) -> list[int]:
    """Tokens of each chat under the tokenizer's chat template, 512 chats at a time; with the generation prompt,
    the tokens before an answer starts, as data_tokens masks them."""
    out: list[int] = []
    for i in range(0, len(chats), 512):
        batch = tokenizer.apply_chat_template(chats[i : i + 512], tokenize=True, add_generation_prompt=generation_prompt)
        out += [len(ids) for ids in batch["input_ids"]]
    return out


def _histogram(counts: list[int], top: int, bins: int = 12) -> list[int]:
    hist = [0] * bins
    for n in counts:
        hist[min(bins - 1, n * bins // (top + 1))] += 1
    return hist
