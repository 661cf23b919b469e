"""Validation of a prices frame before anything is trained.

Each rule has a short name; a failure raises :class:`ValidationError` whose
message names the rule and the offending dates (or rows), so an operator can
find them in the source. Structural rules (empty, columns, types) stop at the
first failure; value rules are all checked and reported together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from contract.errors import PrimerError
from ml.data import PRICE_COLUMNS

PRICE_FIELDS = ("open", "high", "low", "close")
MAX_LISTED = 5  # offending dates shown per rule


@dataclass(frozen=True)
class Violation:
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.detail}"


class ValidationError(PrimerError, ValueError):
    """The data broke one or more rules; nothing may be trained on it."""

    def __init__(self, violations: list[Violation]):
        self.violations = violations
        super().__init__("data validation failed: " + "; ".join(map(str, violations)))

    @property
    def rules(self) -> list[str]:
        return [v.rule for v in self.violations]


@dataclass(frozen=True)
class Rules:
    """Thresholds; defaults suit daily index data (SPY's worst day was about -11 %)."""

    # Weekdays allowed to be missing between two bars (holidays, the 4-day 9/11 closure).
    max_gap_business_days: int = 5
    max_abs_return: float = 0.25
    # Live mode: the last bar may be at most this many weekdays old (weekend + holiday).
    max_staleness_business_days: int = 4
    min_rows: int = 300


def _dates(frame: pd.DataFrame, mask: pd.Series | np.ndarray) -> str:
    picked = frame.loc[np.asarray(mask), "date"] if "date" in frame.columns else pd.Series(dtype="datetime64[ns]")
    items = [("NaT (unparseable)" if pd.isna(d) else d.date().isoformat()) for d in picked.head(MAX_LISTED)]
    more = len(picked) - len(items)
    rows = np.flatnonzero(np.asarray(mask))[:MAX_LISTED] + 2  # +2: CSV header and 1-based lines
    text = ", ".join(items) if items else "rows " + ", ".join(map(str, rows))
    return text + (f" (+{more} more)" if more > 0 else "")


@dataclass(frozen=True)
class Check:
    """What a value rule sees: the typed frame, the thresholds and the clock."""

    frame: pd.DataFrame
    rules: Rules
    live: bool
    today: date | None

    @property
    def dates(self) -> pd.Series:
        return self.frame["date"]

    @property
    def backwards(self) -> np.ndarray:
        return (self.dates.diff() < pd.Timedelta(0)).to_numpy()


def _missing_values(c: Check) -> list[str]:
    found = []
    nat = c.dates.isna()
    if nat.any():
        found.append(f"date missing or unparseable in rows {_dates(c.frame, nat)}")
    for col in (*PRICE_FIELDS, "volume"):
        nan = c.frame[col].isna()
        if nan.any():
            found.append(f"{col} is missing on {_dates(c.frame, nan)}")
    return found


def _positive_prices(c: Check) -> list[str]:
    found = []
    nonpos = (c.frame[list(PRICE_FIELDS)] <= 0).any(axis=1)
    if nonpos.any():
        found.append(f"zero or negative price on {_dates(c.frame, nonpos)}")
    negvol = c.frame["volume"] < 0
    if negvol.any():
        found.append(f"negative volume on {_dates(c.frame, negvol)}")
    return found


def _unique_dates(c: Check) -> list[str]:
    dup = c.dates.duplicated(keep=False) & c.dates.notna()
    return [f"duplicate dates {_dates(c.frame, dup)}"] if dup.any() else []


def _sorted_dates(c: Check) -> list[str]:
    return [f"dates go backwards at {_dates(c.frame, c.backwards)}"] if c.backwards.any() else []


def _max_gap(c: Check) -> list[str]:
    ok_dates = c.dates.dropna()
    if len(ok_dates) < 2 or c.backwards.any():  # gaps mean nothing in unsorted dates
        return []
    d = ok_dates.to_numpy().astype("datetime64[D]")
    missing_weekdays = np.busday_count(d[:-1], d[1:]) - 1
    long = np.flatnonzero(missing_weekdays > c.rules.max_gap_business_days)
    if not len(long):
        return []
    spans = [f"{pd.Timestamp(d[i]).date()}..{pd.Timestamp(d[i + 1]).date()} ({missing_weekdays[i]} weekdays missing)"
             for i in long[:MAX_LISTED]]
    more = f" (+{len(long) - MAX_LISTED} more)" if len(long) > MAX_LISTED else ""
    return [f"gap longer than {c.rules.max_gap_business_days} business days: " + ", ".join(spans) + more]


def _absurd_return(c: Check) -> list[str]:
    ret = c.frame["close"].pct_change()
    absurd = (ret.abs() > c.rules.max_abs_return).to_numpy()
    if not absurd.any():
        return []
    dates = c.frame["date"]
    worst = ", ".join(f"{dates.iloc[i].date() if pd.notna(dates.iloc[i]) else i} ({ret.iloc[i]:+.1%})"
                      for i in np.flatnonzero(absurd)[:MAX_LISTED])
    return [f"|daily return| above {c.rules.max_abs_return:.0%} on {worst}"]


def _enough_rows(c: Check) -> list[str]:
    n, need = len(c.frame), c.rules.min_rows
    return [f"{n} rows, need at least {need} for the training and evaluation windows"] if n < need else []


def _freshness(c: Check) -> list[str]:
    ok_dates = c.dates.dropna()
    if not c.live or not len(ok_dates):
        return []
    today = c.today or date.today()
    last = ok_dates.max().date()
    age = int(np.busday_count(last, today))
    if age <= c.rules.max_staleness_business_days:
        return []
    return [f"last bar is {last}, {age} business days before {today} "
            f"(live mode allows {c.rules.max_staleness_business_days})"]


# The value rules, by name, in the order they are reported; all are checked on every run.
VALUE_RULES: tuple[tuple[str, Callable[[Check], list[str]]], ...] = (
    ("missing_values", _missing_values),
    ("positive_prices", _positive_prices),
    ("unique_dates", _unique_dates),
    ("sorted_dates", _sorted_dates),
    ("max_gap", _max_gap),
    ("absurd_return", _absurd_return),
    ("enough_rows", _enough_rows),
    ("freshness", _freshness),  # live mode only
)


def _typed_frame(prices: pd.DataFrame | None) -> pd.DataFrame:
    """The structural rules (non_empty, required_columns, numeric_dtypes): the first failure stops."""
    if prices is None or len(prices) == 0:
        raise ValidationError([Violation("non_empty", "the data source returned no rows")])
    missing = [c for c in PRICE_COLUMNS if c not in prices.columns]
    if missing:
        raise ValidationError(
            [Violation("required_columns", f"missing column(s) {', '.join(missing)}; have {list(prices.columns)}")]
        )
    frame = prices.loc[:, list(PRICE_COLUMNS)].copy()
    if not pd.api.types.is_datetime64_any_dtype(frame["date"]):
        frame["date"] = pd.to_datetime(frame["date"], errors="coerce")
    bad_types = []
    for col in (*PRICE_FIELDS, "volume"):
        converted = pd.to_numeric(frame[col], errors="coerce")
        not_numeric = converted.isna() & frame[col].notna()
        if not_numeric.any():
            bad_types.append(f"{col} at {_dates(frame, not_numeric)}")
        frame[col] = converted.astype(float)
    if bad_types:
        raise ValidationError([Violation("numeric_dtypes", "non-numeric values in " + "; ".join(bad_types))])
    return frame


def validate_prices(
    prices: pd.DataFrame,
    *,
    rules: Rules | None = None,
    live: bool = False,
    today: date | None = None,
) -> pd.DataFrame:
    """Return ``prices`` with numeric dtypes if every rule holds; raise :class:`ValidationError` otherwise."""
    frame = _typed_frame(prices)
    check = Check(frame, rules or Rules(), live, today)
    found = [Violation(name, detail) for name, rule in VALUE_RULES for detail in rule(check)]
    if found:
        raise ValidationError(found)
    frame["date"] = frame["date"].astype("datetime64[ns]")
    return frame.reset_index(drop=True)
