"""The served version's live report on /metrics and /model, and the replay clock in serving.

Real parts: ``mlflow server``, ``bentoml serve`` over HTTP, SQLite files written with
SQLAlchemy as ``primer monitor`` writes them (:mod:`contract.live_report`'s table).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from contract import live_report as names
from contract import prediction_log as logged
from tests.serving.live_support import answer, live_report, samples, wait_for, write_report
from tests.support import Service, start_service, write_pin_text

REFRESH = "0.5"  # PRIMER_LIVE_REFRESH_SECONDS in these tests


def live_samples(svc: Service) -> list[tuple[str, dict[str, str], float]]:
    return [s for s in samples(svc.get("/metrics").text) if s[0] in names.live_metric_names()]


def value(svc: Service, name: str, **labels: str) -> float | None:
    for sample_name, sample_labels, sample_value in samples(svc.get("/metrics").text):
        if sample_name == name and labels.items() <= sample_labels.items():
            return sample_value
    return None


def documented_model(svc: Service) -> dict[str, Any]:
    """GET /model, checked against the schema /docs.json publishes for it."""
    from bentos.service import ModelInfo

    info = svc.model()
    ModelInfo.model_validate(info, strict=True)
    return info


@pytest.fixture()
def reporting_service(tiny_versions: tuple[str, int, int], tmp_path: Path) -> Iterator[tuple[Service, str]]:
    """A service serving the first version, with a live report for it in its log's database."""
    uri, first, _ = tiny_versions
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    write_report(url, live_report(first, 12))
    with start_service(tmp_path / "svc", uri, first, PRIMER_PREDICTION_LOG=url,
                       PRIMER_LIVE_REFRESH_SECONDS=REFRESH) as svc:
        yield svc, url


# -- live metrics ------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_served_versions_live_report_is_on_metrics_and_follows_the_row_and_the_pin(
    tiny_versions: tuple[str, int, int], reporting_service: tuple[Service, str]
) -> None:
    _, first, second = tiny_versions
    svc, url = reporting_service
    answer(svc, first)
    wait_for(svc, lambda: value(svc, names.METRIC_SCORED_DAYS) == 12, "the report on /metrics")
    exported = {name for name, _, _ in live_samples(svc)}
    assert exported == set(names.live_metric_names())  # every name the contract lists, no other
    assert value(svc, names.METRIC_SERVED_VERSION) == first
    report, scores = live_report(first, 12), 0
    for sample_name, labels, sample_value in live_samples(svc):
        metric = sample_name.removeprefix(names.METRIC_SCORE_PREFIX)
        if metric in names.SCORE_METRICS:
            assert sample_value == pytest.approx(report.scores[labels["window"]][labels["scorer"]][metric])
            scores += 1
    assert scores == len(names.WINDOWS) * len(names.SCORERS) * len(names.SCORE_METRICS)
    assert value(svc, names.METRIC_IMPROVEMENT) == pytest.approx(-0.002)  # climatology better: the model's loss
    assert value(svc, names.METRIC_WORSE_P_VALUE) == pytest.approx(0.42)
    assert value(svc, names.METRIC_DRIFT_ALERT, check="up_rate") == 1.0
    assert value(svc, names.METRIC_DRIFT_UP_RATE, window="recent") == pytest.approx(0.45)
    assert value(svc, names.METRIC_DRIFT_PSI, feature="ret_1") == pytest.approx(0.05)
    assert {labels["model_version"] for _, labels, _ in live_samples(svc)} == {str(first)}
    live = documented_model(svc)["live"]
    assert (live["model_version"], live["scored_days"], live["demotion_warranted"], live["error"]) == (
        str(first), 12, False, None)
    assert live["log_loss_model"] == pytest.approx(report.scores["all"]["model"]["log_loss"])
    assert live["log_loss_climatology"] == pytest.approx(report.scores["all"]["climatology"]["log_loss"])
    assert live["drift_alerts"] == {"features": False, "up_rate": True, "skew": False}

    write_report(url, live_report(first, 13, demotion=True))  # the monitor scored one more day
    wait_for(svc, lambda: value(svc, names.METRIC_SCORED_DAYS) == 13, "the changed row on /metrics", timeout=10)
    assert value(svc, names.METRIC_DEMOTION) == 1.0 and svc.model()["live"]["demotion_warranted"] is True
    assert svc.proc.poll() is None  # the same process: no restart

    write_report(url, live_report(second, 3))
    write_pin_text(svc.pin, second)
    deadline = time.monotonic() + 60
    while value(svc, names.METRIC_SERVED_VERSION) != second:  # until the swap: the first's report only
        assert {labels["model_version"] for _, labels, _ in live_samples(svc)} <= {str(first)}
        assert svc.proc.poll() is None and time.monotonic() < deadline, svc.log_tail()
    # From the swap on, never the old version's values: the new one's, or none until read.
    assert str(first) not in {labels["model_version"] for _, labels, _ in live_samples(svc)}
    wait_for(svc, lambda: value(svc, names.METRIC_SCORED_DAYS) == 3, "the new version's report", timeout=10)
    assert {labels["model_version"] for _, labels, _ in live_samples(svc)} == {str(second)}
    assert svc.model()["live"]["model_version"] == str(second)


