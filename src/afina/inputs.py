"""Everything that can be wrong with a sweep's input, checked before anything is written.

Used by the commands that train (`afina sweep`, `afina ablate`): spec, stores, data, model, metrics
and the data check, so bad input is one line and exit code 2 with nothing half-written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from afina import audit, data, metrics, models, stores, tracking
from afina import study as study_mod
from afina.errors import UserError

if TYPE_CHECKING:
    from afina.spec import Spec


def validate(spec: Spec) -> tuple[data.Prepared, Any, list[dict]]:
    """Everything that can be wrong with the input, checked before anything is written."""
    tracking.check_url(spec.tracking.mlflow_uri, "mlflow_uri")
    tracking.check_url(spec.tracking.optuna_storage, "optuna_storage")
    study_mod.sampler(spec.search), study_mod.pruner(spec.search)  # bad *_args fail here, before the study exists
    stores.preflight(spec)  # both stores answer and the folders take files, before anything is created
    prepared = data.prepare(spec, collect=True)  # unmappable rows become check errors, listed together
    prompts = metrics.prompts(spec)
    model_dir = models.resolve(spec.model.ref)
    models.check(model_dir, spec.model.ref, spec.model.trust_remote_code)  # safetensors only, loadable
    metrics.validate(spec, prompts)  # metric names vs references, objectives, judge
    prepared.report = audit.run(spec, prepared, models.load_tokenizer(model_dir, spec.model.trust_remote_code))
    if prepared.report.errors:
        first = prepared.report.errors[0]
        raise UserError(
            f"the data has {len(prepared.report.errors)} errors (first: {first}); run `afina check` on the spec to see them all"
        )
    return prepared, model_dir, prompts
