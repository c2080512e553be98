"""Load data sources, map their columns onto chat rows, cut slices and mix them per trial.

Every training and eval row becomes a chat (`messages`): prompt/completion pairs become a user
and an assistant turn, plain text becomes an assistant turn (that is what a style slice teaches:
to answer like that). Each row remembers where it came from (`origin`, "file:row", row = record
number in the file) so checks can point at it.

What is trained on (`answer`): a chat whose last turn answers something reaches TRL as
conversational prompt/completion (prompt = every turn before the last assistant turn, earlier
answers included, as context; completion = that last turn), so the loss covers the answer only.
A row that answers nothing (a style slice's text, with or without a system prompt) stays a
language-modelling row, trained on all its tokens. `train.completion_only_loss: false` trains
every row on all its tokens.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afina.errors import UserError

if TYPE_CHECKING:
    from afina.spec import Spec

ROLES = {"system", "user", "assistant", "tool"}
# Column names people's exports already use, tried when the spec maps none.
ALIASES = {
    "prompt": ("prompt", "instruction", "question", "input", "query"),
    "completion": ("completion", "response", "output", "answer"),
}
HUB = "hf:"  # prefix of a Hugging Face dataset id: hf:org/name or hf:org/name:split


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


def files(patterns: str | list[str], base: Path) -> list[Path]:
    found: list[Path] = []
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        if pattern.startswith(HUB):
            found.append(Path(pattern))
            continue
        try:
            full = base / Path(pattern).expanduser()
        except RuntimeError:  # "~someone/..." for a user that does not exist: a plain relative path
            full = base / pattern
        # A real file named like a glob (faq[2024].jsonl) is that file; only the pattern part is a glob, never the spec's folder.
        if full.exists() or not glob.has_magic(pattern):
            matches = [full]
        else:
            found_paths = glob.glob(os.path.join(glob.escape(str(base)), str(Path(pattern).expanduser())), recursive=True)
            matches = sorted(Path(p) for p in found_paths)
        for m in matches:
            if not m.exists():
                if re.fullmatch(r"[\w.-]+/[\w-]+", pattern):  # no such file, but shaped like org/name
                    found.append(Path(HUB + pattern))
                    break
                raise UserError(f"data file {pattern!r} not found (looked in {m.parent}); fix the path, relative to the spec's folder")
        else:
            if not matches:
                raise UserError(f"data glob {pattern!r} matched no files; fix the pattern, relative to the spec's folder")
            found += matches
    return found


def read(path: Path) -> list[dict[str, Any]]:
    """Records of one file (jsonl, json, csv, parquet), `save_to_disk` folder or hub dataset, via `datasets`."""
    import datasets

    datasets.disable_progress_bars()
    if str(path).startswith(HUB):
        return _read_hub(str(path)[len(HUB) :])
    if path.is_dir():
        try:
            ds = datasets.load_from_disk(str(path))
        except (FileNotFoundError, OSError, ValueError):
            raise UserError(f"{path}: a data folder must be saved with datasets' save_to_disk; or point path at a file or a glob") from None
        ds = ds["train"] if isinstance(ds, datasets.DatasetDict) else ds
        return ds.to_list()
    suffix = path.suffix.lower()
    kind = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(suffix)
    if kind is None:
        raise UserError(f"{path}: unsupported file type {suffix!r}; use .jsonl, .json, .csv, .parquet or a save_to_disk folder")
    if not path.is_file():  # a FIFO, device or socket would block or never end
        raise UserError(f"{path}: is not a regular file; point path at a data file (.jsonl, .json, .csv, .parquet)")
    try:
        return _read_file(path, kind, suffix)
    except OSError as e:  # permission denied, a file that vanished, an I/O error
        raise UserError(f"{path}: cannot be read ({e.strerror or e}); check the file and its permissions") from None


def _read_file(path: Path, kind: str, suffix: str) -> list[dict[str, Any]]:
    import datasets

    if path.stat().st_size < 64 and not path.read_bytes().strip():
        return []  # datasets cannot infer a schema from nothing
    if kind == "parquet":
        with path.open("rb") as f:
            if f.read(4) != b"PAR1":
                raise UserError(f"{path}: is not a Parquet file (no PAR1 header); rename it to its real type or re-save it as Parquet")
    else:
        _check_text(path)
        if suffix == ".jsonl":
            _check_jsonl(path)
        elif kind == "csv" and not _check_csv(path):
            return []  # a header and no rows
    try:
        with _quiet_datasets(), _literal(path) as name:
            ds = datasets.load_dataset(kind, data_files=name, split="train", cache_dir=None)
    except Exception as e:  # datasets wraps parser errors in many types; the innermost one says what is wrong
        while e.__cause__ is not None or e.__context__ is not None:
            e = e.__cause__ or e.__context__
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(f"{path}: could not be read as {kind} ({why}); fix the file or save it as JSON lines") from None
    return ds.to_list()


@contextlib.contextmanager
def _literal(path: Path):
    """A name datasets will not read as a glob: datasets expands data_files patterns, so a file named
    faq[2024].jsonl is reached through a plain-named link in a temporary folder."""
    if not glob.has_magic(str(path)):
        yield str(path)
        return
    import tempfile

    with tempfile.TemporaryDirectory(prefix="afina-data-") as tmp:
        link = Path(tmp) / f"data{path.suffix.lower()}"
        link.symlink_to(path.resolve())
        yield str(link)


@contextlib.contextmanager
def _quiet_datasets():
    """datasets logs a parser error at ERROR level before raising it: one line is ours to print."""
    import logging

    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _check_text(path: Path) -> None:
    """UTF-8 text, or one line saying what the file is instead (UTF-16 exports from spreadsheets are common)."""
    import codecs

    with path.open("rb") as f:
        head = f.read(4)
        if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
            raise UserError(f"{path}: is UTF-32 text; save it as UTF-8")
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raise UserError(f'{path}: is UTF-16 text (a spreadsheet\'s "Unicode text" export?); save it as UTF-8 (CSV UTF-8)')
        f.seek(0)
        decoder, offset = codecs.getincrementaldecoder("utf-8")(), 0
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise UserError(f"{path}: is not UTF-8 text (bad byte at offset {offset + e.start}); save it as UTF-8") from None
            offset += len(chunk)


def _check_csv(path: Path) -> int:
    """Every row has the header's number of fields (pandas would say so in two lines, without the fix); returns the rows."""
    import csv

    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header, rows = next(reader, None), 0
        if not header:
            return 0
        for row in reader:
            rows += bool(row)
            if row and len(row) != len(header):
                raise UserError(
                    f"{path}:{reader.line_num}: {len(row)} fields where the header has {len(header)}; "
                    'quote fields that contain commas ("a, b") or fix that row'
                )
    return rows


