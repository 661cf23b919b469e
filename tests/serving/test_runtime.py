"""The pin watcher and the published answer, driven step by step (no threads, no servers).

The loader is a stand-in here so each edge can be forced deterministically; the
real loader, MLflow and `bentoml serve` are exercised in test_service.py.
"""

from __future__ import annotations

import os
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier

from bentos.runtime import LoadedModel, Runtime
from contract.settings import ServingSettings as Settings
from ml.features import FEATURE_COLUMNS
from tests.support import write_pin_text


def _model(version: int, p_up: float) -> LoadedModel:
    X = pd.DataFrame([dict.fromkeys(FEATURE_COLUMNS, 0.0)] * 2)
    est = DummyClassifier(strategy="prior").fit(X, [0, 1])
    est.class_prior_ = [1 - p_up, p_up]  # prior strategy answers the class prior
    row = pd.DataFrame([dict.fromkeys(FEATURE_COLUMNS, 0.0)])
    return LoadedModel(version, f"run{version}", est, {}, "now", row, date(2026, 1, 2))


class Loader:
    def __init__(self) -> None:
        self.calls: list[int] = []
        self.fail: set[int] = set()

    def __call__(self, uri: str, version: int) -> LoadedModel:
        self.calls.append(version)
        if version in self.fail:
            raise RuntimeError(f"RESOURCE_DOES_NOT_EXIST: version {version}")
        return _model(version, p_up=version / 10)


def _runtime(pin: Path, loader: Loader, fetch: object = None) -> Runtime:
    def no_data(source: str, today: date) -> tuple[pd.DataFrame, date]:
        raise ConnectionError("offline")

    settings = Settings(pin_file=pin, tracking_uri="http://mlflow", data_source="x", pin_poll_seconds=0.1,
                        feature_ttl_seconds=60)
    return Runtime(settings, loader=loader, fetcher=fetch or no_data)  # type: ignore[arg-type]


def test_settings_from_env_treat_empty_values_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    from contract.names import DEFAULT_TRACKING_URI
    from contract.settings import TrainSettings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.setenv("PRIMER_DATA_SOURCE", "")
    s = Settings.load()
    assert s.tracking_uri == DEFAULT_TRACKING_URI
    assert s.data_source == TrainSettings.load().data_source == "yfinance"  # the pipeline's default, same rule
    monkeypatch.setenv("PRIMER_DATA_SOURCE", "synthetic")
    assert Settings.load().data_source == TrainSettings.load().data_source == "synthetic"


def _tick(rt: Runtime) -> None:
    rt.check_pin()
    rt.load_if_needed()


def _configmap(root: Path, text: str, stamp: str) -> Path:
    """Kubelet's layout: pin -> ..data/pin, ..data -> ..<stamp>; an update swaps ..data."""
    d = root / f"..{stamp}"
    d.mkdir()
    (d / "model-version.yaml").write_text(text)
    os.utime(d / "model-version.yaml", (1_000_000, 1_000_000))  # same mtime every time
    tmp = root / "..data_tmp"
    tmp.symlink_to(d.name)
    os.replace(tmp, root / "..data")
    link = root / "model-version.yaml"
    if not link.is_symlink():
        link.symlink_to("..data/model-version.yaml")
    return link


def test_configmap_symlink_swap_with_identical_mtime_is_detected(tmp_path: Path) -> None:
    pin = _configmap(tmp_path, "model: spy-direction\nversion: 3\n", "a")
    loader = Loader()
    rt = _runtime(pin, loader)
    _tick(rt)
    assert rt.model is not None and rt.model.version == 3
    _configmap(tmp_path, "model: spy-direction\nversion: 4\n", "b")
    _tick(rt)
    assert rt.model.version == 4 and loader.calls == [3, 4]


