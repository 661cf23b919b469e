"""Drift (ml/drift.py): quiet on stationary markets, fires on regime changes, skew from adjusted bars.

Bars come through the project's source interface (``synthetic:SEED`` and ``csv:PATH`` files
of the same bars with a regime planted, tests/perf/bench_drift.py's builders); thresholds
from the repository's promotion/monitoring.yaml. The rates behind these thresholds are
measured by the benchmark, not here: these tests check behaviour on fixed seeds.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from contract.live_report import DRIFT_CHECKS, LiveReport
from contract.monitoring import Monitoring, MonitoringError, load_monitoring, parse_monitoring
from ml.data import load_prices
from ml.drift import (
    DriftError,
    drift_from_features,
    drift_status,
    label_dependence,
    psi,
    served_rows,
    training_window,
    up_rate_test,
)
from ml.features import FEATURE_COLUMNS, LABEL, build_features, labeled
from tests.perf.bench_drift import dividend_adjusted, up_rate_regime, via_csv, volatility_regime
from tests.support import register_tiny_version

REPO = Path(__file__).resolve().parents[2]
THRESHOLDS = load_monitoring(REPO / "promotion" / "monitoring.yaml")
END = date(2024, 12, 31)
TRAIN_ROWS = 2520
SEEDS = (5, 9, 11)
WARMUP_PRICE_ROWS = 19  # build_features' first row is price row 19


def _cut(features: pd.DataFrame, train_end_row: int) -> dict[str, date]:
    """Training: TRAIN_ROWS rows ending at ``train_end_row``; anchor: drift_window_days rows later."""
    dates = features.index
    return {"train_start": dates[train_end_row - TRAIN_ROWS + 1].date(), "train_end": dates[train_end_row].date(),
            "anchor": dates[train_end_row + THRESHOLDS.drift_window_days].date()}


def _status(now: pd.DataFrame, train_end_row: int, served_from: pd.DataFrame | None = None):
    features = build_features(now)
    window = _cut(features, train_end_row)
    recent_dates = features.index[train_end_row + 1: train_end_row + 1 + THRESHOLDS.drift_window_days]
    served = (build_features(served_from) if served_from is not None else features).loc[recent_dates]
    return drift_from_features(features, served=served.drop(columns=LABEL), thresholds=THRESHOLDS, **window)


def _change_row(prices: pd.DataFrame) -> int:
    """Feature row where the training window ends (the regime changes on the next row)."""
    return len(build_features(prices)) - THRESHOLDS.drift_window_days - 40


@pytest.mark.parametrize("seed", SEEDS)
def test_a_stationary_market_raises_no_alert(seed: int):
    prices = load_prices(f"synthetic:{seed}", end=END)
    status = _status(prices, _change_row(prices))
    assert set(status.alerts) == set(DRIFT_CHECKS)
    assert not status.alerting, status
    assert status.window_days == THRESHOLDS.drift_window_days
    assert status.features_p_value is not None and status.features_p_value >= THRESHOLDS.psi_level
    # Yet a fixed PSI threshold would have fired: 60 days of a clustered market are far from 10 years.
    assert max(status.psi.values()) >= THRESHOLDS.psi_alert
    assert status.skew == 0.0 and status.skew_rows == THRESHOLDS.drift_window_days


@pytest.mark.parametrize("seed", SEEDS)
def test_four_times_the_volatility_fires_the_feature_check(seed: int, tmp_path: Path):
    """x4, not x3: over 10 years a clustered market's own volatility swings about as much as x2-x3,
    so those are caught in some windows only (bench_drift: x2 ~1/3, x3 ~3/4 of them)."""
    prices = load_prices(f"synthetic:{seed}", end=END)
    row = _change_row(prices)
    changed = via_csv(volatility_regime(prices, row + 1 + WARMUP_PRICE_ROWS, 4.0), tmp_path, "vol")
    status = _status(changed, row)
    assert status.alerts["features"], status
    assert status.features_p_value is not None and status.features_p_value < THRESHOLDS.psi_level
    assert status.psi["vol_10"] > _status(prices, row).psi["vol_10"]
    assert not status.alerts["skew"]  # the service saw the same (changed) bars


def test_a_higher_up_rate_fires_the_label_check(tmp_path: Path):
    prices = load_prices("synthetic:3", end=END)
    row = _change_row(prices)
    changed = via_csv(up_rate_regime(prices, row + 1 + WARMUP_PRICE_ROWS, 0.8), tmp_path, "up")
    status = _status(changed, row)
    assert status.up_rate_recent > 0.8 > 0.6 > status.up_rate_training
    assert status.up_rate_p_value < THRESHOLDS.up_rate_level and status.alerts["up_rate"]


def test_the_up_rate_test():
    half = pd.Series([1.0, 0.0] * 500)
    same, p_same = up_rate_test(half, pd.Series([1.0, 0.0] * 30 + [np.nan]))[1:]
    assert same == 0.5 and p_same == 1.0  # unknown labels ignored
    training, recent, p = up_rate_test(half, pd.Series([1.0] * 50 + [0.0] * 10))
    assert (training, recent) == (0.5, 50 / 60) and p < 1e-4
    # Fewer days, same share: less evidence.
    assert up_rate_test(half, pd.Series([1.0] * 5 + [0.0]))[2] > p
    with pytest.raises(DriftError, match="known labels"):
        up_rate_test(half, pd.Series([np.nan]))


def test_the_up_rate_test_widens_for_labels_that_come_in_runs():
    """UP days following UP days (momentum): a window's up-rate swings more than coin flips', so the
    same gap is weaker evidence."""
    recent = pd.Series([1.0] * 45 + [0.0] * 15)
    flips = pd.Series([1.0, 0.0] * 500)
    runs = pd.Series(([1.0] * 10 + [0.0] * 10) * 50)
    assert label_dependence(flips.to_numpy()) == 1.0  # alternating: rho < 0, no credit taken
    assert label_dependence(runs.to_numpy()) > 5
    assert up_rate_test(runs, recent)[2] > 0.1 > 0.01 > up_rate_test(flips, recent)[2]


def test_a_dividend_adjustment_of_earlier_bars_is_skew(tmp_path: Path):
    """The service scored rows from the bars it had; the source later adjusts every bar before a
    dividend's ex-date: rows whose windows span the ex-date are rebuilt differently."""
    before = load_prices("synthetic:3", end=END)
    row = _change_row(before)
    ex_row = row + 1 + WARMUP_PRICE_ROWS + 30  # 30 rows into the recent window
    now = via_csv(dividend_adjusted(before, ex_row, 0.005), tmp_path, "dividend")
    status = _status(now, row, served_from=before)
    assert status.alerts["skew"] and status.skew is not None
    assert status.skew > 1e-3 > THRESHOLDS.skew_alert  # ret_1 on the ex-date moved by about the yield
    assert status.skew_rows == THRESHOLDS.drift_window_days
    # Identical rows: no skew at all.
    assert _status(before, row).skew == 0.0


