"""`afina rollback`: point @champion back at the previous champion (a swap), recording who and why."""

from __future__ import annotations

import json
import time
from typing import Any

from afina import UserError, tracking
from afina.promotion import registry
from afina.search import study as study_mod


def run(name: str, tracking_uri: str, alias: str, reason: str, console) -> Any:
    """Swap @alias and @previous, and record who went back and why on both versions."""
    from mlflow.exceptions import MlflowException

    c = study_mod.reader(tracking_uri)
    try:
        c.get_registered_model(name)
    except MlflowException:
        raise UserError(
            f"no registered model named {name!r} in {tracking.redact(tracking_uri)}; check the name (the spec's promote.model_name or name)"
        ) from None
    prev_alias = registry.previous_alias(alias)
    current, previous = registry.by_alias(c, name, alias), registry.by_alias(c, name, prev_alias)
    if previous is None or current is None:
        raise UserError(f"{name} has no @{prev_alias if current is not None else alias} version to roll back to")
    c.set_registered_model_alias(name, alias, previous.version)
    c.set_registered_model_alias(name, prev_alias, current.version)
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    record = json.dumps({"time": when, "from": str(current.version), "to": str(previous.version), "reason": reason}, ensure_ascii=False)
    c.set_model_version_tag(name, current.version, f"{tracking.TAG}rolled_back", record)
    c.set_model_version_tag(name, previous.version, f"{tracking.TAG}restored", record)
    c.set_registered_model_tag(name, f"{tracking.TAG}last_rollback", record)
    console.print(f"{name}: @{alias} v{current.version} → v{previous.version} ({reason}); @{prev_alias} is now v{current.version}")
    return previous
