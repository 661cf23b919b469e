"""Drift: is the market the served version sees still the one it was trained on?

Three checks, each with its own alert (``contract.live_report.DRIFT_CHECKS``), thresholds
from ``promotion/monitoring.yaml`` (:class:`contract.monitoring.Monitoring`):

- ``features``: each feature's distribution over the recent window (the last
  ``drift_window_days`` rows up to the version's last scored day) against its training
  window, as a population stability index (PSI) on the training window's quantile bins.
  PSI with a fixed threshold does not work here: the features are rolling windows of a
  series whose volatility clusters, so a 60-day window of a *stationary* market already
  sits far from a 10-year reference (measured: tests/perf/bench_drift.py). The alert is
  therefore calibrated to the null: the PSI of every contiguous window of the same length
  in the source's history before the recent window (same serial dependence, same volatility
  clusters), each against the training window without that window's neighbourhood, is the
  reference distribution, and the nine features are tested together with a max-T
  (Westfall-Young min-p) adjustment, so ``psi_level`` is the false-alarm rate of the whole
  check, not of each feature. ``psi_alert`` is a floor on top: a PSI below it is never
  called drift, however unusual.
- ``up_rate``: the share of UP labels over the recent window against the training window
  (a two-proportion z-test, two-sided, at ``up_rate_level``, its variance widened by the
  labels' own serial dependence).
- ``skew``: the feature rows the service scored (the prediction log's ``features``) against
  the rows rebuilt now from the source's bars for the same dates; adjusted prices change
  after dividends and splits, so a served row can differ from what training would see.
  The largest absolute difference over the recent window, alert above ``skew_alert``.

What this can and cannot see (tests/perf/bench_drift.py, 10-year training windows): a
doubled volatility is within what a clustered market does on its own over a decade and is
caught in about a third of windows, a tripled one in about three quarters; a wider intraday
range alone hardly at all when doubled (4 %), in 40 % of windows at four times; a 70 % up-rate
in about two thirds; any dividend or split adjustment of served bars always.

Pure functions of frames: nothing here reads the log, the source or MLflow except
:func:`training_window`, which asks an MLflow client the caller passes in. The monitor calls
``drift_from_features(build_features(prices), *training_window(client, version), anchor,
served_rows(as_of, features_json), thresholds)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from contract.errors import PrimerError
from contract.live_report import DriftStatus
from contract.monitoring import Monitoring
from contract.names import MODEL_NAME, PARENT_RUN_TAG
from ml.features import FEATURE_COLUMNS, LABEL

# A share of zero would make PSI infinite; half a row per bin is added to every count (and
# the total grown to match) so an empty bin costs a large but finite amount.
SMOOTHING_ROWS = 0.5
# The null needs room: with fewer windows than this in the history the feature check reports
# its PSI but no p-value and never alerts (too little history to say what "usual" is).
MIN_NULL_WINDOWS = 100
# What ml/pipeline.py logs on the training run: the final fit's first and last row.
TRAIN_START_PARAM = "train_start"
TRAIN_END_PARAM = "train_end"


class DriftError(PrimerError):
    """The drift inputs are unusable (no rows, a feature missing, no training window recorded)."""


# ---------------------------------------------------------------- PSI


def quantile_edges(reference: np.ndarray, bins: int) -> np.ndarray:
    """Interior bin edges at the reference's quantiles (ties merged: fewer bins for a lumpy feature)."""
    edges = np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(edges)


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Which bin each value falls in: 0 .. len(edges), a value on an edge goes to the upper bin."""
    return np.searchsorted(edges, values, side="right")


def psi_from_counts(reference_counts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """PSI of ``counts`` (last axis: bins) against ``reference_counts``, both smoothed."""
    bins = reference_counts.shape[-1]
    ref = (reference_counts + SMOOTHING_ROWS) / (reference_counts.sum(-1, keepdims=True) + SMOOTHING_ROWS * bins)
    cur = (counts + SMOOTHING_ROWS) / (counts.sum(-1, keepdims=True) + SMOOTHING_ROWS * bins)
    return np.asarray(np.sum((cur - ref) * np.log(cur / ref), axis=-1))


def psi(reference: np.ndarray, recent: np.ndarray, bins: int) -> float:
    """The population stability index of ``recent`` against ``reference``'s quantile bins."""
    edges = quantile_edges(np.asarray(reference, dtype=float), bins)
    width = len(edges) + 1
    ref_counts = np.bincount(bin_index(reference, edges), minlength=width).astype(float)
    counts = np.bincount(bin_index(np.asarray(recent, dtype=float), edges), minlength=width).astype(float)
    return float(psi_from_counts(ref_counts, counts))


