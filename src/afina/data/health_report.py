"""The data check's report (data/health.py fills it): JSON and markdown for MLflow, a table for the terminal."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from afina import tracking
from afina.data.chat_rows import Issue

if TYPE_CHECKING:
    from mlflow import MlflowClient

BARS = " ▁▂▃▄▅▆▇█"


@dataclass
class Report:
    issues: list[Issue] = field(default_factory=list)
    slices: dict[str, dict[str, Any]] = field(default_factory=dict)
    max_length: int | None = None
    longest: int = 0  # right edge of every slice's histogram, so they compare

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "warning"]

    def summary(self) -> str:
        return f"{len(self.errors)} errors, {len(self.warnings)} warnings"

    def to_json(self) -> str:
        return json.dumps(
            {"summary": self.summary(), "max_length": self.max_length, "slices": self.slices, "issues": [asdict(i) for i in self.issues]},
            indent=2,
            ensure_ascii=False,
        )

    def to_markdown(self, per_kind: int = 50) -> str:
        out = [
            f"# afina check: {self.summary()}",
            "",
            f"max_length: {self.max_length}",
            "",
            "| slice | rows | tokens min | median | p95 | max | truncated | language |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, s in self.slices.items():
            t = s.get("tokens") or {}
            out.append(
                f"| {name} | {s['rows']} | {t.get('min', '')} | {t.get('median', '')} | {t.get('p95', '')} | {t.get('max', '')} "
                f"| {s.get('truncated', '')} | {s.get('language', '')} |"
            )
        for kind, items in _by_kind(self.issues).items():
            out += ["", f"## {items[0].level}: {kind} ({len(items)})", "", "| where | field | problem |", "|---|---|---|"]
            out += [f"| {i.where} | {i.field} | {i.message.replace('|', '/')} |" for i in items[:per_kind]]
            if len(items) > per_kind:
                out.append(f"| … | | {len(items) - per_kind} more in report.json |")
        return "\n".join(out) + "\n"


def _bars(hist: list[int]) -> str:
    peak = max(hist) or 1
    return "".join(BARS[0 if not h else max(1, round(h * (len(BARS) - 1) / peak))] for h in hist)


def _by_kind(issues: list[Issue]) -> dict[str, list[Issue]]:
    groups: dict[str, list[Issue]] = {}
    for i in sorted(issues, key=lambda i: i.level != "error"):
        groups.setdefault(f"{i.kind}", []).append(i)
    return groups


def render(report: Report, console, per_kind: int = 5, table: bool = True) -> None:
    """The terminal view: per-slice stats with a length histogram, then problems grouped by kind."""
    from rich.table import Table

    if table:
        lang = any("language" in s for s in report.slices.values())
        t = Table(title=f"tokens per row after the chat template · max_length {report.max_length}", title_justify="left")
        for j, col in enumerate(
            ("slice", "rows", "min", "median", "p95", "max", "cut", f"0…{report.longest}", *(["language"] if lang else []))
        ):
            t.add_column(col, justify="left" if j in (0, 7, 8) else "right", no_wrap=True)
        for name, s in report.slices.items():
            tok = s.get("tokens") or {}
            t.add_row(
                name,
                str(s["rows"]),
                *(str(tok.get(k, "")) for k in ("min", "median", "p95", "max")),
                str(s.get("truncated", "")),
                _bars(s["histogram"]) if "histogram" in s else "",
                *([s.get("language", "")] if lang else []),
            )
        console.print(t)
    for kind, items in _by_kind(report.issues).items():
        style = "red" if items[0].level == "error" else "yellow"
        console.print(f"[{style}]{items[0].level}[/] {kind}: {len(items)}")
        for i in items[:per_kind]:
            console.print(f"  {i}", markup=False, highlight=False, soft_wrap=True)
        if len(items) > per_kind:
            console.print(f"  … and {len(items) - per_kind} more")
    style = "red" if report.errors else "yellow" if report.warnings else "green"
    console.print(f"[{style}]check: {report.summary()}[/]")


def log(report: Report, client: MlflowClient, run_id: str) -> None:
    """The report as MLflow artifacts of a run (the sweep's parent run)."""
    client.log_text(run_id, report.to_json(), "check/report.json")
    client.log_text(run_id, report.to_markdown(), "check/report.md")
    client.set_tag(run_id, tracking.CHECK, report.summary())
