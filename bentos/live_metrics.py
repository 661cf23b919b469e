"""The served version's live report (written by ``primer monitor``), exported on ``/metrics``.

A background thread re-reads the ``live_report`` row of the version being served from the
prediction log's database every ``PRIMER_LIVE_REFRESH_SECONDS`` (at once when the served
version changes) and publishes it as an immutable :class:`LiveSnapshot`. ``/metrics`` renders
that snapshot under the names of :mod:`contract.live_report`; ``/model`` shows it as ``live``.

Why not multiprocess Gauges: BentoML runs prometheus_client in multiprocess mode, where a
label set once written cannot be removed (``Gauge.remove`` only warns, the value stays in the
process's mmap file), so a version swapped out would go on exporting its old live values as if
current. Rendering the snapshot at scrape time exports exactly the served version's report, or
nothing: no report, a missing table or a database that is down leaves the request path
untouched and only ``/model``'s ``live.error`` says why.

SQLAlchemy and prometheus_client are imported in the thread and at scrape time, never at import
(the service's supervisor imports this module).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from contract import live_report as names
from contract.errors import one_line
from contract.live_report import LiveReport
from contract.registry import public_uri

log = logging.getLogger("bentoml.primer")

# (metric name, help, labels, value)
Sample = tuple[str, str, dict[str, str], float]

VERSION_POLL_SECONDS = 0.5  # how soon a swapped version's report replaces the old one


@dataclass(frozen=True)
class LiveSnapshot:
    """What was last read for one served version: its report, or why there is none."""

    model_version: int
    report: LiveReport | None
    error: str | None
    read_at: str  # ISO timestamp (UTC) of the read
    samples: tuple[Sample, ...] = ()  # the report's /metrics values, computed once per read


class LiveMetrics:
    """Keeps the served version's live report current, off the request path."""

    def __init__(self, url: str, refresh_seconds: float, served_version: Callable[[], int | None]) -> None:
        self.url = url
        self.refresh_seconds = refresh_seconds
        self._served_version = served_version
        self.snapshot: LiveSnapshot | None = None  # replaced as a whole: readers need no lock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._engine: Any = None

    # -- the reader thread ---------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="primer-live-report", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._engine is not None:  # its pooled connection to PostgreSQL, closed rather than dropped
            self._engine.dispose()

    def _run(self) -> None:
        read_version, read_at = None, 0.0
        while not self._stop.is_set():
            version = self._served_version()
            due = time.monotonic() - read_at >= self.refresh_seconds
            if version is not None and (version != read_version or due):
                try:
                    self.refresh(version)
                except Exception:  # never let the reader die
                    log.exception("unexpected error reading the live report")
                read_version, read_at = version, time.monotonic()
            self._stop.wait(min(VERSION_POLL_SECONDS, self.refresh_seconds))

    def refresh(self, version: int) -> LiveSnapshot:
        """Read ``version``'s report now and publish it (or the reason there is none)."""
        report: LiveReport | None = None
        error: str | None = None
        samples: tuple[Sample, ...] = ()
        try:
            report = self._read(version)
            if report is None:
                error = f"no live report for version {version} yet (primer monitor has not scored it)"
            else:
                samples = tuple(report_samples(report))
        except Exception as exc:  # a missing table, a database down, a row that does not parse
            report, error = None, f"reading {names.TABLE_NAME} from {public_uri(self.url)} failed: {one_line(exc)}"
        before = self.snapshot
        if error and (before is None or before.error != error):
            log.info("live report: %s", error)
        self.snapshot = LiveSnapshot(version, report, error, datetime.now(UTC).isoformat(timespec="seconds"),
                                     samples)
        return self.snapshot

    def _read(self, version: int) -> LiveReport | None:
        from sqlalchemy import MetaData, create_engine, select

        if self._engine is None:
            self._engine = create_engine(self.url, pool_pre_ping=True)
        table = names.table(MetaData())
        with self._engine.connect() as conn:
            text = conn.execute(select(table.c[names.REPORT]).where(table.c[names.MODEL_VERSION] == version)).scalar()
        return LiveReport.from_json(text) if text is not None else None

    # -- what the service shows ----------------------------------------------------
    def current(self) -> LiveSnapshot | None:
        """The snapshot, only if it is about the version serving now (a swap hides the old one at once)."""
        snapshot = self.snapshot
        return snapshot if snapshot is not None and snapshot.model_version == self._served_version() else None

    def status(self) -> dict[str, Any]:
        """``/model``'s ``live`` object."""
        snapshot = self.current()
        report = snapshot.report if snapshot is not None else None
        error = snapshot.error if snapshot is not None else (
            "no model served yet" if self._served_version() is None else "not read yet")
        every = report.scores.get("all", {}) if report is not None else {}
        vs = report.versus_climatology if report is not None else None
        return {
            "url": public_uri(self.url),
            "model_version": str(snapshot.model_version) if snapshot is not None else None,
            "as_of": report.as_of if report else None,
            "scored_days": report.scored_days if report else None,
            "log_loss_model": every.get("model", {}).get("log_loss"),
            "log_loss_climatology": every.get("climatology", {}).get("log_loss"),
            "worse_than_climatology_p_value": vs.get("p_value") if vs else None,
            "demotion_warranted": report.demotion_warranted if report else None,
            "drift_alerts": dict(report.drift.alerts) if report and report.drift else None,
            "updated_at": report.updated_at if report else None,
            "read_at": snapshot.read_at if snapshot is not None else None,
            "error": error,
        }


