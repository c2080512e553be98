"""Real generation: chat template applied, batched, greedy unless a temperature is set."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from afina.spec.schema import Spec


def chat(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]


def generate(
    model,
    tok,
    prompts: list[str],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    system: str | None = None,
    batch_size: int = 8,
    streamer=None,
) -> list[str]:
    import torch

    was_training = model.training
    model.eval()
    side = tok.padding_side
    tok.padding_side = "left"  # decoder-only models continue from the right edge
    outputs: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            texts = [
                tok.apply_chat_template(chat(p, system), tokenize=False, add_generation_prompt=True) for p in prompts[i : i + batch_size]
            ]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            kwargs = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
            with torch.no_grad():
                out = model.generate(
                    **enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, streamer=streamer, top_p=None, top_k=None, **kwargs
                )
            new = out[:, enc["input_ids"].shape[1] :]
            outputs += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    finally:
        tok.padding_side = side
        model.train(was_training)
    return outputs


def answer(spec: Spec, model, tok, prompts: list[dict]) -> list[str]:
    """The evaluation prompts answered with the spec's sampling settings (trials, baseline, compare)."""
    return generate(model, tok, [p["prompt"] for p in prompts], spec.samples.max_new_tokens, spec.samples.temperature, spec.samples.system)
