"""Load data sources, map their columns onto chat rows, cut slices and mix them per trial.

Every training and eval row becomes `{"messages": [...]}`, the one shape TRL's SFTTrainer
receives: prompt/completion pairs become a user and an assistant turn, plain text becomes an
assistant turn (that is what a style slice teaches: to answer like that). Each row remembers
where it came from (`origin`, "file:row") so checks can point at it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from afina.errors import UserError

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

    @property
    def key(self) -> str:
        """Stable content hash of the conversation (what the model sees)."""
        blob = json.dumps(self.messages, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


def files(patterns: str | list[str], base: Path) -> list[Path]:
    found: list[Path] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        full = base / Path(pattern).expanduser()
        matches = sorted(Path(p) for p in glob.glob(str(full), recursive=True)) if glob.has_magic(str(full)) else [full]
        for m in matches:
            if not m.exists():
                raise UserError(f"data file {pattern!r} not found (looked in {m.parent}); fix the path, relative to the spec's folder")
        if not matches:
            raise UserError(f"data glob {pattern!r} matched no files; fix the pattern, relative to the spec's folder")
        found += matches
    return found


def read(path: Path) -> list[dict[str, Any]]:
    """Records of one file (jsonl, json, csv, parquet) or `save_to_disk` folder, via `datasets`."""
    import datasets

    datasets.disable_progress_bars()
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except FileNotFoundError:
            raise UserError(f"{path}: a data folder must be saved with datasets' save_to_disk") from None
        ds = ds["train"] if isinstance(ds, datasets.DatasetDict) else ds
        return ds.to_list()
    suffix = path.suffix.lower()
    kind = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(suffix)
    if kind is None:
        raise UserError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .parquet or a save_to_disk folder")
    if kind == "json" and suffix == ".jsonl":
        _check_jsonl(path)
    try:
        ds = datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=None)
    except Exception as e:  # datasets wraps parser errors in many types
        raise UserError(f"{path}: could not be read as {kind} ({str(e).splitlines()[0][:200]})") from None
    return ds.to_list()


def _check_jsonl(path: Path) -> None:
    """datasets reports a broken JSONL without its line; find the line ourselves."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{n}: not valid JSON ({e.msg}); fix or remove that line") from None


def normalize(records: list[dict], where: str, fmt: str = "auto", columns: dict[str, str] | None = None,
              system: str | None = None) -> list[Row]:
    """Map records onto chat rows; raise on the first row that cannot be mapped."""
    columns = columns or {}
    if not records:
        return []
    names = set(records[0])
    for target, source in columns.items():
        if source not in names:
            raise UserError(f"{where}: column {source!r} (mapped to {target}) not in the data; columns are {sorted(names)}")
    col = {t: columns.get(t) or next((a for a in ALIASES.get(t, (t,)) if a in names), None) for t in ("messages", "prompt", "completion", "text")}
    if fmt == "auto":
        fmt = "messages" if col["messages"] else "prompt_completion" if col["prompt"] and col["completion"] else "text" if col["text"] else ""
        if not fmt:
            raise UserError(f"{where}: cannot tell the format from columns {sorted(names)}; set format and columns, e.g. columns: {{prompt: question, completion: answer}}")
    rows = []
    for i, rec in enumerate(records, 1):
        origin = f"{where}:{i}"
        if fmt == "messages":
            msgs = rec.get(col["messages"] or "messages")
            _check_messages(msgs, origin)
            msgs = [{"role": m["role"], "content": m["content"]} for m in msgs]
        elif fmt == "prompt_completion":
            prompt, completion = _text(rec, col["prompt"] or "prompt", origin), _text(rec, col["completion"] or "completion", origin)
            if "input" in names and col["prompt"] == "instruction" and rec.get("input"):
                prompt = f"{prompt}\n\n{rec['input']}"  # alpaca style
            msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
        else:
            msgs = [{"role": "assistant", "content": _text(rec, col["text"] or "text", origin)}]
        if system and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": system}, *msgs]
        rows.append(Row(msgs, origin, {k: v for k, v in rec.items() if isinstance(v, (str, int, float, bool))}))
    return rows


def _text(rec: dict, column: str, origin: str) -> str:
    value = rec.get(column)
    if not isinstance(value, str):
        raise UserError(f"{origin}: field {column!r} must be text, got {type(value).__name__}")
    return value


