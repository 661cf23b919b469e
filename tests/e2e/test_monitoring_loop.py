"""Issue 13's first acceptance: the monitoring loop over real parts, days walking forward.

A real MLflow server, two real `bentoml serve` processes on one host sharing one SQLite
prediction log, and the replay clock (4 s per trading day) on the synthetic source: the
answers walk forward one trading day at a time. Midway the pin moves to a second version.
Then `primer monitor`, on the same clock, scores the days whose next close is known, and
every number is checked against labels computed here from the closes and the answers seen
over HTTP; MLflow holds them as a series stepped by trading day.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient
from sklearn.metrics import accuracy_score, balanced_accuracy_score, brier_score_loss, log_loss

from contract.names import EXPERIMENT_NAME, MONITORING_EXPERIMENT_NAME
from ml.data import load_prices
from ml.monitor import read_reports
from primer.cli import main as primer
from tests.support import Service, register_tiny_version, running_mlflow, scrub_environ, start_service, write_pin_text

pytestmark = pytest.mark.slow

SOURCE = "synthetic:7"
INTERVAL = 4.0  # seconds per replayed trading day
START = "2024-03-01"
Answers = dict[tuple[int, pd.Timestamp], float]  # (version, as_of) -> P(up) seen over HTTP


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_mlflow(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def _walk(services: list[Service], days: int, seen: Answers, version: int) -> None:
    """Poll both services until ``version`` has answered on ``days`` distinct trading days."""
    deadline = time.monotonic() + days * INTERVAL * 3 + 30
    while len({d for v, d in seen if v == version}) < days:
        assert time.monotonic() < deadline, f"as_of did not walk forward: {sorted(seen)}"
        for s in services:
            r = s.get("/predictionForTomorrow")
            if r.status_code != 200:
                continue
            body = r.json()
            key = (int(body["model_version"]), pd.Timestamp(body["as_of"]))
            assert seen.setdefault(key, body["confidence"]) == body["confidence"], "two processes, two answers"
        time.sleep(0.3)


def _expected(prices: pd.DataFrame, answered: dict[pd.Timestamp, float], last_known: pd.Timestamp) -> dict[str, float]:
    """Scores computed independently: the label straight from the closes, for days whose next close is known."""
    close = prices.set_index("date")["close"].astype(float)
    dates = list(close.index)
    nxt = {d: dates[i + 1] for i, d in enumerate(dates[:-1])}
    scored = [d for d in sorted(answered) if d in nxt and nxt[d] <= last_known]
    y = np.array([int(close.loc[nxt[d]] > close.loc[d]) for d in scored])
    p = np.array([answered[d] for d in scored])
    pred = (p >= 0.5).astype(int)
    return {"days": len(scored), "log_loss": log_loss(y, p, labels=[0, 1]), "brier": brier_score_loss(y, p),
            "accuracy": accuracy_score(y, pred),
            "balanced_accuracy": balanced_accuracy_score(y, pred) if 0 < y.sum() < len(y) else accuracy_score(y, pred)}


def test_answers_walk_forward_are_logged_once_and_scored(mlflow_uri: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    experiment = MlflowClient(mlflow_uri).create_experiment(EXPERIMENT_NAME)
    v1, _ = register_tiny_version(mlflow_uri, experiment)
    v2, _ = register_tiny_version(mlflow_uri, experiment)
    log_url = f"sqlite:///{tmp_path / 'predictions.db'}"
    clock = {"PRIMER_MODE": "replay", "PRIMER_REPLAY_START": START,
             "PRIMER_REPLAY_EPOCH": datetime.now(UTC).isoformat(), "PRIMER_REPLAY_INTERVAL_SECONDS": str(INTERVAL)}
    env = {**clock, "PRIMER_DATA_SOURCE": SOURCE, "PRIMER_PREDICTION_LOG": log_url}
    seen: Answers = {}
    services = [start_service(tmp_path / name, mlflow_uri, v1, wait_for="/readyz", **env) for name in ("a", "b")]
    try:
        _walk(services, 3, seen, v1)
        for s in services:  # the pin moves to v2: both processes follow it
            write_pin_text(s.pin, v2)
        _walk(services, 3, seen, v2)
        written = [s.model()["prediction_log"]["written"] for s in services]
    finally:
        for s in services:
            s.stop()  # the writer flushes what is queued on shutdown

    # Once per (version, as_of): both processes wrote (or tried), the table has each answer once.
    with sqlite3.connect(tmp_path / "predictions.db") as db:
        rows = db.execute("SELECT model_version, as_of, p_up FROM prediction_log").fetchall()
    logged = {(v, pd.Timestamp(d)): p for v, d, p in rows}
    assert logged.keys() >= seen.keys()
    assert all(logged[k] == pytest.approx(p, rel=1e-12) for k, p in seen.items())
    assert sum(written) > len(rows) >= 6, (written, len(rows))  # the second writer's copies were ignored

    # The monitor, its replay clock standing on the last answered day, then one and two bars later:
    # N more bars, N more scored days (here: the last day's answer is scored once its next bar is known).
    scrub_environ(monkeypatch)
    base = {"PRIMER_MODE": "replay", "PRIMER_REPLAY_EPOCH": "2099-01-01T00:00:00Z", "PRIMER_DATA_SOURCE": SOURCE,
            "PRIMER_PREDICTION_LOG": log_url, "MLFLOW_TRACKING_URI": mlflow_uri,
            "PRIMER_PIN_FILE": str(services[0].pin)}
    for name, value in base.items():
        monkeypatch.setenv(name, value)
    prices = load_prices(SOURCE)
    dates = list(prices["date"])
    last_day = max(d for _, d in logged)
    client = MlflowClient(mlflow_uri)
    for extra in (0, 1, 2):
        anchor = dates[dates.index(last_day) + extra]
        monkeypatch.setenv("PRIMER_REPLAY_START", anchor.date().isoformat())
        r = CliRunner().invoke(primer, ["monitor"])
        assert r.exit_code == 0, r.output
        assert f"[replay] the market is known up to {anchor.date()}" in r.output, r.output
        reports = read_reports(log_url)
        for version in (v1, v2):
            answered = {d: p for (v, d), p in logged.items() if v == version}
            want = _expected(prices, answered, anchor)
            waiting = sum(1 for d in answered if d >= anchor)
            assert reports[version].scored_days == want["days"] == len(answered) - waiting >= 2
            for metric in ("log_loss", "brier", "accuracy", "balanced_accuracy"):
                assert reports[version].scores["all"]["model"][metric] == pytest.approx(want[metric], rel=1e-9), \
                    (version, metric)
        assert (reports[v2].scored_days == len([1 for v, _ in logged if v == v2]) - 1) == (extra == 0)

    # MLflow: one run per version, log loss stepped by scored trading day, no step logged twice.
    live = client.get_experiment_by_name(MONITORING_EXPERIMENT_NAME)
    assert live is not None
    for version in (v1, v2):
        answered = {d: p for (v, d), p in logged.items() if v == version}
        want = _expected(prices, answered, anchor)
        [run] = client.search_runs([live.experiment_id], f"tags.model_version = '{version}'")
        history = sorted(client.get_metric_history(run.info.run_id, "log_loss"), key=lambda m: m.step)
        assert [m.step for m in history] == list(range(1, want["days"] + 1))
        assert history[-1].value == pytest.approx(want["log_loss"], rel=1e-9)
        days = sorted(answered)[: want["days"]]
        assert [m.timestamp for m in history] == [int(d.timestamp() * 1000) for d in days]  # stepped by trading day
