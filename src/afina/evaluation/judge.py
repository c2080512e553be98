"""LLM-as-judge: a judge model reads the rubric, the question and an answer, and gives a score.

The judge is any model afina can load (`model: smollm2-135m`, a local folder, a hub id) or an
OpenAI-compatible chat endpoint (`url:` + the name of the environment variable that holds the
key), reached through the openai client (retries with backoff, 429 handling). Judges answer in
free text, so scores are parsed leniently ("7", "Score: 7", "7/10"); answers with no usable score
are counted (`judge_unparsed`), never crashed on. An endpoint that cannot be reached raises, which
fails the trial with that reason.
"""

from __future__ import annotations

import functools
import os
import re

from afina import UserError, models
from afina.evaluation import textgen
from afina.tracking import redact

PROBE_TIMEOUT = 10  # seconds the start-up probe waits for the judge: a live endpoint answers one token sooner

PROMPT = """You are grading an answer from a customer-facing assistant.
Rubric: {rubric}

Question: {prompt}
{reference}Answer: {answer}

Rate the answer from {lo} to {hi} following the rubric. Reply with the number only."""

PAIR = """You are comparing two answers from customer-facing assistants.
Rubric: {rubric}

Question: {prompt}
{reference}Answer A: {a}

Answer B: {b}

Which answer is better under the rubric? Reply with exactly one of: A, B, tie."""


def ask(cfg, messages: list[str]) -> list[str]:
    """Raw judge replies, one per message."""
    if cfg.url:
        return [_http(cfg, m) for m in messages]
    model, tok = _local(cfg.model)
    return textgen.generate(model, tok, messages, cfg.max_new_tokens, 0.0)


def _message(template: str, cfg, p: dict, **answers) -> str:
    """One question to the judge: the rubric, the prompt, the reference when shown, and the answer(s) to judge."""
    reference = f"Reference answer: {p['reference']}\n" if p.get("reference") and cfg.show_reference else ""
    return template.format(rubric=cfg.rubric, prompt=p["prompt"], reference=reference, **answers)


def score(cfg, prompts: list[dict], outputs: list[str]) -> tuple[list[float | None], list[str]]:
    """(score per answer or None when unparseable, raw replies)."""
    lo, hi = cfg.scale
    raw = ask(cfg, [_message(PROMPT, cfg, p, answer=o, lo=lo, hi=hi) for p, o in zip(prompts, outputs, strict=True)])
    return [parse_score(r, lo, hi) for r in raw], raw


def verdicts(cfg, prompts: list[dict], a: list[str], b: list[str]) -> list[str | None]:
    """Pairwise: 'A', 'B', 'tie' or None (unparseable) per prompt."""
    messages = [_message(PAIR, cfg, p, a=x, b=y) for p, x, y in zip(prompts, a, b, strict=True)]
    return [parse_verdict(r) for r in ask(cfg, messages)]


_NUM = r"(\d+(?:[.,]\d+)?)"


def parse_score(text: str, lo: float, hi: float) -> float | None:
    """The judge's score in [lo, hi], or None. Tries 'x/hi', 'score: x', then the first number in range."""
    text = text or ""
    candidates = [m.group(1) for m in re.finditer(_NUM + r"\s*/\s*" + re.escape(_fmt(hi)) + r"\b", text)]
    candidates += [m.group(1) for m in re.finditer(r"(?i)(?:score|rating|puntuaci[oó]n|nota)\W{0,3}" + _NUM, text)]
    bare = re.sub(
        r"(?i)\d+\s*(?:-|–|to)\s*\d+|out of\s*\d+(?:\s*(?:-|–|to)\s*\d+)?|/\s*\d+", " ", text
    )  # "1-10", "out of 10": the scale, not a score
    candidates += re.findall(r"(?<![\d.,])" + _NUM + r"(?![\d.,]*\d)", bare)
    for c in candidates:
        value = float(c.replace(",", "."))
        if lo <= value <= hi:
            return value
    return None


def parse_verdict(text: str) -> str | None:
    text = (text or "").strip()
    m = re.search(r"(?i)\b(?:answer|winner|verdict|better)\W{0,3}(A|B|tie)\b", text) or re.match(r"\W*(A|B|tie|empate)\b", text, re.I)
    if not m:
        return None
    word = m.group(1).lower()
    return "tie" if word in ("tie", "empate") else word.upper()


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def probe(cfg) -> None:
    """One short question before the sweep writes anything (beside the store probes): a judge that does not
    answer now would fail every trial after its training. A judge lost later fails only the trials it misses."""
    if cfg.model:
        models.check(models.resolve(cfg.model), cfg.model, False, field="evaluate.judge.model")
        return
    try:
        _http(cfg, "Reply with the number 1.", retries=1, timeout=min(cfg.timeout, PROBE_TIMEOUT), max_tokens=1)
    except RuntimeError as e:
        raise UserError(f"evaluate.judge: {e}") from None


def _http(cfg, content: str, retries: int = 3, timeout: float | None = None, max_tokens: int | None = None) -> str:
    """One chat completion through the openai client, which retries with backoff on 429, 5xx and dropped connections.

    Down or refusing after the retries: raise (the trial fails). A reply without a message: return it (unparsed).
    """
    import openai

    key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
    client = _client(cfg.url, key, timeout or cfg.timeout, retries)
    messages = [{"role": "user", "content": content}]
    try:
        reply = client.chat.completions.create(
            model=cfg.name, messages=messages, temperature=0, max_tokens=max_tokens or cfg.max_new_tokens
        )
    except openai.APIStatusError as e:
        raise RuntimeError(
            f"judge endpoint {redact(str(client.base_url))} answered HTTP {e.status_code}; "
            f"check evaluate.judge.url, name and the key in ${cfg.api_key_env or '-'}"
        ) from None
    except openai.APIConnectionError as e:  # also timeouts
        raise RuntimeError(
            f"judge endpoint {redact(str(client.base_url))} is unreachable ({redact(str(e.__cause__ or e))}); "
            "start it or fix evaluate.judge.url"
        ) from None
    try:
        return reply.choices[0].message.content or ""
    except (AttributeError, IndexError, TypeError):
        return str(reply)[:500]  # not an OpenAI-shaped reply: keep it, it counts as unparsed


@functools.cache
def _client(url: str, key: str, timeout: float, retries: int):
    import openai

    base = url.rstrip("/").removesuffix("/chat/completions")
    # api_key must not be empty for the client; "-" stands for "no key" on servers that need none.
    return openai.OpenAI(base_url=base, api_key=key or "-", timeout=timeout, max_retries=retries)


@functools.cache
def _local(ref: str):
    """A local judge is loaded once per process and reused by every trial."""
    folder = models.resolve(ref)
    return models.load_model(folder), models.load_tokenizer(folder)