def _one_hot(index: np.ndarray, width: int) -> np.ndarray:
    return np.eye(width)[index]


def _reference_without(training_cum: np.ndarray, starts: np.ndarray, w: int, offset: int) -> np.ndarray:
    """Per window (its first row at ``starts``, positions in the history), the training window's bin
    counts without the window and without ``w`` rows on either side of it (``offset``: the training
    window's first position in the history). The recent window is not in the training window and
    is the neighbour of little of it: a window compared with a reference that holds its own
    volatility regime around it would look more usual than the recent one and set the bar too low."""
    n = training_cum.shape[0] - 1
    lo = np.clip(starts - w - offset, 0, n)
    hi = np.clip(starts + 2 * w - offset, 0, n)
    return np.asarray(training_cum[n] - (training_cum[hi] - training_cum[lo]))


def feature_psi(training: pd.DataFrame, recent: pd.DataFrame, bins: int,
                history: pd.DataFrame | None = None) -> tuple[dict[str, float], np.ndarray | None]:
    """Per feature, the recent window's PSI against the training window; and the null: the PSI of
    every window of as many contiguous rows in ``history`` (default: the training window; any rows
    the source had before the recent window, the training window's among them), each against the
    training window without its neighbourhood (rows: windows, columns: features). The null is None
    with fewer than :data:`MIN_NULL_WINDOWS` windows."""
    history = training if history is None else history
    observed: dict[str, float] = {}
    w = len(recent)
    starts = np.arange(max(len(history) - w + 1, 0))
    null = np.empty((len(starts), len(FEATURE_COLUMNS))) if len(starts) >= MIN_NULL_WINDOWS else None
    offset = int(history.index.get_indexer(training.index[:1])[0]) if len(training) else 0
    for j, column in enumerate(FEATURE_COLUMNS):
        ref = training[column].to_numpy(dtype=float)
        edges = quantile_edges(ref, bins)
        width = len(edges) + 1
        ref_hot = _one_hot(bin_index(ref, edges), width)
        counts = _one_hot(bin_index(recent[column].to_numpy(dtype=float), edges), width).sum(axis=0)
        observed[column] = float(psi_from_counts(ref_hot.sum(axis=0), counts))
        if null is not None:
            hist_cum = _cumulative(_one_hot(bin_index(history[column].to_numpy(dtype=float), edges), width))
            reference = _reference_without(_cumulative(ref_hot), starts, w, offset)
            null[:, j] = psi_from_counts(reference, hist_cum[w:] - hist_cum[:-w])
    return observed, null


def _cumulative(hot: np.ndarray) -> np.ndarray:
    return np.vstack([np.zeros(hot.shape[1]), np.cumsum(hot, axis=0)])


def max_t_p_value(observed: np.ndarray, null: np.ndarray) -> float:
    """How often the history's own windows (the null) look at least as unusual as the recent one,
    on the most unusual feature (Westfall-Young single-step min-p: a family-wise p-value).

    Each feature's PSI becomes its tail share among the null windows (so features on
    different scales are comparable); a window's score is its smallest tail share.
    """
    windows = null.shape[0]
    ranked = np.sort(null, axis=0)
    # Tail share of x in a feature's null: windows with PSI >= x, the observation counted in.
    null_tail = (windows - np.array([np.searchsorted(ranked[:, j], null[:, j], side="left")
                                     for j in range(null.shape[1])]).T) / windows
    obs_tail = (1 + windows - np.array([np.searchsorted(ranked[:, j], observed[j], side="left")
                                        for j in range(null.shape[1])])) / (windows + 1)
    null_min, obs_min = null_tail.min(axis=1), obs_tail.min()
    return float((1 + np.sum(null_min <= obs_min)) / (windows + 1))


