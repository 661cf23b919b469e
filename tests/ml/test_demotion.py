"""Choosing a demotion's rollback target (ml.demotion) against a real MLflow server of its own:
versions are real sklearn models logged and registered through ml.tracking; the previous
version is scored on the logged feature rows (JSON, as the service writes them); a climatology
version registered here is loaded the way serving loads it (bentos.runtime.load_served_model)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from contract import prediction_log as logged
from contract.names import MODEL_NAME, Tag
from contract.significance import GateSpec
from ml.data import synthetic_prices
from ml.demotion import (
    CLIMATOLOGY,
    ClimatologyFit,
    DemotionError,
    choose_target,
    logged_rows,
    newest_climatology,
    previous_better_on_same_days,
)
from ml.features import FEATURE_COLUMNS, LABEL, build_features, labeled
from ml.folds import recipe_from_json, recipe_to_json
from ml.tracking import Tracker
from ml.train import Candidate
from tests.support import running_mlflow

pytestmark = pytest.mark.slow  # its own MLflow server, models logged and registered

ANCHOR = date(2024, 6, 28)
LIVE_DAYS = 60
TRAIN_ROWS = 750
GATE = GateSpec()


@pytest.fixture(scope="module")
def tracker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tracker]:
    # Its own server: the tests count climatology versions of the one model name.
    with running_mlflow(tmp_path_factory.mktemp("demotion-mlflow"), stop_timeout=3) as uri:
        yield Tracker(uri)


@pytest.fixture(scope="module")
def prices() -> pd.DataFrame:
    return synthetic_prices(seed=7, end=ANCHOR)


@pytest.fixture(scope="module")
def rows(prices: pd.DataFrame) -> pd.DataFrame:
    return labeled(build_features(prices))


def register(tracker: Tracker, model: Any, train: pd.DataFrame, family: str) -> int:
    run_id = tracker.start_run(tracker.experiment_id(), f"test-{family}", {})
    uri = tracker.log_model(run_id, model, train)
    tracker.end_run(run_id)
    return tracker.register(uri, run_id, {Tag.RECIPE.value: recipe_to_json(Candidate(family, family))})


def scored_days(rows: pd.DataFrame, p_up: Any, labels: Any = None) -> pd.DataFrame:
    """The monitor's frame for the last LIVE_DAYS rows: the pinned version's answers, the labels,
    climatology (the training up-rate) and the logged feature rows as JSON text."""
    live, train = rows.iloc[-LIVE_DAYS:], rows.iloc[:-LIVE_DAYS]
    return pd.DataFrame({
        logged.P_UP: np.asarray(p_up, dtype=float) * np.ones(len(live)),
        LABEL: live[LABEL].to_numpy() if labels is None else np.asarray(labels, dtype=float),
        CLIMATOLOGY: float(train[LABEL].mean()),
        logged.FEATURES: [json.dumps({c: float(r[c]) for c in FEATURE_COLUMNS}) for _, r in live.iterrows()],
    }, index=live.index)


def wrong(labels: Any, confidence: float) -> np.ndarray:
    """Answers that lean the wrong way every day."""
    y = np.asarray(labels, dtype=float)
    return np.where(y == 1.0, 1 - confidence, confidence)


def test_the_previous_version_is_the_target_when_it_lost_less_on_the_same_rows(
        tracker: Tracker, rows: pd.DataFrame) -> None:
    train = rows.iloc[:-LIVE_DAYS].iloc[-TRAIN_ROWS:]
    previous_model = LogisticRegression(C=0.01).fit(train[list(FEATURE_COLUMNS)], train[LABEL].astype(int))
    previous = register(tracker, previous_model, train, "logistic_regression")
    pinned = register(tracker, previous_model, train, "random_forest")
    live = rows.iloc[-LIVE_DAYS:]
    days = scored_days(rows, wrong(live[LABEL], 0.7))

    t = choose_target(tracker, pinned=pinned, previous=previous, days=days, gate=GATE, fit=None)

    assert t is not None and (t.version, t.kind, t.previous, t.days) == (previous, "previous", previous, LIVE_DAYS)
    # Its forecasts on the logged rows, scored independently with scikit-learn.
    expected = log_loss(live[LABEL].astype(int), previous_model.predict_proba(live[list(FEATURE_COLUMNS)])[:, 1],
                        labels=[0, 1])
    assert t.target_log_loss == pytest.approx(expected, abs=1e-9) and t.previous_log_loss == t.target_log_loss
    assert t.pinned_log_loss == pytest.approx(-np.log(0.3), abs=1e-9)
    assert t.target_log_loss < t.pinned_log_loss
    assert t.previous_vs_climatology is not None and t.previous_vs_climatology["p_value"] > GATE.level
    assert (t.first_day, t.last_day) == (str(live.index[0].date()), str(live.index[-1].date()))
    assert "lost less on the same 60 days" in t.reason and not t.registered_now


def test_climatology_is_fitted_registered_and_servable_when_none_exists(
        tracker: Tracker, prices: pd.DataFrame, rows: pd.DataFrame) -> None:
    from bentos.runtime import load_served_model

    live = rows.iloc[-LIVE_DAYS:]
    labels = (live["ret_1"] > 0).astype(float)  # a rule the bad previous version is fitted against
    train = rows.iloc[:-LIVE_DAYS].iloc[-TRAIN_ROWS:]
    bad_model = LogisticRegression(C=100.0).fit(train[list(FEATURE_COLUMNS)], (train["ret_1"] < 0).astype(int))
    bad_previous = register(tracker, bad_model, train, "logistic_regression")
    pinned = register(tracker, bad_model, train, "gradient_boosting")
    fit = ClimatologyFit(prices=prices, train_rows=TRAIN_ROWS, source="synthetic:7")
    assert newest_climatology(tracker) is None

    # The previous version lost more than the pinned version's (uninformative) answers: climatology, fitted now.
    days = scored_days(rows, 0.5, labels)
    t = choose_target(tracker, pinned=pinned, previous=bad_previous, days=days, gate=GATE, fit=fit)
    assert t is not None and t.kind == "climatology" and t.registered_now
    assert "lost as much or more" in t.reason and f"as v{t.version}" in t.reason
    assert newest_climatology(tracker) == t.version
    version_tags = tracker.version_tags(t.version)
    assert recipe_from_json(version_tags[Tag.RECIPE.value]).family == "climatology"
    assert version_tags[Tag.DATA_SOURCE.value] == "synthetic:7"
    assert (version_tags[Tag.EVAL_START.value], version_tags[Tag.EVAL_END.value]) == (t.first_day, t.last_day)
    served = load_served_model(tracker.uri, t.version)  # what the service would load once it is pinned
    up_rate = float(rows[LABEL].iloc[-TRAIN_ROWS:].mean())  # the training window's up-rate up to the anchor
    assert served.stored_as_of == ANCHOR and served.stored_row is not None
    assert served.p_up_rows(logged_rows(days)) == pytest.approx([up_rate] * LIVE_DAYS)
    assert t.target_log_loss == pytest.approx(log_loss(labels.astype(int), [up_rate] * LIVE_DAYS, labels=[0, 1]))
    assert served.metrics["log_loss"] == pytest.approx(t.target_log_loss)

    # Lost less than a pinned version that was badly wrong, but itself worse than climatology: climatology
    # again, the registered one reused (no second version).
    count = len(tracker.client.search_model_versions(f"name = '{MODEL_NAME}'"))
    days = scored_days(rows, wrong(labels, 0.99), labels)
    check = previous_better_on_same_days(tracker, bad_previous, days, GATE)
    assert check.log_loss is not None and check.log_loss < check.pinned_log_loss and not check.better
    again = choose_target(tracker, pinned=pinned, previous=bad_previous, days=days, gate=GATE, fit=fit)
    assert again is not None and (again.version, again.registered_now) == (t.version, False)
    assert "itself worse than climatology" in again.reason
    assert len(tracker.client.search_model_versions(f"name = '{MODEL_NAME}'")) == count

    # No previous version, or one that cannot be loaded: climatology; a climatology pin: nothing to roll back to.
    first = choose_target(tracker, pinned=pinned, previous=None, days=days, gate=GATE, fit=None)
    assert first is not None and first.version == t.version and "no earlier pinned version" in first.reason
    gone = choose_target(tracker, pinned=pinned, previous=99999, days=days, gate=GATE, fit=None)
    assert gone is not None and gone.version == t.version and "could not be loaded" in gone.reason
    assert choose_target(tracker, pinned=t.version, previous=pinned, days=days, gate=GATE, fit=fit) is None


def test_bad_scored_days_are_one_clear_error(tracker: Tracker, rows: pd.DataFrame) -> None:
    days = scored_days(rows, 0.5)
    with pytest.raises(DemotionError, match="lack column"):
        choose_target(tracker, pinned=1, previous=None, days=days.drop(columns=[CLIMATOLOGY]), gate=GATE, fit=None)
    days[logged.FEATURES] = json.dumps({"ret_1": 0.0})
    with pytest.raises(DemotionError, match="lack ma3_ratio"):
        logged_rows(days)
