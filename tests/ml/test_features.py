"""Features: the unknown last label stays unknown, and no feature looks into the future."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml.features import FEATURE_COLUMNS, LABEL, WARMUP_ROWS, build_features, labeled, tomorrow_row


def test_last_row_label_is_nan_never_forced_down(market: pd.DataFrame):
    prices = market.tail(300).reset_index(drop=True)
    feats = build_features(prices)
    assert np.isnan(feats[LABEL].iloc[-1]), "next close unknown -> no label"
    assert feats[LABEL].iloc[:-1].isin([0.0, 1.0]).all()
    assert len(labeled(feats)) == len(feats) - 1
    # Labels are next-day direction.
    close = prices.set_index("date")["close"]
    t = feats.index[-5]
    assert feats.loc[t, LABEL] == float(close.shift(-1)[t] > close[t])


def test_features_at_t_do_not_change_when_future_rows_are_appended(market: pd.DataFrame):
    full = market.tail(400).reset_index(drop=True)
    past = full.iloc[:300]
    f_past = build_features(past)
    f_full = build_features(full)
    common = f_past.index
    pd.testing.assert_frame_equal(f_past[list(FEATURE_COLUMNS)], f_full.loc[common, list(FEATURE_COLUMNS)])
    # Only the label of the formerly-last row gets filled in by the future.
    pd.testing.assert_series_equal(f_past[LABEL].iloc[:-1], f_full.loc[common, LABEL].iloc[:-1])


def test_tomorrow_row_is_the_last_feature_row(market: pd.DataFrame):
    prices = market.tail(100).reset_index(drop=True)
    row, as_of = tomorrow_row(prices)
    assert as_of == prices["date"].iloc[-1].date()
    assert list(row.columns) == list(FEATURE_COLUMNS)
    pd.testing.assert_frame_equal(row, build_features(prices)[list(FEATURE_COLUMNS)].iloc[[-1]])


def test_features_are_scale_free(market: pd.DataFrame):
    prices = market.tail(120).reset_index(drop=True)
    scaled = prices.copy()
    scaled[["open", "high", "low", "close"]] *= 37.0
    a, b = build_features(prices), build_features(scaled)
    pd.testing.assert_frame_equal(a, b, rtol=1e-9)
    assert len(a) == len(prices) - (WARMUP_ROWS - 1)
