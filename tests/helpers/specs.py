"""Specs and data files for the tests: the tiny spec on the quickstart data and the tiny random model."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]  # tests/helpers/ -> the repo


TIENDA = ROOT / "experiments" / "data" / "tienda"


SHARED_DATA = ROOT.parent / "shared" / "data"


def tiny_spec(**overrides) -> dict:
    """A fast spec on the quickstart data and the tiny random model; override any section."""
    spec = {
        "name": "tiny",
        "model": {"ref": "tiny-random", "method": "lora"},
        "data": {
            "slices": {
                "faq": {"path": str(TIENDA / "faq.jsonl")},
                "productos": {"path": str(TIENDA / "productos.jsonl")},
                "poesia": {"path": str(TIENDA / "poesia.jsonl")},
            },
            "eval": {"path": str(TIENDA / "eval.jsonl"), "max_rows": 8},
        },
        "train": {
            "max_steps": 4,
            "per_device_train_batch_size": 4,
            "max_length": 64,
            "eval_steps": 2,
            "per_device_eval_batch_size": 8,
            "seed": 0,
        },
        "lora": {"r": 4, "lora_alpha": 8},
        "search": {
            "n_trials": 3,
            "seed": 0,
            "sampler": "random",
            "pruner": "none",
            "space": {
                "train.learning_rate": {"float": [1e-4, 1e-2], "log": True},
                "slices.poesia.include": {"categorical": [True, False]},
            },
        },
        "samples": {
            "prompts": [{"prompt": "Describe una camiseta básica blanca", "reference": "Una camiseta."}, "¿Puedo devolver un pedido?"],
            "max_new_tokens": 8,
        },
    }
    for key, value in overrides.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and isinstance(spec.get(key), dict) else value
    return spec


def write_spec(folder: Path, spec: dict, name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def spec_file(folder: Path, slices: dict, eval_: dict, space: dict | None = None, **over) -> Path:
    """tiny_spec on these slices, searching only the learning rate unless told."""
    spec = tiny_spec(data={"slices": slices, "eval": eval_}, **over)
    spec["search"]["space"] = space or {"train.learning_rate": {"float": [1e-4, 1e-2], "log": True}}
    return write_spec(folder, spec)
