"""What the monitor concludes about a served version, and how the service shows it.

``primer monitor`` (:mod:`ml.monitor`) writes one :class:`LiveReport` per served model
version into the ``live_report`` table of the prediction log's database (the store the
service already writes to: no new connection, no new credential). The service reads the
report of the version it serves every ``PRIMER_LIVE_REFRESH_SECONDS`` and exports it on
``/metrics`` under the names below, so Prometheus and Grafana see it without a restart.

The metric names are defined here once: the service exports them and
``apps/monitoring``'s dashboard queries them (a test checks the dashboard against a
scraped ``/metrics``).

SQLAlchemy is imported inside :func:`table`, never at import time (the service's
supervisor imports this module and must stay light).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

TABLE_NAME = "live_report"
MODEL_VERSION = "model_version"
REPORT = "report"  # the LiveReport as JSON
UPDATED_AT = "updated_at"

# Windows a score is computed over; scorers scored on the same days.
WINDOWS = ("all", "rolling")
SCORERS = ("model", "climatology", "always_up")
SCORE_METRICS = ("log_loss", "brier", "accuracy", "balanced_accuracy")
# Drift checks, each with its own alert (thresholds: promotion/monitoring.yaml).
DRIFT_CHECKS = ("features", "up_rate", "skew")

# --- the service's /metrics (gauges, labelled by the served model_version) -------------------
METRIC_SCORED_DAYS = "primer_live_scored_days"
# One gauge per score metric, labelled window and scorer: primer_live_log_loss{window="rolling",scorer="model"}
METRIC_SCORE_PREFIX = "primer_live_"
METRIC_IMPROVEMENT = "primer_live_improvement_over_climatology"  # nats/day, > 0: the model beats climatology
METRIC_WORSE_P_VALUE = "primer_live_worse_than_climatology_p_value"  # the gate's test, climatology as challenger
METRIC_DEMOTION = "primer_live_demotion_warranted"  # 1 when the evidence says roll back
METRIC_DRIFT_PSI = "primer_drift_psi"  # label feature
METRIC_DRIFT_UP_RATE = "primer_drift_up_rate"  # label window="training" | "recent"
METRIC_DRIFT_SKEW = "primer_drift_skew"  # largest |served - rebuilt| over the recent window, in feature units
METRIC_DRIFT_ALERT = "primer_drift_alert"  # label check (DRIFT_CHECKS); 1 = beyond its threshold
METRIC_REPORT_AGE = "primer_live_report_timestamp_seconds"  # when the monitor wrote the report (Unix time)
METRIC_SERVED_VERSION = "primer_served_model_version"  # the version answering now (its number)


def score_metric_name(metric: str) -> str:
    """``primer_live_<metric>`` for one of :data:`SCORE_METRICS`."""
    return METRIC_SCORE_PREFIX + metric


def live_metric_names() -> tuple[str, ...]:
    """Every name the service exports from a live report (gauges; Prometheus sees them as-is)."""
    return (METRIC_SCORED_DAYS, *(score_metric_name(m) for m in SCORE_METRICS), METRIC_IMPROVEMENT,
            METRIC_WORSE_P_VALUE, METRIC_DEMOTION, METRIC_DRIFT_PSI, METRIC_DRIFT_UP_RATE, METRIC_DRIFT_SKEW,
            METRIC_DRIFT_ALERT, METRIC_REPORT_AGE)


@dataclass(frozen=True)
class DriftStatus:
    """The recent window against the version's training window (:mod:`ml.drift`)."""

    window_days: int  # recent rows compared
    psi: dict[str, float]  # per feature
    up_rate_training: float
    up_rate_recent: float
    up_rate_p_value: float  # two-sided: the recent up-rate differs from the training one
    skew: float | None  # largest |served - rebuilt| feature value; None when no served row could be rebuilt
    skew_rows: int  # served rows compared with their rebuilt row
    alerts: dict[str, bool]  # one per DRIFT_CHECKS
    # Family-wise p-value of the feature check (the recent window's PSIs against the training window's
    # own windows); None when the training window is too short to calibrate it (no feature alert then).
    features_p_value: float | None = None

    @property
    def alerting(self) -> bool:
        return any(self.alerts.values())


@dataclass(frozen=True)
class LiveReport:
    """One served version's live record, as of its last scored trading day."""

    model_version: int
    as_of: str  # the last scored answer's as_of (ISO date)
    scored_days: int
    rolling_days: int  # the rolling window's length in scored days (promotion/monitoring.yaml)
    # window -> scorer -> metric -> value; the rolling window is absent while fewer days are scored.
    scores: dict[str, dict[str, dict[str, float]]]
    # The gate's paired test with climatology as the challenger (contract.significance.PairedTest.to_dict):
    # improvement > 0 means climatology's log loss is lower, i.e. the model is worse. None: too few days.
    versus_climatology: dict[str, Any] | None
    demotion_warranted: bool
    drift: DriftStatus | None
    updated_at: str  # ISO timestamp (UTC) the monitor wrote it
    notes: list[str] = field(default_factory=list)  # why something is missing, in words

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> LiveReport:
        data = json.loads(text)
        drift = data.pop("drift", None)
        return cls(**data, drift=DriftStatus(**drift) if drift is not None else None)


def table(metadata: Any) -> Any:
    """The SQLAlchemy ``Table`` of the reports, attached to ``metadata``."""
    from sqlalchemy import Column, DateTime, Integer, Table, Text

    return Table(
        TABLE_NAME, metadata,
        Column(MODEL_VERSION, Integer, primary_key=True, autoincrement=False),
        Column(REPORT, Text, nullable=False),
        Column(UPDATED_AT, DateTime(timezone=True), nullable=False),
    )