def _read_hub(ref: str) -> list[dict[str, Any]]:
    import datasets

    name, _, split = ref.partition(":")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise UserError(
            f"data source {name!r} is no local file, and as a Hugging Face dataset it needs the hub while HF_HUB_OFFLINE is set; "
            "fix the path, or run once with HF_HUB_OFFLINE=0, or save_to_disk it and point path at that folder"
        )
    try:
        return datasets.load_dataset(name, split=split or "train").to_list()
    except Exception as e:
        raise UserError(f"Hugging Face dataset {name!r} could not be loaded ({str(e).splitlines()[0][:200]})") from None


def _check_jsonl(path: Path) -> None:
    """datasets reports a broken JSONL without its line; find the line ourselves."""
    text = path.read_text(encoding="utf-8")
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{n}: not valid JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(record, dict):
                raise UserError(
                    f'{path}:{n}: a JSON line must be an object such as {{"prompt": ..., "completion": ...}}, not {type(record).__name__}'
                )


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


@dataclass
class Prepared:
    """All slices and the eval set, loaded once per sweep; trials only mix them."""

    slices: dict[str, list[Row]]
    eval: list[Row]
    fingerprints: dict[str, str]
    issues: list[Issue] = field(default_factory=list)
    """Rows skipped because they could not be mapped (only when prepared with collect=True)."""
    report: Any = None
    """The `afina check` report, when a sweep ran it."""


def load_rows(
    spec, paths, label: str, fmt="auto", columns=None, system=None, filt=None, cache: dict | None = None, issues: list[Issue] | None = None
) -> list[Row]:
    """Rows of one source (file, glob, list, hub id), filtered by `filt` and mapped."""
    cache = {} if cache is None else cache
    rows = []
    for p in files(paths, spec.base_dir):
        if p not in cache:
            cache[p] = read(p)
        recs = select(cache[p], filt or {}, f"{label} ({p.name})")
        # origin numbers refer to the row in the file, so a filter keeps the original index
        index = {id(r): i for i, r in enumerate(cache[p], 1)}
        rows += normalize(recs, p.name, fmt, columns, system, issues, [index[id(r)] for r in recs])
    return rows


