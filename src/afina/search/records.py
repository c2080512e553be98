"""The study's own records, typed, and the one place that reads and writes them.

A sweep keeps four results beside its trials, as Optuna study user attrs (JSON, so every worker and
`afina status` on another machine sees them without MLflow): the refit, the default-run reference,
the did-it-pay verdict and the data verdicts. Each is a dataclass here; `load` takes what a stored
attr holds (fields a newer or older afina wrote are dropped or defaulted, so an old study still
opens) and `save` writes one back. A record reads like the JSON it is stored as (`record["steps"]`),
which keeps the callers that index it, and the stored form, unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    import optuna


@dataclass
class _Record:
    ATTR: ClassVar[str]  # the study user attr it is stored under

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


@dataclass
class Refit(_Record):
    """The refit (search/winner_refit.py): the winner's configuration trained for the rest of the budget."""

    ATTR: ClassVar[str] = "refit"
    of: int = -1  # the trial it retrains
    of_run_id: str = ""
    steps: int = 0
    state: str = ""  # RUNNING | COMPLETE | FAIL | INTERRUPTED
    worker: str = ""  # who trains it (training/resume.py's worker id), and its last heartbeat
    beat: float | None = None
    run_id: str = ""
    values: list[float] = field(default_factory=list)  # one per objective, as the study's trials
    results: dict[str, float] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)  # rows or prompts behind each result
    resumed_from: str = ""
    reason: str = ""  # why it failed


@dataclass
class Reference(_Record):
    """The default-run reference (baselines/default_run.py): one run with the method's defaults at the sweep's steps."""

    ATTR: ClassVar[str] = "reference"
    run_id: str = ""
    steps: int = 0
    results: dict[str, float] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)


@dataclass
class Payoff(_Record):
    """Did the sweep pay for itself (baselines/payoff.py): its model against the reference, metric by metric."""

    ATTR: ClassVar[str] = "paid"
    model: str = ""  # "refit of trial N" or "trial N"
    run_id: str = ""
    reference_run_id: str = ""
    sweep_steps: int = 0
    reference_steps: int | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)  # {metric, objective, sweep, reference, diff, se, n, verdict}
    objective: str = ""
    beat_objective: bool = False
    beat_all: bool = False


@dataclass
class Verdicts(_Record):
    """What the data did (attribution/ablation.py): the controlled ablation, the regression across trials, the
    predicted mixture, or the plan of the ablation that would decide. Each part keeps the shape its producer gives
    it (attribution/ablation.py `summarize`, attribution/verdicts.py `regression` and `best_mixture`)."""

    ATTR: ClassVar[str] = "verdicts"
    spec_path: str = ""
    objective: str = ""
    ablation: dict[str, Any] | None = None
    regression: dict[str, Any] | None = None
    mixture: dict[str, Any] | None = None
    plan: dict[str, Any] | None = None


R = TypeVar("R", bound=_Record)


def parse(kind: type[R], raw: dict[str, Any] | _Record | None) -> R | None:
    """A record from its stored form (None for nothing stored)."""
    if isinstance(raw, kind):
        return raw
    if not raw:
        return None
    raw = asdict(raw) if isinstance(raw, _Record) else raw
    known = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in raw.items() if k in known})


def load(study: optuna.Study, kind: type[R]) -> R | None:
    """The study's record of this kind, None before one was written."""
    return parse(kind, study.user_attrs.get(kind.ATTR))


def save(study: optuna.Study, record: _Record) -> None:
    study.set_user_attr(record.ATTR, stored(record))


def stored(record: _Record) -> dict[str, Any]:
    """The JSON form kept on the study (and given to a heartbeat that rewrites it)."""
    return asdict(record)
