"""The data check behind `afina check` and every sweep: what is wrong with the data before any training time is spent.

Errors (exit 2, and a sweep refuses to start): rows that cannot be mapped, chats in an order no
template trains well on, empty fields, empty slices or eval set, eval/promotion rows that are
also training rows. Warnings: duplicates, trivially short answers, rows the chat template makes
longer than max_length, unbalanced slices, slices not in their declared language.
Every problem names its file:row and field; data/health_report.py shows the report (JSON and markdown for MLflow).
"""

from __future__ import annotations

import re
import unicodedata
from typing import TYPE_CHECKING

from afina import data
from afina.data import language, token_lengths
from afina.data.chat_rows import Issue, Row
from afina.data.health_report import Report

if TYPE_CHECKING:
    from afina.spec.schema import Spec

SHORT = 3  # an answer with fewer characters than this teaches nothing
IMBALANCE = 10  # warn when a filtered slice is this many times smaller than the largest
LANGUAGE_SHARE = 0.8  # warn when fewer of a slice's rows are in its declared language


def run(spec: Spec, prepared: data.Prepared, tokenizer=None) -> Report:
    """Check loaded data; `tokenizer` (the model's) enables length stats and truncation counts."""
    report = Report(issues=list(prepared.issues), max_length=token_lengths.max_length(spec))
    add = report.issues.append
    if not any(_can_include(spec, n) for n in spec.data.slices):
        add(
            Issue(
                "error",
                "data.slices",
                "include",
                "every slice is excluded or has weight 0 and none is searched; nothing would train",
                "slice",
            )
        )
    sets = {**prepared.slices, "eval": prepared.eval}
    if spec.promote.path:
        sets["promote"] = data.load_rows(spec, spec.promote.path, "promote")
    for rows in sets.values():
        for row in rows:
            _row(row, add)
    train = [r for rows in prepared.slices.values() for r in rows]
    _duplicates(train, add)
    for name in ("eval", "promote"):
        if name in sets:
            _leakage(train, sets[name], name, add)
    _balance(spec, prepared, add)
    _searched_eval(spec, add)
    for name, rows in sets.items():
        report.slices[name] = {"rows": len(rows)}
        declared = spec.data.slices[name].language if name in spec.data.slices else None
        if declared and rows:
            report.slices[name]["language"] = _language(name, declared, rows, add)
    if tokenizer is not None:
        token_lengths.lengths(sets, tokenizer, report)
        rendered = not any(i.field == "chat_template" for i in report.issues)
        if rendered and report.max_length and token_lengths.cuts_answers(spec):
            trained = {n for n in spec.data.slices if _can_include(spec, n)}
            token_lengths.answers_cut(spec, sets, tokenizer, report, trained)
    return report


def _can_include(spec: Spec, name: str) -> bool:
    s, space = spec.data.slices[name], spec.search.space
    include = f"slices.{name}.include" in space or s.include
    weight = f"slices.{name}.weight" in space or s.weight > 0
    return include and weight


def _where(row: Row, j: int) -> str:
    return row.fields[j] if j < len(row.fields) else f"messages[{j}].content"


def _row(row: Row, add) -> None:
    roles = [m["role"] for m in row.messages]
    for j, m in enumerate(row.messages):
        if m["role"] == "system" and j > 0:
            add(Issue("error", row.origin, f"messages[{j}].role", "a system turn may only come first", "role-order"))
        if j and m["role"] == roles[j - 1] and m["role"] in ("user", "assistant"):
            add(Issue("warning", row.origin, f"messages[{j}].role", f"two {m['role']} turns in a row; merge them", "role-order"))
        text = m["content"].strip()
        if not text:
            what = "empty answer" if m["role"] == "assistant" else "empty field"
            add(Issue("error", row.origin, _where(row, j), f"{what}; fill it in or drop the row", "empty"))
        elif m["role"] == "assistant" and len(text) < SHORT:
            add(Issue("warning", row.origin, _where(row, j), f"trivially short answer {text!r}", "short"))
    if "assistant" not in roles:
        add(Issue("error", row.origin, "messages", "no assistant turn: nothing to learn", "role-order"))
    elif roles[-1] != "assistant":
        add(
            Issue(
                "warning",
                row.origin,
                f"messages[{len(roles) - 1}].role",
                f"ends with a {roles[-1]} turn, which the model learns to write",
                "role-order",
            )
        )


