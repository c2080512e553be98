"""`afina generate`: answer a prompt (streamed) or a JSONL file of prompts with a registered or exported model."""

from __future__ import annotations

import json
from pathlib import Path

from afina import UserError
from afina.data import sources
from afina.evaluation import textgen
from afina.models import loader
from afina.tracking import logs


def run(uri: str, source: str, tracking_uri: str, max_new_tokens: int, temperature: float, system: str | None) -> None:
    """`afina generate`: stream one answer, or print one JSON line per prompt of a JSONL file."""
    from transformers import TextStreamer

    logs.quiet()
    rows = None
    if source.endswith(".jsonl") and Path(source).is_file():
        rows = [r["prompt"] for r in sources.prompt_rows(Path(source), source)]
    elif source.endswith(".jsonl"):
        raise UserError(f"{source}: no such file; pass a prompt or an existing .jsonl of {{prompt}} rows")
    with loader.fetched(uri, tracking_uri) as model_dir:
        model, tok = loader.load(model_dir)
    if rows is None:
        textgen.generate(
            model,
            tok,
            [source],
            max_new_tokens,
            temperature,
            system,
            streamer=TextStreamer(tok, skip_prompt=True, skip_special_tokens=True),
        )
        return
    for prompt, out in zip(rows, textgen.generate(model, tok, rows, max_new_tokens, temperature, system), strict=True):
        print(json.dumps({"prompt": prompt, "output": out}, ensure_ascii=False), flush=True)
