"""Contracts with the libraries afina builds on, so that a release that changes them fails here, by name."""

from __future__ import annotations

import dataclasses

import pytest

from helpers.specs import tiny_spec, write_spec


@pytest.fixture(scope="module")
def worker(afina_cache, tmp_path_factory):
    from afina import data, models
    from afina.spec import schema as spec_mod

    spec = spec_mod.load(write_spec(tmp_path_factory.mktemp("contract"), tiny_spec()))
    prepared = data.prepare(spec)
    prepared = dataclasses.replace(prepared, slices={k: v[:10] for k, v in prepared.slices.items()}, eval=prepared.eval[:4])
    folder = models.resolve("tiny-random")
    return prepared, models.load_model(folder), models.load_tokenizer(folder)


def _trl_rows(worker, tmp_path, completion_only: bool, **train) -> list[tuple[list[int], list[int]]]:
    """What a real SFTTrainer trains on for the same rows: its prepared dataset through its own collator."""
    import datasets
    from trl import SFTConfig, SFTTrainer

    from afina.training.device import device_defaults

    prepared, model, tok = worker
    chats = list({r.key: r.messages for rows in [*prepared.slices.values(), prepared.eval] for r in rows}.values())
    if completion_only:
        raw = datasets.Dataset.from_dict({"prompt": [m[:-1] for m in chats], "completion": [m[-1:] for m in chats]})
    else:
        raw = datasets.Dataset.from_dict({"messages": chats})
    args = SFTConfig(tmp_path, report_to="none", completion_only_loss=completion_only, **{**device_defaults(train), **train})
    trainer = SFTTrainer(model=model, args=args, train_dataset=raw, processing_class=tok)
    out = []
    for example in trainer.train_dataset:
        batch = trainer.data_collator([example])
        out.append((batch["input_ids"][0].tolist(), batch["labels"][0].tolist()))
    return [r for r in out if any(x != -100 for x in r[1])]  # TRL leaves fully masked rows out (or trains nothing on them)


@pytest.mark.parametrize(
    "completion_only, train",
    [(False, {"max_length": 40}), (False, {"max_length": 40, "truncation_mode": "keep_end"}), (True, {"max_length": 40})],
)
def test_afina_tokenizes_rows_as_sft_trainer_does(worker, tmp_path, completion_only, train):
    """token_cache._tokenize (public chat-template API, cached per worker) must give the tokens and labels TRL's own preparation gives."""
    import trl
    from trl import SFTConfig

    from afina.data import token_cache
    from afina.training.device import device_defaults

    prepared, model, tok = worker
    if completion_only:  # rows with a prompt: TRL cannot template an empty one
        keep = {k: [r for r in v if len(r.messages) > 1] for k, v in prepared.slices.items()}
        prepared = dataclasses.replace(prepared, slices=keep, eval=[r for r in prepared.eval if len(r.messages) > 1])
        worker = (prepared, model, tok)
    args = SFTConfig(tmp_path, report_to="none", **{**device_defaults(train), **train})
    ours = token_cache._tokenize(prepared, tok, args, args.max_length, completion_only=completion_only)
    ours = list(zip(ours["input_ids"], ours["labels"], strict=True))
    theirs = _trl_rows(worker, tmp_path, completion_only, **train)
    first = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), None)
    assert len(ours) == len(theirs) and first is None, (
        f"TRL {trl.__version__} prepares SFT rows differently from afina's token_cache._tokenize "
        f"({len(theirs)} rows vs {len(ours)}; first difference at row {first}). "
        "Update token_cache._tokenize to match, or pin trl below this release in pyproject.toml."
    )
    assert any(-100 in labels for _, labels in ours) == completion_only  # the case under test really masks (or not)


def test_mlflow_resolves_relocatable_artifacts_through_afinas_entry_point(tmp_path):
    """MLflow loads afina's `mlflow.artifact_repository` entry point (its public plugin route), and the one
    private call left (the registry, for a checkout not reinstalled) still exists under that name."""
    import subprocess
    import sys

    import mlflow
    from mlflow.store.artifact import artifact_repository_registry as registry

    from afina.tracking import artifacts

    # a fresh interpreter: plain MLflow, afina never imported by hand
    code = (
        "from mlflow.store.artifact.artifact_repository_registry import get_registered_artifact_repositories as g;"
        "f = g()['mlflow-artifacts']; print(f.__module__, f.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["afina.tracking.artifacts", "repository"], f"MLflow {mlflow.__version__} did not load afina's entry point: {out}"
    assert hasattr(registry, "_artifact_repository_registry"), f"MLflow {mlflow.__version__} renamed its artifact registry"
    artifacts.register()
    store = tmp_path / "mlruns" / "mlflow.db"
    repo = registry.get_artifact_repository("mlflow-artifacts:/1/abc/artifacts", tracking_uri=f"sqlite:///{store}")
    assert repo.artifact_dir == str(tmp_path / "mlruns" / "artifacts" / "1" / "abc" / "artifacts")  # beside the store