def prepare(spec: Spec, collect: bool = False) -> Prepared:
    """Load every slice and the eval set. collect=True reports unmappable rows and empty sets in
    `Prepared.issues` instead of raising, so `afina check` can list them all."""
    cache: dict[Path, list[dict]] = {}
    issues: list[Issue] = []

    def problem(where: str, fld: str, message: str) -> None:
        if not collect:
            raise UserError(f"{where}: {message}")
        issues.append(Issue("error", where, fld, message))

    slices = {}
    for name, s in spec.data.slices.items():
        rows = load_rows(spec, s.path, f"slice {name}", s.format, s.columns, s.system, s.where, cache, issues if collect else None)
        if not rows:
            problem(
                f"slice {name}",
                "where" if s.where else "path",
                f"is empty (no usable rows{' match ' + json.dumps(s.where) if s.where else ''}); fix its path or filter",
            )
        slices[name] = rows
    ev = spec.data.eval
    if ev.path is not None:
        eval_rows = load_rows(spec, ev.path, "eval", ev.format, ev.columns, ev.system, None, cache, issues if collect else None)
    else:
        eval_rows = []
        for name in spec.eval_slices:  # never a slice the search varies, unless the spec names it
            rng = random.Random(f"{spec.data.seed}:{name}")
            rows = slices[name][:]
            rng.shuffle(rows)
            n = max(1, round(len(rows) * ev.split)) if len(rows) > 1 else 0
            eval_rows += rows[:n]
            slices[name] = rows[n:]
        # a cap must not keep only the first slices in name order
        random.Random(f"{spec.data.seed}:eval").shuffle(eval_rows)
    if ev.max_rows:
        eval_rows = eval_rows[: ev.max_rows]
    if not eval_rows:
        problem(
            "data.eval",
            "path" if ev.path else "split",
            "the eval set is empty; point data.eval.path at held-out rows or set data.eval.split: 0.1",
        )
    prints = {f"slice.{n}": fingerprint(r) for n, r in slices.items()} | {"eval": fingerprint(eval_rows)}
    return Prepared(slices, eval_rows, prints, issues)


def mix(prepared: Prepared, choices: dict[str, dict[str, Any]], seed: int) -> tuple[list[Row], dict[str, int]]:
    """The trial's training rows from per-slice include/weight/fraction/max_rows choices.

    fraction and max_rows subsample a slice; weight then scales its natural share of the mix
    (all weights 1: every row once). The total stays the sum of the included slices, so slices
    with weight > their neighbours are upsampled with replacement. Seeded: same choices, same rows.
    """
    base: dict[str, list[Row]] = {}
    for name, rows in prepared.slices.items():
        c = choices[name]
        if not c["include"] or c["weight"] <= 0 or not rows:
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
        picked = (
            rows[:]
            if target == len(rows)
            else rng.sample(rows, target)
            if target < len(rows)
            else rows + rng.choices(rows, k=target - len(rows))
        )
        counts[name] = len(picked)
        out += picked
    random.Random(f"{seed}:shuffle").shuffle(out)
    return out, counts


def answer(messages: list[dict[str, str]]) -> tuple[list[dict], list[dict]] | None:
    """(prompt, completion) of a chat whose last turn is an assistant's answer to something, else
    None (nothing was asked: a language-modelling row). The trials' eval loss and promote's
    answer_nll both score the completion of exactly this split."""
    if len(messages) < 2 or messages[-1]["role"] != "assistant" or all(m["role"] == "system" for m in messages[:-1]):
        return None
    return messages[:-1], messages[-1:]


def answer_only(train) -> bool:
    """TRL's own switch (an SFTConfig or the spec's train section): completion_only_loss None (its
    default) or true scores answers only; false scores every token."""
    value = train.get("completion_only_loss") if isinstance(train, dict) else getattr(train, "completion_only_loss", None)
    return value is not False


def to_dataset(rows: list[Row]):
    """Raw chats, for TRL to prepare itself (assistant-only loss, custom preparation)."""
    import datasets

    return datasets.Dataset.from_list([{"messages": r.messages} for r in rows])


_TOKENS: dict[str, dict[str, tuple[list[int], list[int]]]] = {}  # this worker's tokenized rows, by cache key


