"""Evaluation: time-ordered windows, metrics, baselines, the candidate grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contract.evidence import Scores
from contract.settings import TrainSettings
from ml.evaluate import (
    MIN_TRAIN_ROWS,
    WindowError,
    baseline_probabilities,
    better,
    score,
    score_baselines,
    score_model,
    split_validation,
    split_windows,
)
from ml.features import LABEL, build_features
from ml.train import CandidateConfigError, build_estimator, fit, load_grid


@pytest.fixture(scope="module")
def feats(market: pd.DataFrame) -> pd.DataFrame:
    return build_features(market.tail(700).reset_index(drop=True))


@pytest.mark.parametrize("eval_days,train_rows", [(60, None), (60, 300), (120, 400), (250, None)])
def test_windows_are_time_ordered_and_sized(feats: pd.DataFrame, eval_days: int, train_rows: int | None):
    w = split_windows(feats, eval_days, train_rows)
    assert len(w.eval) == eval_days
    assert len(w.train) == (train_rows or len(feats) - 1 - eval_days)
    assert w.train_end < w.eval_start, "training data ends before the evaluation window"
    # The window ends at the last labelled row: the trading day before the anchor.
    assert w.eval.index[-1] == feats.index[-2]
    assert w.eval[LABEL].notna().all() and w.train[LABEL].notna().all()
    # Consecutive: the eval window starts on the trading day right after training ends.
    pos = feats.index.get_loc(w.eval.index[0])
    assert feats.index[pos - 1] == w.train.index[-1]


def test_validation_split_holds_out_the_end_of_training(feats: pd.DataFrame):
    w = split_windows(feats, 60)
    fit_part, val = split_validation(w.train, 250)
    assert len(val) == min(250, len(w.train) // 3) and len(fit_part) + len(val) == len(w.train)
    assert fit_part.index[-1] < val.index[0] and val.index[-1] < w.eval.index[0]


def test_window_limits(feats: pd.DataFrame):
    with pytest.raises(WindowError, match="minimum is 60"):
        split_windows(feats, 20)
    with pytest.raises(WindowError, match=f"{MIN_TRAIN_ROWS} for training"):
        split_windows(feats.tail(200), 60)


def test_scores_and_single_class_window():
    y = np.array([1, 0, 1, 1, 0, 1])
    perfect = score(y, y.astype(float) * 0.8 + 0.1)
    assert perfect.accuracy == 1.0 and perfect.balanced_accuracy == 1.0 and perfect.roc_auc == 1.0
    assert perfect.brier == pytest.approx(0.01)
    assert perfect.log_loss == pytest.approx(-np.log(0.9))
    one = score(np.ones(5), np.full(5, 0.7))
    assert one.roc_auc is None and one.accuracy == 1.0


def test_baselines(feats: pd.DataFrame):
    w = split_windows(feats, 60)
    probs = baseline_probabilities(w)
    assert set(probs) == {"always_up", "train_majority", "yesterday_direction"}
    up_rate = w.eval[LABEL].mean()
    scores = score_baselines(w)
    assert scores["always_up"].accuracy == pytest.approx(up_rate)
    assert probs["train_majority"].nunique() == 1
    assert probs["train_majority"].iloc[0] == pytest.approx(w.train[LABEL].mean())
    assert ((probs["yesterday_direction"] == 1.0) == (w.eval["ret_1"] > 0)).all()


def test_better_respects_metric_direction():
    a = Scores(0.6, 0.6, 0.6, 0.68, 0.24)
    b = Scores(0.5, 0.5, None, 0.70, 0.25)
    assert better(a, b, "accuracy") and better(a, b, "log_loss") and better(a, b, "roc_auc")
    assert not better(b, a, "brier") and not better(b, a, "roc_auc")


def test_packaged_grid_has_climatology_forests_and_another_family():
    grid = load_grid()
    forests = {(c.params.get("n_estimators"), c.params.get("max_depth"))
               for c in grid.candidates if c.family == "random_forest"}
    assert {(50, 3), (100, 5)} <= forests
    assert {"climatology", "logistic_regression", "gradient_boosting"} <= {c.family for c in grid.candidates}
    assert grid.select_by == "log_loss" and grid.validation_days == 250 and grid.fold_months == 3


def test_grid_override_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "g.yaml"
    path.write_text("candidates:\n  - {name: gb, family: gradient_boosting, params: {n_estimators: 5}}\n")
    monkeypatch.setenv("PRIMER_CANDIDATES_FILE", str(path))
    assert [c.name for c in load_grid(TrainSettings.load().candidates_file).candidates] == ["gb"]
    cases = {
        "candidates: []\n": "non-empty 'candidates'",
        "candidates:\n  - {name: x, family: svm}\n": "unknown family 'svm'",
        "candidates:\n  - {name: x, family: random_forest, params: {trees: 3}}\n": "candidate 'x'",
        "select_by: f1\ncandidates:\n  - {name: x, family: random_forest}\n": "select_by 'f1'",
        "candidates:\n  - {name: x, family: random_forest}\n  - {name: x, family: random_forest}\n": "duplicate",
        "validation_days: 5\ncandidates:\n  - {name: x, family: random_forest}\n": "validation_days",
    }
    for text, message in cases.items():
        path.write_text(text)
        with pytest.raises(CandidateConfigError, match=message):
            load_grid(path)
    with pytest.raises(CandidateConfigError, match="cannot read"):
        load_grid(tmp_path / "missing.yaml")


def test_every_family_fits_and_scores_out_of_sample(feats: pd.DataFrame):
    w = split_windows(feats, 60)
    for cand in load_grid().candidates:
        model = fit(cand, w.train)
        s, p = score_model(model, w.eval)
        assert len(p) == 60 and p.between(0, 1).all()
        assert 0.0 <= s.accuracy <= 1.0 and s.log_loss > 0
        assert type(model) is type(build_estimator(cand))
