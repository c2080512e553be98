"""The search space as data: map it onto `trial.suggest_*` and apply the picks to a spec."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from afina.spec import Spec


def suggest(trial, space: dict) -> dict[str, Any]:
    """Ask the trial for one value per dimension; Optuna param names are the dotted spec keys."""
    params = {}
    for key, dim in space.items():
        if dim.categorical is not None:
            params[key] = trial.suggest_categorical(key, dim.categorical)
        elif dim.int is not None:
            params[key] = trial.suggest_int(key, dim.int[0], dim.int[1], step=int(dim.step or 1), log=dim.log)
        else:
            params[key] = trial.suggest_float(key, dim.float[0], dim.float[1], step=dim.step, log=dim.log)
    return params


def grid(space: dict) -> dict[str, list]:
    """Grid sampler's search space: every categorical choice, every step of a numeric range."""
    out = {}
    for key, dim in space.items():
        if dim.categorical is not None:
            out[key] = list(dim.categorical)
        elif dim.int is not None:
            out[key] = list(range(dim.int[0], dim.int[1] + 1, int(dim.step or 1)))
        else:
            out[key] = [float(v) for v in np.arange(dim.float[0], dim.float[1] + dim.step / 2, dim.step)]
    return out


def apply(spec: Spec, params: dict[str, Any]) -> tuple[dict, dict, dict[str, dict]]:
    """Fixed spec values overridden by the trial's picks: (train kwargs, lora kwargs, slice choices)."""
    train, lora = dict(spec.train), dict(spec.lora)
    slices = {
        n: {"include": s.include, "weight": s.weight, "fraction": s.fraction, "max_rows": s.max_rows} for n, s in spec.data.slices.items()
    }
    for key, value in params.items():
        section, _, rest = key.partition(".")
        if section == "train":
            train[rest] = value
        elif section == "lora":
            lora[rest] = value
        else:
            name, _, attr = rest.partition(".")
            slices[name][attr] = value
    return train, lora, slices
