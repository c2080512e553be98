"""`afina check`: the spec's data checked before training (data/health.py), shown, and written as reports."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from afina import UserError, data, models
from afina.data import health, health_report
from afina.tracking import stores

if TYPE_CHECKING:
    from afina.spec.schema import Spec


def run(spec: Spec, console, json_path: Path | None = None, markdown_path: Path | None = None) -> health_report.Report:
    """Load, check with the model's tokenizer, show, write the reports (into new folders if need be)."""
    for out, flag in ((json_path, "--json"), (markdown_path, "--markdown")):
        if out and Path(out).is_dir():
            raise UserError(
                f"{flag} {out}: is a folder; give a file name, e.g. {Path(out) / 'report'}{'.json' if flag == '--json' else '.md'}"
            )
        if out:
            stores.writable(Path(out).parent, flag)  # checked before the (long) check runs
    prepared = data.prepare(spec, collect=True)
    tokenizer = models.load_tokenizer(models.resolve(spec.model.ref), spec.model.trust_remote_code)
    report = health.run(spec, prepared, tokenizer)
    health_report.render(report, console)
    for out, text in ((json_path, report.to_json), (markdown_path, report.to_markdown)):
        if out:
            try:
                Path(out).parent.mkdir(parents=True, exist_ok=True)  # a report into a new folder is fine
                Path(out).write_text(text(), encoding="utf-8")
            except OSError as e:
                raise UserError(f"cannot write {out} ({e.strerror}); choose another path") from None
    return report