def test_served_rows_from_the_logged_json():
    row = {c: 0.01 * i for i, c in enumerate(FEATURE_COLUMNS)}
    frame = served_rows(["2024-06-03", "2024-06-04"], [json.dumps(row), json.dumps({**row, "ret_1": -1.0})])
    assert list(frame.columns) == list(FEATURE_COLUMNS) and frame.index[0] == pd.Timestamp("2024-06-03")
    assert frame.loc["2024-06-04", "ret_1"] == -1.0
    with pytest.raises(DriftError, match="lack vol_3"):
        served_rows(["2024-06-03"], [json.dumps({k: v for k, v in row.items() if k != "vol_3"})])


def test_skew_without_a_served_row_in_the_recent_window_is_none():
    prices = load_prices("synthetic:3", end=END)
    features = build_features(prices)
    row = _change_row(prices)
    served = features.iloc[:5].drop(columns=LABEL)  # answers from long before the recent window
    status = drift_from_features(features, served=served, thresholds=THRESHOLDS, **_cut(features, row))
    assert status.skew is None and status.skew_rows == 0 and not status.alerts["skew"]
    # The status survives the live report's JSON.
    report = LiveReport(model_version=3, as_of="2024-06-03", scored_days=0, rolling_days=20, scores={},
                        versus_climatology=None, demotion_warranted=False, drift=status, updated_at="now")
    assert LiveReport.from_json(report.to_json()) == report