# ---------------------------------------------------------------- up-rate, skew


def up_rate_test(training_labels: pd.Series, recent_labels: pd.Series) -> tuple[float, float, float]:
    """(training up-rate, recent up-rate, two-sided p-value that they differ); unknown labels ignored.

    A two-proportion z-test whose variance is inflated by ``(1 + rho) / (1 - rho)``, ``rho`` the
    training labels' lag-1 autocorrelation when positive: UP days that follow UP days (momentum)
    make a 60-day up-rate swing more than 60 coin flips do, and an independence test (Fisher's,
    a binomial) then fires on a stationary market (measured: 3.5 % of windows at level 0.01 with
    a planted momentum signal of 0.5).
    """
    tr = training_labels.dropna().to_numpy(dtype=float)
    rec = recent_labels.dropna().to_numpy(dtype=float)
    if len(tr) < 2 or len(rec) == 0:
        raise DriftError(f"the up-rate needs known labels: training {len(tr)}, recent {len(rec)}")
    pooled = (tr.sum() + rec.sum()) / (len(tr) + len(rec))
    variance = pooled * (1 - pooled) * (1 / len(tr) + 1 / len(rec)) * label_dependence(tr)
    gap = abs(rec.mean() - tr.mean())
    p_value = 1.0 if variance == 0 else float(2 * stats.norm.sf(gap / np.sqrt(variance)))
    return float(tr.mean()), float(rec.mean()), min(1.0, p_value)


def label_dependence(labels: np.ndarray) -> float:
    """``(1 + rho) / (1 - rho)`` for the lag-1 autocorrelation ``rho`` of the labels (a two-state
    Markov chain's variance factor for a mean), 1 when ``rho`` <= 0; ``rho`` capped at 0.9."""
    if len(labels) < 3 or labels[:-1].std() == 0 or labels[1:].std() == 0:
        return 1.0
    rho = float(np.clip(np.corrcoef(labels[:-1], labels[1:])[0, 1], 0.0, 0.9))
    return (1 + rho) / (1 - rho)


def skew(served: pd.DataFrame, rebuilt: pd.DataFrame) -> tuple[float | None, int]:
    """The largest |served - rebuilt| feature value over the dates in both, and how many rows were
    compared; (None, 0) when no served date has a rebuilt row."""
    common = served.index.intersection(rebuilt.index)
    if len(common) == 0:
        return None, 0
    cols = list(FEATURE_COLUMNS)
    diff = served.loc[common, cols].to_numpy(dtype=float) - rebuilt.loc[common, cols].to_numpy(dtype=float)
    return float(np.nanmax(np.abs(diff))), len(common)


def served_rows(as_of: Iterable[Any], features_json: Iterable[str | dict[str, float]]) -> pd.DataFrame:
    """The prediction log's ``features`` (one JSON object, or dict, per answer) as feature rows indexed
    by as_of, in ``FEATURE_COLUMNS`` order; :class:`DriftError` when a column is missing."""
    rows = [json.loads(v) if isinstance(v, str) else dict(v) for v in features_json]
    index = pd.DatetimeIndex(pd.to_datetime(list(as_of)), name="date")
    frame = pd.DataFrame(rows, index=index)
    missing = [c for c in FEATURE_COLUMNS if c not in frame.columns]
    if len(frame) and missing:
        raise DriftError(f"the logged feature rows lack {', '.join(missing)}")
    return frame.reindex(columns=list(FEATURE_COLUMNS)).astype(float)


# ---------------------------------------------------------------- the verdict


def _check_columns(frame: pd.DataFrame, name: str, label: bool) -> None:
    needed = [*FEATURE_COLUMNS, *([LABEL] if label else [])]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise DriftError(f"the {name} rows lack column(s) {', '.join(missing)}")
    if frame.loc[:, list(FEATURE_COLUMNS)].isna().any(axis=None):
        raise DriftError(f"the {name} rows hold missing feature values (incomplete rows must be dropped first)")


