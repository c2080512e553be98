"""Everything that can be wrong with a sweep's input, checked before anything is written.

Used by the commands that train (`afina sweep`, `afina ablate`): spec, stores, data, model, metrics
and the data check, so bad input is one line and exit code 2 with nothing half-written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from afina import UserError, data, models, tracking
from afina.data import health
from afina.evaluation import judge, metrics
from afina.search import study as study_mod
from afina.tracking import stores

if TYPE_CHECKING:
    from afina.spec.schema import Spec


def validate(spec: Spec) -> tuple[data.Prepared, Any, list[dict]]:
    """Everything that can be wrong with the input, checked before anything is written."""
    tracking.check_url(spec.tracking.mlflow_uri, "mlflow_uri")
    tracking.check_url(spec.tracking.optuna_storage, "optuna_storage")
    check_space(spec)  # values every trial would fail on, at the space's edges
    study_mod.sampler(spec.search), study_mod.pruner(spec.search)  # bad *_args fail here, before the study exists
    stores.preflight(spec)  # both stores answer and the folders take files, before anything is created
    prepared = data.prepare(spec, collect=True)  # unmappable rows become check errors, listed together
    prompts = metrics.prompts(spec)
    model_dir = models.resolve(spec.model.ref)
    models.check(model_dir, spec.model.ref, spec.model.trust_remote_code)  # safetensors only, loadable
    metrics.validate(spec, prompts)  # metric names vs references, objectives, judge
    if spec.evaluate.judge:
        judge.probe(spec.evaluate.judge)  # answers now, or every trial would fail after training
    prepared.report = health.run(spec, prepared, models.load_tokenizer(model_dir, spec.model.trust_remote_code))
    if prepared.report.errors:
        first = prepared.report.errors[0]
        raise UserError(
            f"the data has {len(prepared.report.errors)} errors (first: {first}); run `afina check` on the spec to see them all"
        )
    return prepared, model_dir, prompts


def check_space(spec: Spec) -> None:
    """Build the real SFTConfig and LoraConfig at the fixed settings and at each end of every dimension
    (every categorical choice), after checking the values' types against the config classes."""
    import warnings
    from pathlib import Path

    from peft import LoraConfig
    from trl import SFTConfig

    from afina.spec import space
    from afina.training import train

    types = {"train": space.field_types(SFTConfig), "lora": space.field_types(LoraConfig)}
    scratch = Path(spec.tracking.checkpoint_dir) / "afina-check"  # never created: the configs only name it
    for where, params in space.points(spec):
        train_kw, lora_kw, _ = space.apply(spec, params)
        space.check_values(train_kw, lora_kw if spec.model.method == "lora" else {}, types, where)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                train.configs(spec, train_kw, lora_kw, scratch, 1)
        except (TypeError, ValueError, KeyError) as e:
            msg = " ".join(str(e).split())[:300] or type(e).__name__
            raise UserError(f"{where}: TRL/PEFT refuse these settings ({msg}); fix the train/lora values or the search range") from None
