"""Records mapped onto chat rows.

Every training and eval row becomes a chat (`messages`): prompt/completion pairs become a user
and an assistant turn, plain text becomes an assistant turn (that is what a style slice teaches:
to answer like that). Each row remembers where it came from (`origin`, "file:row", row = record
number in the file) so checks can point at it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from afina import UserError

ROLES = {"system", "user", "assistant", "tool"}
# Column names people's exports already use, tried when the spec maps none.
ALIASES = {
    "prompt": ("prompt", "instruction", "question", "input", "query"),
    "completion": ("completion", "response", "output", "answer"),
}


@dataclass
class Row:
    messages: list[dict[str, str]]
    origin: str
    extra: dict[str, Any] = field(default_factory=dict)
    fields: list[str] = field(default_factory=list)
    """The source field of each message, e.g. ["instruction", "response"], so checks can name it."""

    @property
    def key(self) -> str:
        """Stable content hash of the conversation (what the model sees)."""
        blob = json.dumps(self.messages, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Issue:
    """One problem `afina check` reports: where is "file:row" or "slice NAME"."""

    level: str  # "error" (stops a sweep) or "warning"
    where: str
    field: str
    message: str
    kind: str = "schema"

    def __str__(self) -> str:
        return f"{self.where}: {self.field + ': ' if self.field else ''}{self.message}"


class RowError(UserError):
    def __init__(self, origin: str, field: str, message: str):
        super().__init__(f"{origin}: field {field!r} {message}")
        self.issue = Issue("error", origin, field, message)


def detect(names, fmt: str = "auto", columns: dict[str, str] | None = None, where: str = "data") -> tuple[str, dict[str, str | None]]:
    """The format and the column behind each of messages/prompt/completion/text."""
    columns = columns or {}
    for target, source in columns.items():
        if source not in names:
            raise UserError(f"{where}: column {source!r} (mapped to {target}) not in the data; columns are {sorted(names)}")
    col = {
        t: columns.get(t) or next((a for a in ALIASES.get(t, (t,)) if a in names), None)
        for t in ("messages", "prompt", "completion", "text")
    }
    if fmt == "auto":
        fmt = (
            "messages" if col["messages"] else "prompt_completion" if col["prompt"] and col["completion"] else "text" if col["text"] else ""
        )
        if not fmt:
            raise UserError(
                f"{where}: cannot tell the format from columns {sorted(names)}; "
                "set format and columns, e.g. columns: {prompt: question, completion: answer}"
            )
    need = {"messages": ["messages"], "prompt_completion": ["prompt", "completion"], "text": ["text"]}[fmt]
    for target in need:
        name = col[target] or target
        if name not in names:
            raise UserError(
                f"{where}: format {fmt} needs a {target!r} column and there is none; "
                f"columns are {sorted(names)}; map one with columns: {{{target}: YOUR_COLUMN}}"
            )
        col[target] = name
    return fmt, col


def normalize(
    records: list[dict],
    where: str,
    fmt: str = "auto",
    columns: dict[str, str] | None = None,
    system: str | None = None,
    issues: list[Issue] | None = None,
    numbers: list[int] | None = None,
) -> list[Row]:
    """Map records onto chat rows. A row that cannot be mapped raises, or with `issues` is reported and skipped.

    `numbers` are the records' row numbers in the file (when a filter kept only some).
    """
    if not records:
        return []
    names = set(records[0])
    fmt, col = detect(names, fmt, columns, where)
    rows = []
    for i, rec in zip(numbers or range(1, len(records) + 1), records, strict=True):
        origin = f"{where}:{i}"
        try:
            if fmt == "messages":
                msgs = _messages(rec.get(col["messages"]), col["messages"], origin)
                sources = [f"{col['messages']}[{j}].content" for j in range(len(msgs))]
            elif fmt == "prompt_completion":
                prompt, completion = _text(rec, col["prompt"], origin), _text(rec, col["completion"], origin)
                if "input" in names and col["prompt"] == "instruction" and rec.get("input"):
                    prompt = f"{prompt}\n\n{rec['input']}"  # alpaca style
                msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
                sources = [col["prompt"], col["completion"]]
            else:
                msgs = [{"role": "assistant", "content": _text(rec, col["text"], origin)}]
                sources = [col["text"]]
        except RowError as e:
            if issues is None:
                raise
            issues.append(e.issue)
            continue
        if system and msgs[0]["role"] != "system":
            msgs, sources = [{"role": "system", "content": system}, *msgs], ["system", *sources]
        rows.append(Row(msgs, origin, {k: v for k, v in rec.items() if isinstance(v, (str, int, float, bool))}, sources))
    return rows


def _text(rec: dict, column: str, origin: str) -> str:
    value = rec.get(column)
    if value is None:
        raise RowError(origin, column, "is missing or empty")
    if not isinstance(value, str):
        raise RowError(origin, column, f"must be text, got {type(value).__name__}")
    return value


def _messages(msgs: Any, column: str, origin: str) -> list[dict[str, str]]:
    if not isinstance(msgs, list) or not msgs:
        raise RowError(origin, column, "must be a non-empty list of {role, content}")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RowError(origin, f"{column}[{j}].role", f"must be one of {sorted(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise RowError(origin, f"{column}[{j}].content", f"must be text, got {type(m.get('content')).__name__}")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def select(records: list[dict], where: dict[str, Any], origin: str) -> list[dict]:
    """Keep records whose columns match `where` (a value or a list of values)."""
    if not where or not records:
        return records
    for column in where:
        if column not in records[0]:
            raise UserError(f"{origin}: filter column {column!r} not in the data; columns are {sorted(records[0])}")
    wanted = {c: set(v) if isinstance(v, list) else {v} for c, v in where.items()}
    return [r for r in records if all(r.get(c) in vals for c, vals in wanted.items())]


def fingerprint(rows: list[Row]) -> str:
    """Order-independent content hash: the same rows give the same print however they are ordered."""
    h = hashlib.sha256()
    for key in sorted(r.key for r in rows):
        h.update(key.encode())
    return h.hexdigest()[:16]
