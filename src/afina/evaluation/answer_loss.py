"""The promotion gate's metric: how well a model answers held-out rows, teacher-forced.

The candidate and the current champion are scored with the same metric on the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from afina import UserError
from afina.data import token_cache

if TYPE_CHECKING:
    from afina.data.chat_rows import Row
    from afina.spec.schema import Spec

MAX_TOKENS = 1024  # longer promotion rows are truncated (same cut for candidate and champion)


def answer_nll(model, tok, rows: list[Row], batch_size: int = 8, answers: bool = True) -> float:
    """Mean negative log-likelihood per token of each row's final assistant answer.

    Teacher-forced, chat template applied, batched. The prompt (everything before the last
    answer, as `token_cache.answer` splits it for training) is context only, so the score measures the
    answers the model gives, the same tokens a trial's eval loss covers. Rows that answer nothing
    are scored on all tokens; answers=False scores every row on all tokens (token_nll, for specs
    with train.completion_only_loss: false).
    """
    import torch
    import torch.nn.functional as F

    items = [_encode(tok, r.messages, answers) for r in rows]
    total, count = 0.0, 0
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    for i in range(0, len(items), batch_size):
        batch = items[i : i + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for j, (seq, start) in enumerate(batch):
            ids[j, : len(seq)] = torch.tensor(seq)
            labels[j, start : len(seq)] = torch.tensor(seq[start:])
            mask[j, : len(seq)] = 1
        with torch.no_grad():
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits.float()
        target = labels[:, 1:].to(logits.device)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100, reduction="sum")
        total += loss.item()
        count += int((target != -100).sum())
    if count == 0:
        raise UserError("the promotion set has no answer tokens to score; check promote.path")
    return total / count


def _encode(tok, messages: list[dict], answers: bool = True) -> tuple[list[int], int]:
    """(token ids, index of the first scored token)."""
    full = tok.apply_chat_template(messages, tokenize=False)
    split = token_cache.answer(messages) if answers else None
    prefix = tok.apply_chat_template(split[0], tokenize=False, add_generation_prompt=True) if split else ""
    if not full.startswith(prefix):
        prefix = ""
    head = tok(prefix, add_special_tokens=False)["input_ids"] if prefix else []
    seq = (head + tok(full[len(prefix) :], add_special_tokens=False)["input_ids"])[:MAX_TOKENS]
    return seq, max(1, min(len(head), len(seq) - 1))


def token_nll(model, tok, rows: list[Row], batch_size: int = 8) -> float:
    return answer_nll(model, tok, rows, batch_size, answers=False)


# Lower is better. A generation metric (e.g. from afina.metrics) can be added here with its sign.
METRICS: dict[str, tuple[Callable[..., float], bool]] = {"answer_nll": (answer_nll, True), "token_nll": (token_nll, True)}


def metric(spec: Spec) -> str:
    """The gate scores what the trials were trained and judged on: answers, unless the spec trains all tokens."""
    return "answer_nll" if token_cache.answer_only(spec.train) else "token_nll"