def _check_messages(msgs: Any, origin: str) -> None:
    if not isinstance(msgs, list) or not msgs:
        raise UserError(f"{origin}: field 'messages' must be a non-empty list of {{role, content}}")
    for j, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise UserError(f"{origin}: messages[{j}].role must be one of {sorted(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise UserError(f"{origin}: messages[{j}].content must be text")


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


@dataclass
class Prepared:
    """All slices and the eval set, loaded once per sweep; trials only mix them."""

    slices: dict[str, list[Row]]
    eval: list[Row]
    fingerprints: dict[str, str]


def prepare(spec) -> Prepared:
    cache: dict[Path, list[dict]] = {}

    def load(path_or_paths, where_name: str, fmt, columns, system, filt=None) -> list[Row]:
        rows = []
        for p in files(path_or_paths, spec.base_dir):
            if p not in cache:
                cache[p] = read(p)
            recs = select(cache[p], filt or {}, f"{where_name} ({p.name})")
            # origin numbers refer to the row in the file, so a filter keeps the original index
            index = {id(r): i for i, r in enumerate(cache[p], 1)} if filt else None
            mapped = normalize(recs, p.name, fmt, columns, system)
            if index is not None:
                for row, rec in zip(mapped, recs):
                    row.origin = f"{p.name}:{index[id(rec)]}"
            rows += mapped
        return rows

    slices = {}
    for name, s in spec.data.slices.items():
        rows = load(s.path, f"slice {name}", s.format, s.columns, s.system, s.where)
        if not rows:
            raise UserError(f"slice {name!r} is empty (no rows{' match ' + json.dumps(s.where) if s.where else ''}); fix its path or filter")
        slices[name] = rows
    ev = spec.data.eval
    if ev.path is not None:
        eval_rows = load(ev.path, "eval", ev.format, ev.columns, ev.system)
    else:
        eval_rows = []
        for name in sorted(ev.slices or slices):
            rng = random.Random(f"{spec.data.seed}:{name}")
            rows = slices[name][:]
            rng.shuffle(rows)
            n = max(1, round(len(rows) * ev.split)) if len(rows) > 1 else 0
            eval_rows += rows[:n]
            slices[name] = rows[n:]
    if ev.max_rows:
        eval_rows = eval_rows[: ev.max_rows]
    if not eval_rows:
        raise UserError("the eval set is empty; point data.eval.path at held-out rows or set data.eval.split: 0.1")
    prints = {f"slice.{n}": fingerprint(r) for n, r in slices.items()} | {"eval": fingerprint(eval_rows)}
    return Prepared(slices, eval_rows, prints)


def mix(prepared: Prepared, choices: dict[str, dict[str, Any]], seed: int) -> tuple[list[Row], dict[str, int]]:
    """The trial's training rows from per-slice include/weight/fraction/max_rows choices.

    fraction and max_rows subsample a slice; weight then scales its natural share of the mix
    (all weights 1: every row once). The total stays the sum of the included slices, so slices
    with weight > their neighbours are upsampled with replacement. Seeded: same choices, same rows.
    """
    base: dict[str, list[Row]] = {}
    for name, rows in prepared.slices.items():
        c = choices[name]
        if not c["include"] or c["weight"] <= 0:
            continue
        rng = random.Random(f"{seed}:{name}:take")
        n = max(1, round(len(rows) * c["fraction"]))
        if c.get("max_rows"):
            n = min(n, c["max_rows"])
        base[name] = rng.sample(rows, n) if n < len(rows) else rows[:]
    total = sum(len(r) for r in base.values())
    mass = sum(len(r) * choices[n]["weight"] for n, r in base.items())
    out: list[Row] = []
    counts: dict[str, int] = {n: 0 for n in prepared.slices}
    for name, rows in base.items():
        target = max(1, round(total * len(rows) * choices[name]["weight"] / mass))
        rng = random.Random(f"{seed}:{name}:mix")
        picked = rows[:] if target == len(rows) else rng.sample(rows, target) if target < len(rows) else rows + rng.choices(rows, k=target - len(rows))
        counts[name] = len(picked)
        out += picked
    random.Random(f"{seed}:shuffle").shuffle(out)
    return out, counts


def to_dataset(rows: list[Row]):
    import datasets

    return datasets.Dataset.from_list([{"messages": r.messages} for r in rows])


def prompts(spec) -> list[dict[str, str | None]]:
    """Sample prompts from the spec and its optional prompts file: [{prompt, reference}]."""
    out = [{"prompt": p, "reference": None} if isinstance(p, str) else p.model_dump() for p in spec.samples.prompts]
    if spec.samples.path:
        for i, rec in enumerate(read(files(spec.samples.path, spec.base_dir)[0]), 1):
            if not isinstance(rec.get("prompt"), str):
                raise UserError(f"{spec.samples.path}:{i}: each sample row needs a text 'prompt' (and optionally 'reference')")
            out.append({"prompt": rec["prompt"], "reference": rec.get("reference")})
    return out
