"""`afina check`: the spec's data checked before training (audit.py), shown, and written as reports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from afina import audit, data, models

if TYPE_CHECKING:
    from afina.spec import Spec


def run(spec: Spec, console, json_path: Path | None = None, markdown_path: Path | None = None) -> audit.Report:
    """Load, check with the model's tokenizer, show, write the reports."""
    prepared = data.prepare(spec, collect=True)
    tokenizer = models.load_tokenizer(models.resolve(spec.model.ref), spec.model.trust_remote_code)
    report = audit.run(spec, prepared, tokenizer)
    audit.render(report, console)
    if json_path:
        Path(json_path).write_text(report.to_json(), encoding="utf-8")
    if markdown_path:
        Path(markdown_path).write_text(report.to_markdown(), encoding="utf-8")
    return report