def drift_status(training: pd.DataFrame, recent: pd.DataFrame, served: pd.DataFrame, thresholds: Monitoring,
                 history: pd.DataFrame | None = None) -> DriftStatus:
    """The three checks for one served version.

    ``training``: the version's training rows (``build_features`` rows with their label, from
    :func:`training_window`'s dates); ``recent``: the last ``drift_window_days`` feature rows up
    to the anchor (the monitor's: the version's last scored day), rebuilt now from the source
    (label NaN where the next close is not known yet); ``served``: what the service scored
    (:func:`served_rows`), any dates: only those
    in ``recent`` are compared; ``history``: the feature rows before the recent window (the
    training rows among them) whose windows calibrate the feature check (default: the training
    rows alone; more history, a better-known null). :func:`drift_from_features` cuts all of them.
    """
    _check_columns(training, "training", label=True)
    _check_columns(recent, "recent", label=True)
    if len(training) == 0 or len(recent) == 0:
        raise DriftError(f"drift needs rows in both windows: training {len(training)}, recent {len(recent)}")
    if history is not None:
        _check_columns(history, "history", label=False)
        at = history.index.get_indexer(training.index)
        if (at < 0).any() or not np.array_equal(at, at[0] + np.arange(len(at))):
            raise DriftError("the history rows must hold the training rows, contiguous and in order")
    psi_values, null = feature_psi(training, recent, thresholds.psi_bins, history)
    p_features = None
    if null is not None:
        p_features = max_t_p_value(np.array([psi_values[c] for c in FEATURE_COLUMNS]), null)
    feature_alert = (p_features is not None and p_features < thresholds.psi_level
                     and max(psi_values.values()) >= thresholds.psi_alert)
    up_training, up_recent, p_up = up_rate_test(training[LABEL], recent[LABEL])
    largest, compared = skew(served, recent)
    return DriftStatus(
        window_days=len(recent), psi=psi_values, up_rate_training=up_training, up_rate_recent=up_recent,
        up_rate_p_value=p_up, skew=largest, skew_rows=compared,
        alerts={"features": bool(feature_alert), "up_rate": p_up < thresholds.up_rate_level,
                "skew": largest is not None and largest > thresholds.skew_alert},
        features_p_value=p_features,
    )


def drift_from_features(features: pd.DataFrame, train_start: date, train_end: date, anchor: date,
                        served: pd.DataFrame, thresholds: Monitoring) -> DriftStatus:
    """:func:`drift_status` on ``build_features`` rows rebuilt now from the source: the training
    rows are the labelled rows from ``train_start`` to ``train_end``; the recent window the last
    ``drift_window_days`` rows up to ``anchor``; the history every row before the recent window."""
    dates = features.index
    training = features.loc[(dates >= pd.Timestamp(train_start)) & (dates <= pd.Timestamp(train_end))]
    upto = features.loc[dates <= pd.Timestamp(anchor)]
    recent = upto.iloc[-thresholds.drift_window_days:]
    history = upto.iloc[:-len(recent)] if len(recent) else upto
    training = training.loc[training.index < recent.index[0]] if len(recent) else training
    return drift_status(training.dropna(subset=[LABEL]), recent, served, thresholds, history=history)


def training_window(client: Any, version: int, name: str = MODEL_NAME) -> tuple[date, date]:
    """The first and last row the registered ``version`` was fitted on.

    ``client`` is an ``mlflow.MlflowClient``. The version's run is the selected candidate, a
    nested run of the training run; that parent logs the final fit's rows as the params
    ``train_start`` and ``train_end`` (ml/pipeline.py ``_parent_params``).
    """
    run = client.get_run(client.get_model_version(name, str(version)).run_id)
    params = dict(run.data.params)
    if TRAIN_START_PARAM not in params and (parent := run.data.tags.get(PARENT_RUN_TAG)):
        params = dict(client.get_run(parent).data.params)
    try:
        return date.fromisoformat(params[TRAIN_START_PARAM]), date.fromisoformat(params[TRAIN_END_PARAM])
    except (KeyError, ValueError) as exc:
        raise DriftError(f"{name} v{version}: its training run records no usable {TRAIN_START_PARAM}/"
                         f"{TRAIN_END_PARAM} params ({exc}); drift cannot be computed for it") from None
