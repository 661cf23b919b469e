"""What the live-metrics and dashboard tests share: live reports written as ``primer monitor``
writes them, a parsed ``/metrics`` page, and waiting on a running service."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from contract import live_report as names
from contract.live_report import DriftStatus, LiveReport
from contract.significance import PairedTest
from ml.features import FEATURE_COLUMNS
from tests.support import Service


def live_report(version: int, scored_days: int, *, demotion: bool = False) -> LiveReport:
    """A report as the monitor writes it, every field filled (drift and the paired test included)."""
    # A different value in every cell, so a label mixed up on /metrics shows.
    scores = {window: {scorer: {metric: 0.1 * (m + 1) + 0.01 * s + 0.001 * w + scored_days / 1e5
                                for m, metric in enumerate(names.SCORE_METRICS)}
                       for s, scorer in enumerate(names.SCORERS)}
              for w, window in enumerate(names.WINDOWS)}
    test = PairedTest(test="dm", rows=scored_days, improvement=0.002, std_error=0.01, lags=1, p_value=0.42,
                      level=0.05, bound=-0.01, ci_low=-0.02, ci_high=0.02, mde=0.03)
    drift = DriftStatus(window_days=20, psi={c: 0.05 for c in FEATURE_COLUMNS}, up_rate_training=0.53,
                        up_rate_recent=0.45, up_rate_p_value=0.3, skew=1e-9, skew_rows=20,
                        alerts={check: check == "up_rate" for check in names.DRIFT_CHECKS})
    return LiveReport(model_version=version, as_of="2026-03-04", scored_days=scored_days, rolling_days=20,
                      scores=scores, versus_climatology=test.to_dict(), demotion_warranted=demotion, drift=drift,
                      updated_at=datetime.now(UTC).isoformat(timespec="seconds"))


def write_report(url: str, report: LiveReport) -> None:
    """Insert or replace the version's row (what ``primer monitor`` does after each scoring)."""
    from sqlalchemy import MetaData, create_engine, delete, insert

    engine = create_engine(url)
    table = names.table(MetaData())
    try:
        table.create(engine, checkfirst=True)
        with engine.begin() as conn:
            conn.execute(delete(table).where(table.c[names.MODEL_VERSION] == report.model_version))
            conn.execute(insert(table).values({names.MODEL_VERSION: report.model_version,
                                               names.REPORT: report.to_json(),
                                               names.UPDATED_AT: datetime.now(UTC)}))
    finally:
        engine.dispose()


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a /metrics page, parsed by prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, dict(s.labels), s.value) for family in text_string_to_metric_families(text)
            for s in family.samples]


def wait_for(svc: Service, condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert svc.proc.poll() is None, svc.log_tail()
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; /model: {svc.model()}\n{svc.log_tail()}")


def answer(svc: Service, version: int) -> dict[str, Any]:
    wait_for(svc, lambda: svc.get("/predictionForTomorrow").json().get("model_version") == str(version),
             f"version {version} to answer", timeout=60)
    return dict(svc.get("/predictionForTomorrow").json())
