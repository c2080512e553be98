"""`afina status`: the leaderboard of the spec's study, and where its report is."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from afina.attribution import data_section
from afina.baselines import payoff
from afina.reporting import leaderboard, report
from afina.search import records
from afina.search import study as study_mod

if TYPE_CHECKING:
    from afina.spec.schema import Spec


def run(spec: Spec, console, as_json: bool = False) -> None:
    study = study_mod.open(spec)
    if as_json:  # for scripts and CI: plain JSON on stdout, nothing else
        print(json.dumps(leaderboard.as_dict(study), indent=1))
        return
    data_section.render(console, records.load(study, records.Verdicts))  # "What your data did" comes first
    console.print(leaderboard.table(study))
    for line in payoff.lines(study):  # the refit, and whether the sweep beat a default run of equal compute
        console.print(line)
    if report.path(spec).is_file():
        console.print(f"Report: {report.path(spec)} (also report.html on the sweep's MLflow run)")
