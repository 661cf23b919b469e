"""The prediction log: every published answer recorded once per (model version, as_of),
never slowing or failing a request, nothing lost while the store is down.

Real parts throughout: SQLite files, a PostgreSQL server, MLflow and ``bentoml serve``.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from bentos.prediction_log import PredictionLog
from contract import prediction_log as schema
from ml.features import FEATURE_COLUMNS
from tests.pg import start_postgres
from tests.support import Service, free_port, start_service, write_pin_text


def _rows(url: str) -> list[dict[str, Any]]:
    from sqlalchemy import MetaData, create_engine, select

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(schema.table(MetaData())))]
    finally:
        engine.dispose()


def _entry(version: int, day: int) -> dict[str, Any]:
    return {schema.MODEL_VERSION: version, schema.AS_OF: date(2026, 1, day), schema.P_UP: 0.5, schema.STALE: False,
            schema.FEATURES: "{}", schema.PUBLISHED_AT: datetime.now(UTC), schema.HOST: "test", schema.PID: 1}


def test_a_full_queue_drops_its_oldest_entries_and_counts_them(tmp_path: Path) -> None:
    seen = {"written": 0, "dropped": 0, "pending": -1}

    def observe(written: int, dropped: int, pending: int) -> None:
        seen["written"] += written
        seen["dropped"] += dropped
        seen["pending"] = pending

    url = f"sqlite:///{tmp_path / 'log.db'}"
    plog = PredictionLog(url, capacity=3, observer=observe)  # no thread: flushed by hand below
    for day in range(1, 6):
        plog.record(_entry(1, day))
    assert (plog.dropped, plog.pending) == (2, 3)
    assert (seen["dropped"], seen["pending"]) == (2, 3)
    assert plog.flush()
    assert sorted(r[schema.AS_OF].day for r in _rows(url)) == [3, 4, 5]  # the newest survived
    assert (plog.written, plog.pending, seen["written"], seen["pending"]) == (3, 0, 3, 0)
    assert plog.status()["dropped"] == 2


def test_a_second_writer_of_the_same_answer_adds_no_row(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    first, second = PredictionLog(url), PredictionLog(url)
    first.record(_entry(1, 2))
    second.record({**_entry(1, 2), schema.P_UP: 0.9})  # a restart or replica: same (version, as_of)
    second.record(_entry(2, 2))
    assert first.flush() and second.flush()
    rows = _rows(url)
    assert sorted((r[schema.MODEL_VERSION], r[schema.P_UP]) for r in rows) == [(1, 0.5), (2, 0.5)]


def test_an_unreachable_store_keeps_the_entries_and_names_the_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'not-yet' / 'log.db'}"  # SQLite cannot create a file in a missing folder
    plog = PredictionLog(url)
    plog.record(_entry(1, 2))
    assert not plog.flush()
    assert plog.pending == 1 and plog.last_error and plog.written == 0
    (tmp_path / "not-yet").mkdir()  # the store is back
    assert plog.flush()
    assert (plog.pending, plog.last_error, len(_rows(url))) == (0, None, 1)


def test_the_runtime_queues_each_answer_once_per_version_and_day(tmp_path: Path) -> None:
    import pandas as pd
    from sklearn.dummy import DummyClassifier

    from bentos.runtime import LoadedModel, Runtime
    from contract.settings import ServingSettings

    row = pd.DataFrame([dict.fromkeys(FEATURE_COLUMNS, 0.25)])
    estimator = DummyClassifier(strategy="prior").fit(pd.concat([row, row]), [0, 1])
    plog = PredictionLog(f"sqlite:///{tmp_path / 'log.db'}")
    runtime = Runtime(ServingSettings(pin_file=tmp_path / "pin.yaml", data_source="x"), prediction_log=plog)
    for version in (3, 3, 4, 3):  # republished: queued once per version switch, one row each in the store
        runtime.model = LoadedModel(version, "run", estimator, {}, "now", row, date(2026, 1, 2))
        runtime.publish()
        runtime.publish()
    assert runtime.answer is not None and runtime.answer.stale
    assert plog.pending == 3 and plog.flush()
    rows = _rows(plog.url)
    assert sorted((r[schema.MODEL_VERSION], r[schema.AS_OF]) for r in rows) == [(3, date(2026, 1, 2)),
                                                                                (4, date(2026, 1, 2))]
    assert json.loads(rows[0][schema.FEATURES]) == dict.fromkeys(FEATURE_COLUMNS, 0.25)


def test_primer_up_gives_its_service_a_log_in_the_state_folder(tmp_path: Path) -> None:
    from contract.settings import LocalSettings
    from primer.up import plan

    p = plan(LocalSettings(state_dir=tmp_path, repo_dir=tmp_path))
    assert p.env["PRIMER_PREDICTION_LOG"] == f"sqlite:///{tmp_path.resolve() / 'predictions.db'}"


# -- the service ---------------------------------------------------------------------------

def _answer(svc: Service, version: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = svc.get("/predictionForTomorrow")
        if r.status_code == 200 and r.json()["model_version"] == str(version):
            return dict(r.json())
        time.sleep(0.2)
    raise AssertionError(f"version {version} never answered: {svc.log_tail()}")


def _log_status(svc: Service) -> dict[str, Any]:
    return dict(svc.model()["prediction_log"])


def _check_rows(url: str, answers: list[dict[str, Any]]) -> None:
    """Exactly one row per (version, as_of), holding what was answered."""
    rows = _rows(url)
    keys = [(r[schema.MODEL_VERSION], r[schema.AS_OF].isoformat()) for r in rows]
    assert len(keys) == len(set(keys)), f"duplicated rows: {keys}"
    expected = {(int(a["model_version"]), a["as_of"]): a for a in answers}
    assert set(keys) == set(expected)
    for r in rows:
        a = expected[(r[schema.MODEL_VERSION], r[schema.AS_OF].isoformat())]
        assert (r[schema.P_UP], r[schema.STALE]) == (a["confidence"], a["stale"])
        assert list(json.loads(r[schema.FEATURES])) == list(FEATURE_COLUMNS)


@pytest.mark.slow
def test_two_services_record_each_answer_once(tiny_versions: tuple[str, int, int], tmp_path: Path) -> None:
    uri, first, second = tiny_versions
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    with start_service(tmp_path / "a", uri, first, PRIMER_PREDICTION_LOG=url) as a, \
            start_service(tmp_path / "b", uri, first, PRIMER_PREDICTION_LOG=url) as b:
        answers = [_answer(a, first), _answer(b, first)]
        assert answers[0] == answers[1]
        for svc in (a, b):  # both published and wrote (one of them was ignored by the store)
            svc.wait_model(lambda m: m["prediction_log"]["written"] >= 1 and not m["prediction_log"]["pending"])
        assert "primer_prediction_log_written_total 1.0" in a.get("/metrics").text
        for svc in (a, b):
            write_pin_text(svc.pin, second)
        answers += [_answer(a, second), _answer(b, second)]
        for svc in (a, b):
            svc.wait_model(lambda m: m["prediction_log"]["written"] >= 2 and not m["prediction_log"]["pending"])
            assert _log_status(svc)["dropped"] == 0
    _check_rows(url, answers)


@pytest.mark.slow
def test_answers_while_the_store_is_down_are_written_when_it_returns(
    tiny_versions: tuple[str, int, int], tmp_path: Path
) -> None:
    uri, first, second = tiny_versions
    port = free_port()  # PostgreSQL will listen here, later
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    with start_service(tmp_path / "svc", uri, first, PRIMER_PREDICTION_LOG=url) as svc:
        answers = [_answer(svc, first)]
        svc.wait_model(lambda m: m["prediction_log"]["last_error"])
        write_pin_text(svc.pin, second)
        answers.append(_answer(svc, second))
        for _ in range(50):  # requests keep answering, at their usual speed
            started = time.monotonic()
            assert svc.get("/predictionForTomorrow").status_code == 200
            assert time.monotonic() - started < 1.0
        status = _log_status(svc)
        assert status["pending"] == 2 and status["written"] == 0 and status["last_error"], status
        assert "primer_prediction_log_pending 2.0" in svc.get("/metrics").text
        pg = start_postgres(port)  # the store returns
        try:
            svc.wait_model(lambda m: m["prediction_log"]["pending"] == 0, timeout=40)
            status = _log_status(svc)
            assert (status["written"], status["dropped"], status["last_error"]) == (2, 0, None)
            _check_rows(url, answers)
        finally:
            pg.stop()