def normal(text: str) -> str:
    """Text as a reader compares it: case, accents, punctuation and spacing ignored."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return " ".join(re.findall(r"\w+", text))


def _conversation(row: Row) -> str:
    return " | ".join(normal(m["content"]) for m in row.messages if m["role"] != "system")


def _prompt(row: Row) -> str:
    return " | ".join(normal(m["content"]) for m in row.messages if m["role"] in ("user", "tool"))


def _duplicates(train: list[Row], add) -> None:
    exact: dict[str, Row] = {}
    near: dict[str, Row] = {}
    for row in train:
        first = exact.setdefault(row.key, row)
        if first is not row:
            add(Issue("warning", row.origin, "messages", f"exact duplicate of {first.origin}", "duplicate"))
            continue
        first = near.setdefault(_conversation(row), row)
        if first is not row:
            add(
                Issue(
                    "warning",
                    row.origin,
                    "messages",
                    f"near duplicate of {first.origin} (same text up to case, accents, punctuation)",
                    "near-duplicate",
                )
            )


def _leakage(train: list[Row], held: list[Row], name: str, add) -> None:
    conversations = {_conversation(r): r for r in train}
    prompts = {_prompt(r): r for r in train if _prompt(r)}
    for row in held:
        hit = conversations.get(_conversation(row))
        if hit is not None:
            add(
                Issue(
                    "error",
                    row.origin,
                    "messages",
                    f"{name} row is also a training row ({hit.origin}); the {name} score would reward memorising it",
                    "leakage",
                )
            )
        elif _prompt(row) and (hit := prompts.get(_prompt(row))) is not None:
            add(
                Issue(
                    "warning",
                    row.origin,
                    _where(row, 0 if row.messages[0]["role"] != "system" else 1),
                    f"{name} prompt also appears in training ({hit.origin})",
                    "leakage",
                )
            )


def _balance(spec: Spec, prepared: data.Prepared, add) -> None:
    """Slices cut from one column by a filter: say when one is tiny next to the others."""
    by_column: dict[str, dict[str, int]] = {}
    for name, s in spec.data.slices.items():
        for column in s.where:
            by_column.setdefault(column, {})[name] = len(prepared.slices[name])
    for column, sizes in by_column.items():
        big = max(sizes, key=sizes.get)
        for name, n in sizes.items():
            if n and sizes[big] >= IMBALANCE * n:
                add(
                    Issue(
                        "warning",
                        f"slice {name}",
                        "where",
                        f"{n} rows against {sizes[big]} in slice {big} (same column {column!r}); its weight decides how often it is seen",
                        "balance",
                    )
                )


def _searched_eval(spec: Spec, add) -> None:
    """The eval (or promotion) set holds rows out of a slice the search varies: the objective then rewards
    mixes that train on that slice. Right when it is the task being measured; say so either way."""
    if spec.data.eval.split is None:
        return  # eval.path / promote.path rows that are also training rows are leakage errors above
    moved = sorted(set(spec.eval_slices) & spec.searched_slices)
    if not moved:
        return
    sets = "eval set" + (" and the promotion set (the eval set by default)" if spec.promote.path is None else "")
    add(
        Issue(
            "warning",
            "data.eval",
            "slices",
            f"the {sets} holds rows out of searched slices {', '.join(moved)}: the objective favours mixes that train on them; "
            "fine if they are the task you measure, otherwise name other slices in data.eval.slices or use data.eval.path",
            "searched-eval",
        )
    )


def _language(name: str, declared: str, rows: list[Row], add) -> str:
    texts = [" ".join(m["content"] for m in r.messages if m["role"] != "system") for r in rows]
    share, other = language.share(texts, declared)
    if share < LANGUAGE_SHARE:
        where = ", ".join(rows[i].origin for i in other[:5])
        add(
            Issue(
                "warning",
                f"slice {name}",
                "language",
                f"declared {declared!r}, but {len(other)} of its rows look like another language (e.g. {where})",
                "language",
            )
        )
    return f"{declared} {share:.0%}"