def test_failed_load_keeps_old_model_and_backs_off(tmp_path: Path) -> None:
    pin = write_pin_text(tmp_path / "pin.yaml", 3)
    loader = Loader()
    rt = _runtime(pin, loader)
    _tick(rt)
    rt.publish()
    before = rt.answer
    loader.fail.add(5)
    write_pin_text(pin, 5)
    _tick(rt)
    assert rt.model.version == 3 and rt.ready
    assert rt.answer == before
    err = rt.status()["last_error"]
    assert "spy-direction/5 failed" in err and "still serving version 3" in err
    _tick(rt)  # within the backoff window: no hammering of MLflow
    assert loader.calls == [3, 5]
    loader.fail.clear()
    rt._status.next_attempt = time.monotonic() - 1  # the backoff elapsed
    _tick(rt)
    assert rt.model.version == 5 and rt.status()["last_error"] is None


def test_invalid_pin_never_replaces_a_model_and_null_keeps_serving(tmp_path: Path) -> None:
    pin = write_pin_text(tmp_path / "pin.yaml", 3)
    rt = _runtime(pin, Loader())
    _tick(rt)
    for text in ("{{{", "model: spy-direction\nversion: -1\n", "model: spy-direction\nversion: null\n"):
        pin.write_text(text)
        _tick(rt)
        assert rt.model.version == 3, text
        assert "still serving version 3" in rt.status()["last_error"], text
    pin.write_bytes(b"\xff\xfe")  # not text at all
    _tick(rt)
    assert rt.model.version == 3 and "cannot read pin file" in rt.status()["last_error"]
    os.remove(pin)
    _tick(rt)
    assert rt.model.version == 3 and "cannot read pin file" in rt.status()["last_error"]


def test_a_garbage_pin_after_an_unloadable_one_stops_the_retries(tmp_path: Path) -> None:
    pin = write_pin_text(tmp_path / "pin.yaml", 3)
    loader = Loader()
    rt = _runtime(pin, loader)
    _tick(rt)
    loader.fail.add(9)
    write_pin_text(pin, 9)
    _tick(rt)
    assert loader.calls == [3, 9]
    pin.write_text("{{{")  # the unloadable target replaced by garbage: nothing asks for 9 any more
    _tick(rt)
    rt._status.next_attempt = time.monotonic() - 1  # a retry would be due now
    _tick(rt)
    assert loader.calls == [3, 9], "the service kept retrying a version no pin names"
    status = rt.status()
    assert rt.model.version == 3 and status["pinned_version"] == "3"
    assert "invalid pin ignored" in status["last_error"] and "spy-direction/9" not in status["last_error"]


class FirstFeatureIsP:
    """An estimator whose P(up) is the row's first feature: answers depend on the row."""

    classes_ = [0, 1]

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        p = X.iloc[:, 0].to_numpy(dtype=float)
        return np.column_stack([1 - p, p])


class CountingFirstFeatureIsP(FirstFeatureIsP):
    """FirstFeatureIsP that records every row it is asked to score."""

    def __init__(self) -> None:
        self.scored: list[float] = []

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        self.scored.extend(X.iloc[:, 0].astype(float))
        return super().predict_proba(X)


def _row(value: float) -> pd.DataFrame:
    return pd.DataFrame([dict.fromkeys(FEATURE_COLUMNS, value)])


def test_answer_is_computed_once_per_version_and_row_and_marks_stale(tmp_path: Path) -> None:
    pin = write_pin_text(tmp_path / "pin.yaml", 7)
    estimators: dict[int, CountingFirstFeatureIsP] = {}

    def loader(uri: str, version: int) -> LoadedModel:
        estimators[version] = CountingFirstFeatureIsP()
        return LoadedModel(version, f"run{version}", estimators[version], {}, "now", _row(0.2), date(2026, 1, 2))

    fetched = {"row": _row(0.3), "as_of": date(2026, 3, 4)}
    rt = _runtime(pin, loader, fetch=lambda source, today: (fetched["row"], fetched["as_of"]))  # type: ignore[arg-type]
    _tick(rt)

    def publish_twice() -> None:
        rt.publish()
        first = rt.answer
        rt.publish()
        assert rt.answer == first

    publish_twice()  # the row stored with the model, before any fetch: scored once
    assert rt.answer.stale is True and rt.answer.as_of == "2026-01-02" and rt.answer.confidence == pytest.approx(0.2)
    assert estimators[7].scored == [0.2]

    assert rt.refresh_features()  # fresh data: a new row, scored once
    publish_twice()
    assert rt.answer.stale is False and rt.answer.as_of == "2026-03-04" and rt.answer.confidence == pytest.approx(0.3)
    assert estimators[7].scored == [0.2, 0.3]

    assert rt.refresh_features()  # the same row fetched again: nothing to score
    publish_twice()
    assert estimators[7].scored == [0.2, 0.3]

    fetched["row"] = _row(0.4)  # same day, other values (another source): scored again
    assert rt.refresh_features()
    publish_twice()
    assert rt.answer.as_of == "2026-03-04" and rt.answer.confidence == pytest.approx(0.4)
    assert estimators[7].scored == [0.2, 0.3, 0.4]

    write_pin_text(pin, 8)  # a new version: the same row is scored by it, once
    _tick(rt)
    publish_twice()
    assert rt.answer.model_version == "8" and rt.answer.confidence == pytest.approx(0.4)
    assert estimators[8].scored == [0.4] and estimators[7].scored == [0.2, 0.3, 0.4]