def test_psi_of_the_same_distribution_is_small_and_of_a_shifted_one_large():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=5000)
    assert psi(reference, rng.normal(size=5000), 10) < 0.01
    assert psi(reference, rng.normal(loc=1.0, size=5000), 10) > 0.5
    # Every recent value beyond the reference's range: one bin holds all, smoothing keeps it finite.
    assert np.isfinite(psi(reference, np.full(60, 100.0), 10))


def test_a_training_window_too_short_to_calibrate_reports_psi_but_never_alerts():
    features = labeled(build_features(load_prices("synthetic:3", end=END)))
    training, recent = features.iloc[-200:-60], features.iloc[-60:]
    status = drift_status(training, recent, recent.drop(columns=LABEL), THRESHOLDS)
    assert status.features_p_value is None and not status.alerts["features"]
    assert set(status.psi) == set(FEATURE_COLUMNS)


def test_bad_inputs_are_one_clear_error():
    features = labeled(build_features(load_prices("synthetic:3", end=END)))
    training, recent = features.iloc[-2000:-60], features.iloc[-60:]
    with pytest.raises(DriftError, match="training rows lack column.*label"):
        drift_status(training.drop(columns=LABEL), recent, recent, THRESHOLDS)
    with pytest.raises(DriftError, match="rows in both windows"):
        drift_status(training, recent.iloc[:0], recent, THRESHOLDS)
    with pytest.raises(DriftError, match="history rows must hold the training rows"):
        drift_status(training, recent, recent, THRESHOLDS, history=training.iloc[100:])


def test_thresholds_come_from_promotion_monitoring_yaml():
    text = (REPO / "promotion" / "monitoring.yaml").read_text()
    assert THRESHOLDS == parse_monitoring(text)
    for key in ("drift_window_days", "psi_bins", "psi_level", "psi_alert", "up_rate_level", "skew_alert"):
        assert f"\n{key}: " in text, f"{key} is not set (and argued) in promotion/monitoring.yaml"
    assert parse_monitoring("psi_level: 0.05\npsi_bins: 5\n") == Monitoring(psi_level=0.05, psi_bins=5)


@pytest.mark.parametrize(("text", "message"), [
    ("psi_level: 0.7", "psi_level must be a number between 0 and 0.5, got 0.7"),
    ("psi_level: 0", "psi_level must be a number between 0 and 0.5, got 0"),
    ("psi_bins: 0", "psi_bins must be an integer >= 1, got 0"),
    ("psi_alert: -1", "psi_alert must be a number >= 0, got -1"),
    ("skew_alert: .nan", "skew_alert must be a number >= 0"),
    ("up_rate_level: yes", "up_rate_level must be a number between 0 and 0.5, got True"),
    ("psi_treshold: 0.2", "unknown key(s) psi_treshold"),
])
def test_bad_thresholds_are_one_clear_error(text: str, message: str):
    with pytest.raises(MonitoringError) as err:
        parse_monitoring(text, "monitoring.yaml")
    assert str(err.value).startswith("monitoring.yaml: ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_version_without_a_recorded_training_window_is_a_clear_error(mlflow_server):
    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment = client.create_experiment(f"drift-{np.random.default_rng().integers(1 << 30)}")
    version, _ = register_tiny_version(mlflow_server.uri, experiment)
    with pytest.raises(DriftError, match=rf"v{version}: its training run records no usable train_start"):
        training_window(client, version)


@pytest.mark.slow
def test_training_window_is_the_final_fit_of_a_trained_version(mlflow_server, trainer_factory, fast_grid: Path):
    train = trainer_factory(mlflow_server.uri)
    anchor = date(2024, 6, 28)
    result = train("--source", "synthetic:7", "--anchor", anchor.isoformat(), "--train-years", "2",
                   "--candidates", str(fast_grid), "--no-promote")
    assert result.exit_code == 0, result.output
    assert train.last is not None
    start, end = training_window(MlflowClient(tracking_uri=mlflow_server.uri), train.last.version)
    # The registered model is refitted on the last 2 x 252 labelled rows up to the anchor.
    rows = labeled(build_features(load_prices("synthetic:7", end=anchor)))
    assert (start, end) == (rows.index[-504].date(), rows.index[-1].date())
