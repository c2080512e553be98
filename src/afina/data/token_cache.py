"""Chat rows tokenized as TRL's SFTTrainer prepares them, once per worker and cached on disk.

What is trained on (`answer`): a chat whose last turn answers something reaches TRL as
conversational prompt/completion (prompt = every turn before the last assistant turn, earlier
answers included, as context; completion = that last turn), so the loss covers the answer only.
A row that answers nothing (a style slice's text, with or without a system prompt) stays a
language-modelling row, trained on all its tokens. `train.completion_only_loss: false` trains
every row on all its tokens.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from afina.data import Prepared
    from afina.data.chat_rows import Row


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
    ds = _cached(folder)
    if ds is None:
        ds = _tokenize(prepared, tok, args, max_length)
        if len(ds):  # an empty set is a bad spec's result (every answer cut off): never keep it for later sweeps
            _keep(ds, cache_root, key)
    _TOKENS.clear()
    _TOKENS[key] = dict(zip(ds["key"], zip(ds["input_ids"], ds["labels"], strict=True), strict=True))
    return _TOKENS[key]


def _cached(folder: Path):
    """The tokenized set saved in `folder`, or None where there is none or it does not load: a broken entry
    (an empty set an older afina kept, a folder cut short by a full disk) is removed and made again."""
    import shutil

    import datasets

    if not folder.is_dir():
        return None
    try:
        ds = datasets.load_from_disk(str(folder))
    except Exception:  # datasets raises IndexError, OSError, ValueError, Arrow errors... for a folder it cannot read
        ds = None
    if ds is None or not len(ds):
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return ds


def _keep(ds, cache_root: Path, key: str) -> None:
    """Save the set under cache_root/key for later runs; atomic, so a half-written entry is never read."""
    import shutil

    tmp = cache_root / f".{key}-{os.getpid()}"
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        ds.save_to_disk(str(tmp))
        tmp.rename(cache_root / key)
    except OSError:  # read-only, or another worker saved the same key first: the memory copy still serves
        shutil.rmtree(tmp, ignore_errors=True)


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