def tokenized(
    prepared: Prepared, tok, tok_print: str, args, cache_root: Path, reuse: bool = True
) -> dict[str, tuple[list[int], list[int]]] | None:
    """{row key: (input_ids, labels)} for every slice and eval row, made once by TRL's own preparation.

    Kept in memory for the worker and on disk under `cache_root` for later runs, keyed by the
    data's prints, the tokenizer's print and the settings that change tokens or labels
    (max_length, truncation, completion_only_loss). Trials then pass pre-tokenized rows, which
    SFTTrainer takes as they are. reuse=False tokenizes from scratch and keeps nothing (benchmarks).
    None where TRL must see raw rows (assistant-only loss swaps the chat template; a custom
    preparation opts out).
    """
    if args.assistant_only_loss or (args.dataset_kwargs or {}).get("skip_prepare_dataset"):
        return None
    import datasets
    import trl

    max_length = None if args.packing else args.max_length  # packing cuts sequences itself, after this
    if not reuse:
        ds = _tokenize(prepared, tok, args, max_length)
        return dict(zip(ds["key"], zip(ds["input_ids"], ds["labels"], strict=True), strict=True))
    settings = [trl.__version__, tok_print, max_length, args.truncation_mode, answer_only(args), sorted(prepared.fingerprints.items())]
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:20]
    if key in _TOKENS:
        return _TOKENS[key]
    folder = cache_root / key
    try:
        ds = datasets.load_from_disk(str(folder))
    except (FileNotFoundError, OSError, ValueError):
        ds = _tokenize(prepared, tok, args, max_length)
        try:
            cache_root.mkdir(parents=True, exist_ok=True)
            tmp = cache_root / f".{key}-{os.getpid()}"
            ds.save_to_disk(str(tmp))
            tmp.rename(folder)  # atomic: a half-written cache is never read
        except OSError:  # read-only or raced by another worker: the memory copy still serves
            pass
    _TOKENS.clear()
    _TOKENS[key] = dict(zip(ds["key"], zip(ds["input_ids"], ds["labels"], strict=True), strict=True))
    return _TOKENS[key]


def _tokenize(prepared: Prepared, tok, args, max_length, completion_only: bool | None = None):
    """SFTTrainer's preparation of every unique row, through the tokenizer's public chat-template API.

    As TRL does for conversational prompt/completion rows: the chat template, labels = input_ids with
    the prompt masked (-100) when answer-only (`completion_only`, default: `answer_only(args)`) and the
    row answers something (`answer`); rows that answer nothing keep every token. Cut to max_length by
    truncation_mode; fully masked rows are left out. tests/test_contracts.py holds this to a real
    SFTTrainer's preparation of the same rows.
    """
    import datasets

    completion_only = answer_only(args) if completion_only is None else completion_only
    unique = {r.key: r.messages for rows in [*prepared.slices.values(), prepared.eval] for r in rows}
    cut = slice(None, max_length) if args.truncation_mode == "keep_start" else slice(-max_length if max_length else None, None)
    out: dict[str, list] = {"key": [], "input_ids": [], "labels": []}
    for key, messages in unique.items():
        ids = list(tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
        masked = 0
        if completion_only and answer(messages):  # where the prompt (with the generation prompt) stops matching the chat
            head = tok.apply_chat_template(messages[:-1], tokenize=True, return_dict=True, add_generation_prompt=True)["input_ids"]
            masked = next((i for i, (a, b) in enumerate(zip(head, ids, strict=False)) if a != b), min(len(head), len(ids)))
        labels = [-100] * masked + ids[masked:]
        if max_length is not None:
            ids, labels = ids[cut], labels[cut]
            if all(x == -100 for x in labels):
                continue
        out["key"].append(key)
        out["input_ids"].append(ids)
        out["labels"].append(labels)
    return datasets.Dataset.from_dict(out)


def to_tokenized_dataset(rows: list[Row], table: dict[str, tuple[list[int], list[int]]]):
    """The trial's rows as a pre-tokenized dataset, in order; rows TRL would drop (fully masked) are left out."""
    import datasets

    picked = [table[r.key] for r in rows if r.key in table]
    return datasets.Dataset.from_dict({"input_ids": [p[0] for p in picked], "labels": [p[1] for p in picked]})


def prompts(spec: Spec) -> list[dict[str, str | None]]:
    """Sample prompts from the spec and its optional prompts file: [{prompt, reference}]."""
    out = [{"prompt": p, "reference": None} if isinstance(p, str) else p.model_dump() for p in spec.samples.prompts]
    if spec.samples.path:
        out += prompt_rows(files(spec.samples.path, spec.base_dir)[0], spec.samples.path, "sample ")
    return out


def prompt_rows(path: Path, where: str, kind: str = "") -> list[dict[str, str | None]]:
    """[{prompt, reference}] from a file of prompt rows; a row without a text prompt is an error."""
    out = []
    for i, rec in enumerate(read(Path(path)), 1):
        if not isinstance(rec.get("prompt"), str):
            raise UserError(f"{where}:{i}: each {kind}row needs a text 'prompt' (and optionally 'reference')")
        out.append({"prompt": rec["prompt"], "reference": rec.get("reference")})
    return out
