"""One worker runs many trials: memory stays flat, and reusing the base model and the token cache
changes nothing about the results (same seed, same eval loss as a fresh load)."""

from __future__ import annotations

import contextlib
import gc
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def _live(kind) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


def test_rss_and_live_models_stay_flat_across_trials(afina_cache, tmp_path):
    import common
    from transformers import PreTrainedModel, Trainer

    bench = common.Bench("tiny-random", 2, tmp_path, batch=4, max_length=64, eval_steps=1)
    proc = psutil.Process()
    rss, models = [], []
    for _ in range(5):
        bench.afina()
        models.append(_live(PreTrainedModel))
        rss.append(proc.memory_info().rss / 2**20)
    assert _live(Trainer) == 0, "a finished trial's trainer is still alive"
    # the worker keeps exactly its pristine base; trial copies are freed
    assert models[1:] == [models[0]] * 4, models
    growth = rss[-1] - rss[1]  # the first trial fills caches (imports, base, tokens)
    assert growth < 40, f"RSS grew {growth:.1f} MiB over 3 trials: {[round(x) for x in rss]}"


def test_reuse_gives_identical_results(afina_cache, tmp_path):
    import common

    from afina import models
    from afina.data import token_cache

    bench = common.Bench("tiny-random", 3, tmp_path, batch=4, max_length=64, eval_steps=1)
    models._PRISTINE.clear()
    token_cache._TOKENS.clear()
    fresh = bench.afina(lr=3e-3, reuse=False)
    cold = bench.afina(lr=3e-3, reuse=True)  # loads the base, tokenizes, writes the disk cache
    token_cache._TOKENS.clear()
    disk = bench.afina(lr=3e-3, reuse=True)  # tokens read back from the disk cache, base from memory
    assert fresh["eval_loss"] == cold["eval_loss"] == disk["eval_loss"]
    assert fresh["tokens"] == cold["tokens"] == disk["tokens"]
    assert list((Path(afina_cache) / "tokens").iterdir()), "the token cache was not written to disk"


def _weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lora_trials_share_the_base_weights_and_never_write_them(afina_cache, tmp_path):
    """LoRA trials train over the worker's own base tensors (no heap copy, which trains slower on
    CPU); neither a default-init trial nor an OLoRA trial (whose init rewrites the base, so it gets
    a copy) may change them."""
    import common
    import optuna
    import torch

    from afina import models

    bench = common.Bench("tiny-random", 2, tmp_path, batch=4, max_length=64, eval_steps=1)
    models._PRISTINE.clear()
    _, copy_ = models.fresh(bench.model_dir, share_weights=True)
    ((base_tok, base),) = models._PRISTINE.values()
    before = _weights(base)
    for (name, p), (_, q) in zip(base.named_parameters(), copy_.named_parameters(), strict=True):
        assert p is not q and p.data_ptr() == q.data_ptr(), name
    assert copy_.lm_head.weight is copy_.model.embed_tokens.weight  # still tied
    bench.afina(lr=3e-2)
    bench.spec.lora["init_lora_weights"] = "olora"
    with contextlib.suppress(optuna.TrialPruned):  # the bench's pruner may stop it after its first step
        bench.afina(lr=3e-2)
    ((_, after_model),) = models._PRISTINE.values()
    assert after_model is base
    for k, v in _weights(base).items():
        assert torch.equal(v, before[k]), f"a trial wrote the pristine base's {k}"
    _, full = models.fresh(bench.model_dir, share_weights=False)
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(base.parameters(), full.parameters(), strict=True))


def test_a_failed_trials_exception_no_longer_holds_what_it_trained():
    """Whoever still holds a failed trial's exception (Optuna does, until the trial is told) holds its model,
    optimizer and activations through the traceback's frames: device.release lets them go at once. The whole
    sweep under a memory cap: tests/test_faults.py (test_out_of_memory_fails_that_trial_only...)."""
    import weakref

    import torch

    from afina.training import device

    held = []

    def step():
        activations = torch.zeros(1 << 20)
        held.append(weakref.ref(activations))
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 GiB")

    try:
        step()
    except RuntimeError as e:
        assert device.out_of_memory(e).startswith("out of memory ([enforce fail"), device.out_of_memory(e)
        assert held[0]() is not None
        device.release(e)
        assert held[0]() is None, "the traceback still holds the trial's tensors"
    assert device.out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert device.out_of_memory(MemoryError()) and not device.out_of_memory(ValueError("a bad batch"))
