"""The MLflow model registry's aliases: @champion and the one it replaced."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient


def previous_alias(alias: str) -> str:
    return "previous" if alias == "champion" else f"{alias}-previous"


def by_alias(c: MlflowClient, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return c.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
