"""Validation of a prices frame before anything is trained.

Each rule has a short name; a failure raises :class:`ValidationError` whose
message names the rule and the offending dates (or rows), so an operator can
find them in the source. Structural rules (empty, columns, types) stop at the
first failure; value rules are all checked and reported together.
"""

from __future__ import annotations

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


def validate_prices(
    prices: pd.DataFrame,
    *,
    rules: Rules | None = None,
    live: bool = False,
    today: date | None = None,
) -> pd.DataFrame:
    """Return ``prices`` with numeric dtypes if every rule holds; raise :class:`ValidationError` otherwise."""
    rules = rules or Rules()
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

    found: list[Violation] = []
    nat = frame["date"].isna()
    if nat.any():
        found.append(Violation("missing_values", f"date missing or unparseable in rows {_dates(frame, nat)}"))
    for col in (*PRICE_FIELDS, "volume"):
        nan = frame[col].isna()
        if nan.any():
            found.append(Violation("missing_values", f"{col} is missing on {_dates(frame, nan)}"))
    nonpos = (frame[list(PRICE_FIELDS)] <= 0).any(axis=1)
    if nonpos.any():
        found.append(Violation("positive_prices", f"zero or negative price on {_dates(frame, nonpos)}"))
    negvol = frame["volume"] < 0
    if negvol.any():
        found.append(Violation("positive_prices", f"negative volume on {_dates(frame, negvol)}"))

    dates = frame["date"]
    dup = dates.duplicated(keep=False) & dates.notna()
    if dup.any():
        found.append(Violation("unique_dates", f"duplicate dates {_dates(frame, dup)}"))
    backwards = (dates.diff() < pd.Timedelta(0)).to_numpy()
    if backwards.any():
        found.append(Violation("sorted_dates", f"dates go backwards at {_dates(frame, backwards)}"))

    ok_dates = dates.dropna()
    if len(ok_dates) > 1 and not backwards.any():
        d = ok_dates.to_numpy().astype("datetime64[D]")
        missing_weekdays = np.busday_count(d[:-1], d[1:]) - 1
        long = np.flatnonzero(missing_weekdays > rules.max_gap_business_days)
        if len(long):
            spans = [
                f"{pd.Timestamp(d[i]).date()}..{pd.Timestamp(d[i + 1]).date()} ({missing_weekdays[i]} weekdays missing)"
                for i in long[:MAX_LISTED]
            ]
            found.append(
                Violation(
                    "max_gap",
                    f"gap longer than {rules.max_gap_business_days} business days: " + ", ".join(spans)
                    + (f" (+{len(long) - MAX_LISTED} more)" if len(long) > MAX_LISTED else ""),
                )
            )

    ret = frame["close"].pct_change()
    absurd = (ret.abs() > rules.max_abs_return).to_numpy()
    if absurd.any():
        worst = ", ".join(
            f"{frame['date'].iloc[i].date() if pd.notna(frame['date'].iloc[i]) else i} ({ret.iloc[i]:+.1%})"
            for i in np.flatnonzero(absurd)[:MAX_LISTED]
        )
        found.append(Violation("absurd_return", f"|daily return| above {rules.max_abs_return:.0%} on {worst}"))

    if len(frame) < rules.min_rows:
        found.append(
            Violation("enough_rows", f"{len(frame)} rows, need at least {rules.min_rows} for the training and evaluation windows")
        )

    if live and len(ok_dates):
        today = today or date.today()
        last = ok_dates.max().date()
        age = int(np.busday_count(last, today))
        if age > rules.max_staleness_business_days:
            found.append(
                Violation(
                    "freshness",
                    f"last bar is {last}, {age} business days before {today} "
                    f"(live mode allows {rules.max_staleness_business_days})",
                )
            )
    if found:
        raise ValidationError(found)
    frame["date"] = frame["date"].astype("datetime64[ns]")
    return frame.reset_index(drop=True)