def report_samples(report: LiveReport) -> Iterator[Sample]:
    """(metric name, help, labels, value) for every live value of ``report``."""
    version = {"model_version": str(report.model_version)}
    yield names.METRIC_SCORED_DAYS, "Answers of the served version scored against the next close", version, float(
        report.scored_days)
    for window, scorers in sorted(report.scores.items()):
        for scorer, metrics in sorted(scorers.items()):
            for metric, value in sorted(metrics.items()):
                if metric in names.SCORE_METRICS:
                    yield (names.score_metric_name(metric), f"Live {metric} of the served version's answers, "
                           "by window and scorer (model, climatology, always_up on the same days)",
                           {**version, "window": window, "scorer": scorer}, float(value))
    vs = report.versus_climatology
    if vs is not None:
        # The monitor's test has climatology as the challenger: its improvement > 0 means the model is worse.
        yield (names.METRIC_IMPROVEMENT, "Mean daily log loss of climatology minus the model's (> 0: the model "
               "beats climatology)", version, -float(vs["improvement"]))
        yield (names.METRIC_WORSE_P_VALUE, "One-sided p-value of the paired test that climatology beats the model",
               version, float(vs["p_value"]))
    yield (names.METRIC_DEMOTION, "1 when the live evidence says roll the served version back", version,
           float(report.demotion_warranted))
    yield from _drift_samples(report, version)
    yield (names.METRIC_REPORT_AGE, "When primer monitor wrote the served version's live report (Unix time)",
           version, _utc(datetime.fromisoformat(report.updated_at)).timestamp())


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _drift_samples(report: LiveReport, version: dict[str, str]) -> Iterator[Sample]:
    drift = report.drift
    if drift is None:
        return
    for feature, psi in sorted(drift.psi.items()):
        yield (names.METRIC_DRIFT_PSI, "Population stability index of a feature, recent window vs training",
               {**version, "feature": feature}, float(psi))
    for window, rate in (("training", drift.up_rate_training), ("recent", drift.up_rate_recent)):
        yield (names.METRIC_DRIFT_UP_RATE, "Share of UP days, training window vs the recent window",
               {**version, "window": window}, float(rate))
    if drift.skew is not None:
        yield (names.METRIC_DRIFT_SKEW, "Largest |served - rebuilt| feature value over the recent window",
               version, float(drift.skew))
    for check, alerting in sorted(drift.alerts.items()):
        yield (names.METRIC_DRIFT_ALERT, "1 when a drift check is beyond its threshold", {**version, "check": check},
               float(alerting))


def exposition(served_version: int | None, snapshot: LiveSnapshot | None) -> str:
    """The Prometheus text for the version serving now and its live report (appended to ``/metrics``)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily

    families: dict[str, Any] = {}

    def add(name: str, help_text: str, labels: dict[str, str], value: float) -> None:
        family = families.get(name)
        if family is None:
            family = families[name] = GaugeMetricFamily(name, help_text, labels=list(labels))
        family.add_metric(list(labels.values()), value)

    if served_version is not None:
        add(names.METRIC_SERVED_VERSION, "The model version answering now", {}, float(served_version))
    for sample in snapshot.samples if snapshot is not None else ():
        add(*sample)

    class _Snapshot:
        def collect(self) -> Iterator[Any]:
            return iter(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot())
    return generate_latest(registry).decode()
