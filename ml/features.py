"""Features and label, shared by training and serving (serving imports this module).

All features are scale-free (ratios and returns, never raw price levels), so a
model trained on 2005 prices still means something on 2026 prices.

Input: a prices frame with columns ``date, open, high, low, close, volume``,
sorted by date (see ``ml.data``). Output: one row per date, indexed by date.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

# Order matters: models are trained and served on exactly these columns.
FEATURE_COLUMNS: tuple[str, ...] = (
    "ret_1",        # seed: daily return
    "ma3_ratio",    # seed: 3-day moving average, as close / MA - 1
    "ma5_ratio",    # seed: 5-day moving average, as close / MA - 1
    "vol_3",        # seed: 3-day volatility of daily returns
    "ret_5",        # 5-day momentum
    "ma20_ratio",   # distance from the 20-day moving average
    "vol_10",       # 10-day volatility
    "range_pct",    # intraday range relative to close
    "volume_ratio", # volume relative to its 20-day mean
)
LABEL = "label"  # 1.0 = next close higher, 0.0 = not higher, NaN = next close unknown
# Rows needed before the first complete feature row (longest window).
WARMUP_ROWS = 20


def _feature_frame(prices: pd.DataFrame) -> pd.DataFrame:
    close = prices["close"].astype(float)
    ret_1 = close.pct_change()
    volume = prices["volume"].astype(float)
    vol_mean = volume.rolling(20).mean()
    frame = pd.DataFrame(
        {
            "ret_1": ret_1,
            "ma3_ratio": close / close.rolling(3).mean() - 1.0,
            "ma5_ratio": close / close.rolling(5).mean() - 1.0,
            "vol_3": ret_1.rolling(3).std(),
            "ret_5": close.pct_change(5),
            "ma20_ratio": close / close.rolling(20).mean() - 1.0,
            "vol_10": ret_1.rolling(10).std(),
            "range_pct": (prices["high"].astype(float) - prices["low"].astype(float)) / close,
            # No volume (some indices report 0) means "no information", not infinity.
            "volume_ratio": (volume / vol_mean.replace(0.0, np.nan) - 1.0).fillna(0.0),
        }
    )
    frame.index = pd.DatetimeIndex(prices["date"], name="date")
    return frame.loc[:, list(FEATURE_COLUMNS)]


def build_features(prices: pd.DataFrame) -> pd.DataFrame:
    """Feature rows with their label, warm-up rows dropped.

    The label of the last row is NaN (its next close is unknown): it is never
    forced to DOWN. Use :func:`labeled` for training and evaluation.
    """
    frame = _feature_frame(prices)
    frame[LABEL] = next_day_labels(prices).to_numpy()
    return frame.iloc[WARMUP_ROWS - 1 :].dropna(subset=list(FEATURE_COLUMNS))


def next_day_labels(prices: pd.DataFrame) -> pd.Series:
    """The label of every bar, indexed by date: 1.0 if the next close is higher, 0.0 if not, NaN if unknown."""
    index = pd.DatetimeIndex(prices["date"], name="date")
    close = pd.Series(prices["close"].astype(float).to_numpy(), index=index)
    nxt = close.shift(-1)
    return pd.Series(np.where(nxt.isna(), np.nan, (nxt > close).astype(float)), index=index, name=LABEL)


def labeled(features: pd.DataFrame) -> pd.DataFrame:
    """Only the rows whose label is known."""
    return features.dropna(subset=[LABEL])


def tomorrow_row(prices: pd.DataFrame) -> tuple[pd.DataFrame, date]:
    """The single feature row that predicts the next trading day, and its as-of date.

    Raises ``ValueError`` when there are too few rows to compute every feature.
    """
    if len(prices) < WARMUP_ROWS:
        raise ValueError(f"need at least {WARMUP_ROWS} daily bars to build features, got {len(prices)}")
    tail = prices.iloc[-(WARMUP_ROWS + 5) :]
    row = _feature_frame(tail).iloc[[-1]]
    if row.isna().any(axis=None):
        raise ValueError(f"incomplete features for {row.index[-1].date()}: {row.columns[row.isna().any()].tolist()}")
    return row, row.index[-1].date()
