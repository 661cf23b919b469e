"""Evaluation: metrics, time-ordered windows, naive baselines.

The pipeline decides on walk-forward folds (``ml.folds``, ``ml.walkforward``); the one-window
split below keeps the anchor semantics every fold follows, and its tests.

Anchor semantics (see docs/pipeline.md): data up to and including the anchor date is
visible. The evaluation window is the last ``eval_days`` *labelled* trading
days up to the anchor — its last row is the trading day before the anchor,
whose label is decided by the anchor's close. The model is trained only on
labelled rows strictly before the window (at most ``train_rows`` of them),
so every score is out-of-sample: "train up to a split date, evaluate on the
following N trading days".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score, brier_score_loss, log_loss, roc_auc_score

from contract.errors import PrimerError
from contract.evidence import METRICS, Scores, improvement
from ml.features import LABEL, labeled
from ml.train import predict_up

MIN_EVAL_DAYS = 60
MIN_TRAIN_ROWS = 250  # about one trading year
BASELINES = ("always_up", "train_majority", "yesterday_direction")


class WindowError(PrimerError, ValueError):
    """Not enough labelled rows for the requested windows."""


@dataclass(frozen=True)
class Windows:
    train: pd.DataFrame  # labelled feature rows, before the evaluation window
    eval: pd.DataFrame  # the last eval_days labelled feature rows up to the anchor

    @property
    def train_start(self) -> date:
        return self.train.index[0].date()

    @property
    def train_end(self) -> date:
        return self.train.index[-1].date()

    @property
    def eval_start(self) -> date:
        return self.eval.index[0].date()

    @property
    def eval_end(self) -> date:
        return self.eval.index[-1].date()


def split_windows(features: pd.DataFrame, eval_days: int, train_rows: int | None = None) -> Windows:
    """Split feature rows (from ``build_features``) into train and evaluation windows.

    Rows without a label (the anchor's own row) are dropped first.
    """
    if eval_days < MIN_EVAL_DAYS:
        raise WindowError(f"evaluation window of {eval_days} days is too small; minimum is {MIN_EVAL_DAYS}")
    rows = labeled(features)
    if len(rows) < eval_days + MIN_TRAIN_ROWS:
        raise WindowError(
            f"{len(rows)} labelled rows; need {eval_days} for evaluation + {MIN_TRAIN_ROWS} for training"
        )
    ev = rows.iloc[-eval_days:]
    train = rows.iloc[:-eval_days]
    if train_rows is not None and len(train) > train_rows:
        train = train.iloc[-train_rows:]
    return Windows(train=train, eval=ev)


def split_validation(train: pd.DataFrame, days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out the last ``days`` rows of the training window (at most a third) to choose a candidate."""
    days = max(1, min(days, len(train) // 3))
    return train.iloc[:-days], train.iloc[-days:]


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else float("nan")


def score(y_true: pd.Series | np.ndarray, p_up: pd.Series | np.ndarray) -> Scores:
    """Metrics of P(up) against 0/1 outcomes. Hard predictions use threshold 0.5."""
    y = np.asarray(y_true, dtype=int)
    p = np.clip(np.asarray(p_up, dtype=float), 0.0, 1.0)
    pred = (p >= 0.5).astype(int)
    one_class = len(np.unique(y)) < 2
    return Scores(
        accuracy=float(accuracy_score(y, pred)),
        # With a single class, balanced accuracy is plain recall of that class.
        balanced_accuracy=float(accuracy_score(y, pred)) if one_class else float(balanced_accuracy_score(y, pred)),
        roc_auc=None if one_class else float(roc_auc_score(y, p)),
        log_loss=_finite(log_loss(y, p, labels=[0, 1])),
        brier=float(brier_score_loss(y, p, pos_label=1)),
    )


def baseline_probabilities(windows: Windows) -> dict[str, pd.Series]:
    """P(up) of the naive baselines on the evaluation window.

    - always_up: says UP with certainty (p = 1).
    - train_majority: the training window's up-rate as probability, i.e. it
      predicts the majority class and is the climatological forecast for the losses.
    - yesterday_direction: says today's direction repeats (p = 1 if the last
      daily return was positive, else 0); ``ret_1`` of a row is that row's own move.
    """
    ev = windows.eval
    up_rate = float(windows.train[LABEL].mean())
    return {
        "always_up": pd.Series(1.0, index=ev.index),
        "train_majority": pd.Series(up_rate, index=ev.index),
        "yesterday_direction": (ev["ret_1"] > 0).astype(float),
    }


def score_baselines(windows: Windows) -> dict[str, Scores]:
    y = windows.eval[LABEL]
    return {name: score(y, p) for name, p in baseline_probabilities(windows).items()}


def score_model(model: Any, window: pd.DataFrame) -> tuple[Scores, pd.Series]:
    """Scores of a fitted model (or one loaded from MLflow) on a labelled window, and its P(up)."""
    p = predict_up(model, window)
    return score(window[LABEL], p), p


def better(a: Scores, b: Scores, metric: str) -> bool:
    """True when ``a`` beats ``b`` on ``metric`` (missing values never win)."""
    va, vb = a.get(metric), b.get(metric)
    if va is None or (isinstance(va, float) and math.isnan(va)):
        return False
    if vb is None or (isinstance(vb, float) and math.isnan(vb)):
        return True
    return improvement(va, vb, metric) > 0


def metrics_dict(scores: Scores, prefix: str = "") -> dict[str, float]:
    """MLflow-loggable metrics (None values left out)."""
    out = {}
    for key in METRICS:
        value = scores.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            out[prefix + key] = float(value)
    return out
