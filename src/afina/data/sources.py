"""Data sources read into records: files, globs, `save_to_disk` folders and hub datasets, each through
`datasets`, with a broken file named in one line (its line, its encoding, its field count) before
`datasets` reports it in its own words. Also the prompt files that samples and evaluation read."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from afina import UserError

if TYPE_CHECKING:
    from afina.spec.schema import Spec

HUB = "hf:"  # prefix of a Hugging Face dataset id: hf:org/name or hf:org/name:split
MAX_DEPTH = 64  # nested lists and objects in one record: a chat row needs 3; json parses by recursion


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
    except Exception as e:  # missing offline, a wrong name or split: datasets raises many kinds, all bad input here
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
            except RecursionError:  # deeper than Python's stack
                record = deep = True
            else:
                deep = line.count("[") + line.count("{") > MAX_DEPTH and _depth(record) > MAX_DEPTH
            if deep:
                raise UserError(f"{path}:{n}: values nested more than {MAX_DEPTH} deep (a recursion bomb?); flatten or remove that line")
            if not isinstance(record, dict):
                raise UserError(
                    f'{path}:{n}: a JSON line must be an object such as {{"prompt": ..., "completion": ...}}, not {type(record).__name__}'
                )


def _depth(value) -> int:
    """How deeply lists and objects nest in a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d)
            stack += [(c, d + 1) for c in (v.values() if isinstance(v, dict) else v)]
    return deepest


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