def test_a_fresh_row_with_the_stored_rows_date_is_scored_not_served_from_cache(tmp_path: Path) -> None:
    # Training and serving can read different sources (synthetic:7 vs synthetic) ending on the
    # same day: same as_of, other numbers. The answer must be the fresh row's, not the stored one's.
    pin = write_pin_text(tmp_path / "pin.yaml", 7)
    day = date(2026, 1, 2)
    stored = pd.DataFrame([dict.fromkeys(FEATURE_COLUMNS, 0.2)])
    fresh = pd.DataFrame([dict.fromkeys(FEATURE_COLUMNS, 0.9)])

    def loader(uri: str, version: int) -> LoadedModel:
        return LoadedModel(version, "run", FirstFeatureIsP(), {}, "now", stored, day)

    rt = _runtime(pin, loader, fetch=lambda source, today: (fresh, day))  # type: ignore[arg-type]
    _tick(rt)
    rt.publish()
    assert rt.answer.stale is True and rt.answer.confidence == pytest.approx(0.2)
    assert rt.refresh_features()
    rt.publish()
    assert rt.answer.stale is False and rt.answer.as_of == day.isoformat()
    assert rt.answer.confidence == pytest.approx(0.9)


def _replay_runtime(pin: Path, loader: Loader, **replay: object) -> tuple[Runtime, list[tuple[object, object]]]:
    calls: list[tuple[object, object]] = []

    def replay_fetch(source: str, clock: object, now: object) -> tuple[pd.DataFrame, date]:
        calls.append((clock, now))
        return _row(0.5), date(2021, 3, 1)

    settings = Settings(pin_file=pin, tracking_uri="http://mlflow", data_source="x", mode="replay", **replay)
    rt = Runtime(settings, loader=loader, replay_fetcher=replay_fetch)  # type: ignore[arg-type]
    return rt, calls


def test_in_replay_mode_a_row_is_fresh_until_the_replay_clock_steps(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    epoch = datetime.now(UTC) - timedelta(seconds=11)
    rt, calls = _replay_runtime(write_pin_text(tmp_path / "pin.yaml", 7), Loader(), replay_start=date(2021, 3, 1),
                                replay_epoch=epoch, replay_interval_seconds=2.0)
    _tick(rt)
    assert rt.refresh_features() and len(calls) == 1
    clock, _ = calls[0]
    day = rt.features.fetched_day  # type: ignore[union-attr]
    steps = clock.steps()  # type: ignore[attr-defined]
    assert day == steps and steps in (5, 6)
    assert rt.features_fresh(today=day) and not rt.features_fresh(today=day + 1)  # type: ignore[operator]
    assert rt.clock_day(epoch + timedelta(seconds=4.5)) == 2  # the clock's step, not the UTC day
    assert rt.ready and rt.status()["last_error"] is None


def test_a_replay_setting_that_cannot_work_is_reported_and_not_ready(tmp_path: Path) -> None:
    rt, calls = _replay_runtime(write_pin_text(tmp_path / "pin.yaml", 7), Loader(), replay_epoch="2026-01-01T00:00Z")
    _tick(rt)
    assert rt.model is not None and not rt.refresh_features() and calls == []
    status = rt.status()
    assert status["ready"] is False and "PRIMER_REPLAY_START" in status["last_error"]