@pytest.mark.slow
def test_without_a_report_the_service_answers_and_model_says_why(
    tiny_versions: tuple[str, int, int], tmp_path: Path
) -> None:
    uri, first, _ = tiny_versions
    folder = tmp_path / "not-yet"  # SQLite cannot open a file in a missing folder: the database is down
    url = f"sqlite:///{folder / 'predictions.db'}"
    with start_service(tmp_path / "svc", uri, first, PRIMER_PREDICTION_LOG=url,
                       PRIMER_LIVE_REFRESH_SECONDS=REFRESH) as svc:
        answer(svc, first)
        svc.wait_model(lambda m: m["live"]["error"] and "unable to open database" in m["live"]["error"],
                       what="the database error in /model's live")
        assert value(svc, names.METRIC_SERVED_VERSION) == first and live_samples(svc) == []

        folder.mkdir()  # the database is back; the prediction log creates its table, not the report's
        svc.wait_model(lambda m: "no such table: live_report" in (m["live"]["error"] or ""),
                       what="the missing table in /model's live")
        assert live_samples(svc) == [] and svc.get("/predictionForTomorrow").status_code == 200

        write_report(url, live_report(first + 100, 5))  # a table, but nothing about the served version
        svc.wait_model(lambda m: m["live"]["error"] == f"no live report for version {first} yet "
                                                      "(primer monitor has not scored it)", what="no report")
        assert live_samples(svc) == [] and documented_model(svc)["live"]["scored_days"] is None

        write_report(url, live_report(first, 5))
        svc.wait_model(lambda m: m["live"]["scored_days"] == 5 and m["live"]["error"] is None, what="the report")
        assert documented_model(svc)["live"]["updated_at"]


@pytest.mark.slow
def test_without_a_prediction_log_live_is_null_and_the_served_version_still_exported(
    tiny_versions: tuple[str, int, int], tmp_path: Path
) -> None:
    uri, first, _ = tiny_versions
    with start_service(tmp_path / "svc", uri, first) as svc:
        answer(svc, first)
        assert svc.model()["live"] is None
        assert value(svc, names.METRIC_SERVED_VERSION) == first and live_samples(svc) == []


# -- the replay clock ----------------------------------------------------------------------------

@pytest.mark.slow
def test_in_replay_mode_as_of_walks_one_trading_day_per_interval_and_each_is_logged_once(
    tiny_versions: tuple[str, int, int], tmp_path: Path
) -> None:
    from ml.data import load_prices

    uri, first, _ = tiny_versions
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    start = date(2021, 3, 1)
    epoch = datetime.now(UTC)
    with start_service(tmp_path / "svc", uri, first, PRIMER_PREDICTION_LOG=url, PRIMER_MODE="replay",
                       PRIMER_REPLAY_START=start.isoformat(), PRIMER_REPLAY_EPOCH=epoch.isoformat(),
                       PRIMER_REPLAY_INTERVAL_SECONDS="2") as svc:
        seen: list[str] = []
        deadline = time.monotonic() + 14
        while time.monotonic() < deadline:
            r = svc.get("/predictionForTomorrow")
            if r.status_code == 200 and not r.json()["stale"] and r.json()["as_of"] not in seen:
                seen.append(r.json()["as_of"])
            time.sleep(0.1)
        svc.wait_model(lambda m: m["prediction_log"]["pending"] == 0 and m["prediction_log"]["written"] >= len(seen),
                       what="the log written")
    days = [d.date().isoformat() for d in load_prices("synthetic:42", end=date(2021, 6, 1))["date"]]
    steps = int((datetime.now(UTC) - epoch).total_seconds() // 2)
    assert len(seen) >= 4, seen
    first_index, start_index = days.index(seen[0]), next(i for i, d in enumerate(days) if d >= start.isoformat())
    assert days[first_index:first_index + len(seen)] == seen  # consecutive trading days, none skipped
    assert start_index <= first_index <= start_index + steps  # the clock's anchor, not today
    rows = _log_rows(url)
    assert {as_of for version, as_of in rows if version == first} >= set(seen)  # every replayed day logged


def _log_rows(url: str) -> list[tuple[int, str]]:
    from sqlalchemy import MetaData, create_engine, select

    engine, table = create_engine(url), logged.table(MetaData())
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(table.c[logged.MODEL_VERSION], table.c[logged.AS_OF]))
            return [(version, as_of.isoformat()) for version, as_of in rows]
    finally:
        engine.dispose()


@pytest.mark.slow
def test_a_replay_setting_that_cannot_work_is_one_error_and_not_ready(
    tiny_versions: tuple[str, int, int], tmp_path: Path
) -> None:
    uri, first, _ = tiny_versions
    with start_service(tmp_path / "svc", uri, first, PRIMER_MODE="replay",
                       PRIMER_REPLAY_EPOCH="2026-01-01T00:00:00Z") as svc:
        info = svc.wait_model(lambda m: m["model_version"] == str(first) and m["last_error"], what="the error")
        assert "PRIMER_REPLAY_START" in info["last_error"] and info["ready"] is False
        assert svc.get("/readyz").status_code == 503 and svc.get("/livez").status_code == 200
