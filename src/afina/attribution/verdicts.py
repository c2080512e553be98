"""Which data helped and which hurt, with the evidence: pure statistics, no MLflow or Optuna writes.

- `paired`: the effect of a change measured on k paired seeds (same seed with and without the
  change). Mean difference and a paired t-interval, 95 % (scipy.stats.t): with k of 3 to 10 the
  t-interval is exact for normal noise, where a bootstrap of 3 differences has only 10 distinct
  resamples and far too narrow an interval.
- `noise_floor`: how far one fixed configuration moves across seeds (sample standard deviation).
  A mean difference smaller than that is never called an effect, whatever its interval says.
- `regression`: across the sweep's own trials, a linear model of the objective on the slice choices
  and hyperparameters (scikit-learn on standardized features), with OLS t-intervals for each slice's
  coefficient. It refuses to give an effect when the trials are too few (n < features + 3), when a slice
  was never varied, or when its choice moved together with another parameter (|r| >= 0.8).
- `best_mixture`: the RegMix idea (data mixture as regression): the same kind of model over the searched
  slice weights/fractions, evaluated across their bounds, predicts the best mixture.

Every verdict carries n and its interval; "helps"/"hurts" follows the metric's direction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from itertools import product

import numpy as np

from afina.spec.trained import sense

LEVEL = 0.95
METHOD = "paired t-interval, 95 %"
CONFOUNDED = 0.8  # |correlation| between two searched parameters across the trials


@dataclass
class Effect:
    """One measured difference: `delta` = mean of (more of the slice) - (less of it)."""

    metric: str
    n: int
    delta: float
    lo: float
    hi: float
    verdict: str  # helps | hurts | no clear effect | higher | lower | too few trials | confounded | never varied
    why: str = ""
    noise: float | None = None
    method: str = METHOD

    def text(self) -> str:
        if self.verdict in ("too few trials", "confounded", "never varied"):
            return f"{self.metric}: {self.verdict} ({self.why})"
        interval = f"[{self.lo:+.3g}, {self.hi:+.3g}]" if math.isfinite(self.lo) else "[no interval]"
        return f"{self.metric} {self.delta:+.3g} {interval} n={self.n} → {self.verdict}" + (f" ({self.why})" if self.why else "")

    def as_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def direction(metric: str, known: dict[str, str] | None = None) -> str | None:
    """minimize / maximize (the spec's rule: *loss, *runtime, *tokens, *unparsed are minimized), None when neutral."""
    if known and metric in known:
        return known[metric]
    return sense(metric)


def judge(metric: str, n: int, delta: float, lo: float, hi: float, sense: str | None, noise: float | None = None, why: str = "") -> Effect:
    """The verdict of a difference with its interval: an effect only when the interval excludes 0
    and the difference is at least the noise floor."""
    verdict = "no clear effect"
    if n < 2 or not math.isfinite(lo):
        why = why or f"n={n}: no interval"
    elif lo <= 0 <= hi:
        why = why or "the interval includes 0"
    elif noise is not None and abs(delta) < noise:
        why = f"smaller than the noise floor {noise:.3g}"
    elif sense is None:
        verdict = "higher" if delta > 0 else "lower"
    else:
        verdict = "helps" if (delta < 0) == (sense == "minimize") else "hurts"
    return Effect(metric, n, delta, lo, hi, verdict, why, noise)


def paired(
    more: list[float], less: list[float], metric: str, sense: str | None, noise: float | None = None, level: float = LEVEL
) -> Effect:
    """Effect of a change from k paired seeds: d_i = more_i - less_i, mean and t-interval of d."""
    from scipy import stats

    d = np.asarray(more, float) - np.asarray(less, float)
    d = d[np.isfinite(d)]
    n = len(d)
    if n == 0:
        return judge(metric, 0, math.nan, -math.inf, math.inf, sense, noise, "no paired measurements")
    mean = float(d.mean())
    if n < 2:
        return judge(metric, n, mean, -math.inf, math.inf, sense, noise)
    half = float(stats.t.ppf((1 + level) / 2, n - 1) * d.std(ddof=1) / math.sqrt(n))
    return judge(metric, n, mean, mean - half, mean + half, sense, noise)


def noise_floor(values: list[float]) -> tuple[float | None, int]:
    """(sample standard deviation, n) of one configuration's metric across seeds; None below 2 seeds."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], float)
    return (float(v.std(ddof=1)) if len(v) >= 2 else None), len(v)


# --- across the sweep's trials ---------------------------------------------------------------------


def encode(space: dict, params: dict) -> dict[str, float]:
    """One number per searched parameter: include -> 0/1, log-scaled ranges -> log10, numeric choices as is.
    Non-numeric categorical choices are left out of the model (say so in the report)."""
    out = {}
    for key, dim in space.items():
        v = params.get(key)
        if v is None:
            continue
        if isinstance(v, bool):
            out[key] = float(v)
        elif isinstance(v, (int, float)):
            out[key] = math.log10(v) if dim.log and v > 0 else float(v)
    return out


def slice_keys(space: dict) -> list[str]:
    return [k for k in space if k.startswith("slices.")]


def _span(dim) -> float:
    """The change the reported effect is for: include false->true, a weight/fraction from its low to its high bound."""
    bounds = dim.float or dim.int
    if bounds:
        return float(bounds[1] - bounds[0])
    nums = [c for c in dim.categorical if isinstance(c, (int, float)) and not isinstance(c, bool)]
    return float(max(nums) - min(nums)) if nums else 1.0


def _ols(X: np.ndarray, y: np.ndarray):
    """Linear fit on standardized features (scikit-learn); returns raw-unit coefficients, their standard errors, dof."""
    from sklearn.linear_model import LinearRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(X)
    Z = scaler.transform(X)
    fit = LinearRegression().fit(Z, y)
    n, p = Z.shape
    dof = n - p - 1
    resid = y - fit.predict(Z)
    sigma2 = float(resid @ resid) / dof if dof > 0 else math.nan
    A = np.column_stack([np.ones(n), Z])
    cov = sigma2 * np.linalg.pinv(A.T @ A)
    se = np.sqrt(np.clip(np.diag(cov)[1:], 0, None)) / scaler.scale_
    return fit.coef_ / scaler.scale_, se, dof, fit, scaler


def regression(trials: list[tuple[dict, float]], space: dict, metric: str, sense: str | None, noise: float | None = None) -> dict:
    """Each searched slice's marginal effect on the objective across completed trials (params, value)."""
    from scipy import stats

    rows = [(encode(space, p), v) for p, v in trials if v is not None and math.isfinite(v)]
    keys = [k for k in space if rows and all(k in r for r, _ in rows)]
    n = len(rows)
    X = np.array([[r[k] for k in keys] for r, _ in rows], float).reshape(n, len(keys))
    y = np.array([v for _, v in rows], float)
    varied = [j for j in range(len(keys)) if n > 1 and np.ptp(X[:, j]) > 0]
    out: dict = {
        "n": n,
        "features": [keys[j] for j in varied],
        "metric": metric,
        "method": "linear model, OLS t-interval, 95 %",
        "effects": {},
    }
    corr = np.corrcoef(X[:, varied], rowvar=False).reshape(len(varied), len(varied)) if len(varied) > 1 and n > 2 else None
    need = len(varied) + 3
    coef = se = None
    if n >= need:
        coef, se, dof, *_ = _ols(X[:, varied], y)
    for key in slice_keys(space):
        if key not in keys:
            out["effects"][key] = judge(metric, n, math.nan, -math.inf, math.inf, sense, why="not a number").as_dict()
            continue
        j = keys.index(key)
        if j not in varied:
            e = Effect(
                metric,
                n,
                math.nan,
                -math.inf,
                math.inf,
                "never varied",
                f"every trial had {key}={_show(X[0, j] if n else None, space[key])}",
            )
        elif n < need:
            e = Effect(
                metric,
                n,
                math.nan,
                -math.inf,
                math.inf,
                "too few trials",
                f"n={n} trials for {len(varied)} searched parameters; need {need}",
            )
        else:
            i = varied.index(j)
            mates = [
                (keys[varied[m]], float(corr[i, m]))
                for m in range(len(varied))
                if m != i and corr is not None and abs(corr[i, m]) >= CONFOUNDED
            ]
            span = _span(space[key])
            delta, half = float(coef[i] * span), float(stats.t.ppf((1 + LEVEL) / 2, dof) * se[i] * span)
            if mates:
                k2, r = max(mates, key=lambda m: abs(m[1]))
                e = Effect(metric, n, delta, -math.inf, math.inf, "confounded", f"moved together with {k2} (r={r:+.2f}) across the trials")
            else:
                e = judge(metric, n, delta, delta - half, delta + half, sense, noise)
                e.method = out["method"]
        out["effects"][key] = e.as_dict()
    return out


def _show(v, dim) -> str:
    if v is None:
        return "?"
    if dim.categorical and set(dim.categorical) <= {True, False}:
        return str(bool(v)).lower()
    return f"{10**v:.3g}" if dim.log else f"{v:.3g}"


def best_mixture(trials: list[tuple[dict, float]], space: dict, sense: str | None, at: dict) -> dict | None:
    """RegMix over the searched slice weights/fractions: fit the objective on every searched parameter
    (squares of the mixture terms too, when the trials allow), hold the others at `at` (the best trial's
    params), and return the mixture with the best prediction on a grid within the searched bounds."""
    mix = [k for k in slice_keys(space) if not k.endswith(".include") and (space[k].float or space[k].int)]
    rows = [(encode(space, p), v) for p, v in trials if v is not None and math.isfinite(v)]
    keys = [k for k in space if rows and all(k in r for r, _ in rows) and np.ptp([r[k] for r, _ in rows]) > 0]
    if not mix or not all(k in keys for k in mix):
        return None
    n, quad = len(rows), len(rows) >= len(keys) + len(mix) + 3
    if n < len(keys) + 3:
        return {"verdict": "too few trials", "n": n, "need": len(keys) + 3}

    def design(rs: list[dict]) -> np.ndarray:
        X = np.array([[r[k] for k in keys] for r in rs], float)
        return np.column_stack([X, *(X[:, keys.index(k)] ** 2 for k in mix)]) if quad else X

    _, _, _, fit, scaler = _ols(design([r for r, _ in rows]), np.array([v for _, v in rows], float))
    fixed = encode(space, at)
    steps = max(3, int(round(4000 ** (1 / len(mix)))))  # about 4000 candidate mixtures in all
    axes = []
    for k in mix:
        lo, hi = space[k].float or space[k].int
        axes.append(np.linspace(encode(space, {k: lo})[k], encode(space, {k: hi})[k], steps).tolist())
    cands = [{**fixed, **dict(zip(mix, point, strict=True))} for point in product(*axes)]
    pred = fit.predict(scaler.transform(design(cands)))
    best = int(np.argmin(pred) if sense != "maximize" else np.argmax(pred))
    return {
        "weights": {k: round(10 ** cands[best][k] if space[k].log else cands[best][k], 3) for k in mix},
        "predicted": float(pred[best]),
        "at_best_trial": {k: at.get(k) for k in mix},
        "predicted_at_best_trial": float(fit.predict(scaler.transform(design([fixed])))[0]),
        "model": "linear + squares of the mixture terms" if quad else "linear (extremes only: too few trials for curvature)",
        "n": n,
    }
