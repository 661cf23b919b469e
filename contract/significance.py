"""The gate's paired test: is one forecaster's per-day loss lower than another's, on the same days?

Diebold–Mariano (1995) on the per-day loss differences, with a Newey–West (HAC) long-run
variance because consecutive days are not independent (volatility clusters, and a model
refitted once per fold makes related errors on neighbouring days), the Harvey–Leybourne–
Newbold small-sample form (Student t with n-1 degrees of freedom). One-sided: the question
is only ever "is the challenger better?".

Here in ``contract`` (numpy and scipy only) because the pipeline (``ml``) computes the
evidence and the gate (``promotion``) decides on it with its policy's level; neither may
import the other.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from contract.errors import PrimerError

DIEBOLD_MARIANO = "diebold_mariano"
TESTS = (DIEBOLD_MARIANO,)
# The defaults the policy file states and justifies (promotion/policy.yaml); one copy here.
DEFAULT_LEVEL = 0.05
DEFAULT_MIN_EFFECT = 0.002  # nats per day of mean log loss
POWER = 0.80  # the power the minimum detectable effect is quoted at
CI_LEVEL = 0.95  # the two-sided interval printed beside the one-sided decision


class SignificanceError(PrimerError, ValueError):
    """The two loss series cannot be compared (different lengths, too few rows, not finite)."""


@dataclass(frozen=True)
class GateSpec:
    """What the policy says a promotion needs: the test, its one-sided level, the minimum effect."""

    test: str = DIEBOLD_MARIANO
    level: float = DEFAULT_LEVEL
    min_effect: float = DEFAULT_MIN_EFFECT


@dataclass(frozen=True)
class PairedTest:
    """How much lower the challenger's mean loss is than the other's, with its uncertainty.

    ``improvement`` is mean(other loss - challenger loss) per day: positive means the
    challenger is better. ``bound`` is the one-sided lower confidence bound at ``level``;
    ``ci_low``..``ci_high`` the two-sided 95 % interval; ``p_value`` is one-sided
    (H0: the challenger is not better); ``mde`` the smallest true improvement this many
    rows detect with 80 % power at ``level``.
    """

    test: str
    rows: int
    improvement: float
    std_error: float
    lags: int
    p_value: float
    level: float
    bound: float
    ci_low: float
    ci_high: float
    mde: float

    def passes(self, min_effect: float) -> bool:
        """The gate's rule: the bound says better, and the estimate meets the minimum effect."""
        return self.bound > 0 and self.improvement > 0 and self.improvement >= min_effect - 1e-12

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def newey_west_lags(rows: int) -> int:
    """Newey and West's (1994) automatic bandwidth, floor(4 (n/100)^(2/9)): 6 lags at 1,000 rows."""
    return int(math.floor(4 * (rows / 100) ** (2 / 9)))


def long_run_variance(d: np.ndarray, lags: int) -> float:
    """Newey–West (Bartlett kernel) long-run variance of a series around its mean."""
    x = d - d.mean()
    n = len(x)
    variance = float(x @ x) / n
    for k in range(1, min(lags, n - 1) + 1):
        variance += 2 * (1 - k / (lags + 1)) * float(x[k:] @ x[:-k]) / n
    return max(variance, 0.0)


def paired_test(challenger_loss: Any, other_loss: Any, *, level: float = DEFAULT_LEVEL,
                test: str = DIEBOLD_MARIANO) -> PairedTest:
    """Diebold–Mariano with HAC variance on identical rows; see the module docstring."""
    from scipy import stats  # here, not at import: the CLI and the service load this module

    if test not in TESTS:
        raise SignificanceError(f"unknown test {test!r}; known: {', '.join(TESTS)}")
    if not 0 < level < 0.5:
        raise SignificanceError(f"level must be in (0, 0.5), got {level!r}")
    a, b = np.asarray(challenger_loss, dtype=float), np.asarray(other_loss, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise SignificanceError(f"the two loss series must cover the same rows; got {a.shape} and {b.shape}")
    if len(a) < 3 or not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise SignificanceError(f"need at least 3 finite per-day losses on each side, got {len(a)}")
    d = b - a
    n = len(d)
    lags = newey_west_lags(n)
    mean = float(d.mean())
    se = math.sqrt(long_run_variance(d, lags) / n)
    df = n - 1
    t_level, t_ci, t_power = (float(stats.t.ppf(q, df)) for q in (1 - level, 0.5 + CI_LEVEL / 2, POWER))
    if se > 0:
        p_value = float(stats.t.sf(mean / se, df))
    else:  # identical losses every day (the same recipe): no evidence either way
        p_value = 0.0 if mean > 0 else 1.0
    return PairedTest(test=test, rows=n, improvement=mean, std_error=se, lags=lags, p_value=p_value,
                      level=level, bound=mean - t_level * se, ci_low=mean - t_ci * se, ci_high=mean + t_ci * se,
                      mde=(t_level + t_power) * se)
