"""The prediction log's schema: one row per answer the service published.

Written by the service (:mod:`bentos.prediction_log`), read later by monitoring.
The primary key is (model_version, as_of): an answer is recorded once however many
replicas or restarts published it; the first writer wins and the others are ignored.

SQLAlchemy is imported inside :func:`table`, never at import time: the service's
supervisor imports this module and must stay light.
"""

from __future__ import annotations

from typing import Any

TABLE_NAME = "prediction_log"
# Column names, in one place for writer and readers.
MODEL_VERSION = "model_version"  # the registered version of spy-direction that answered
AS_OF = "as_of"  # date of the last close the feature row uses
P_UP = "p_up"  # P(next close > last close): threshold-free
STALE = "stale"  # true when the row stored at training time was used (no fresh market data)
FEATURES = "features"  # JSON object {feature column: value} of the row that was scored
PUBLISHED_AT = "published_at"  # UTC time the answer was first published
HOST = "host"  # which serving process published it
PID = "pid"
KEY = (MODEL_VERSION, AS_OF)


def table(metadata: Any) -> Any:
    """The SQLAlchemy ``Table`` of the log, attached to ``metadata``."""
    from sqlalchemy import Boolean, Column, Date, DateTime, Float, Integer, String, Table, Text

    return Table(
        TABLE_NAME, metadata,
        Column(MODEL_VERSION, Integer, primary_key=True, autoincrement=False),
        Column(AS_OF, Date, primary_key=True),
        Column(P_UP, Float, nullable=False),
        Column(STALE, Boolean, nullable=False),
        Column(FEATURES, Text, nullable=False),
        Column(PUBLISHED_AT, DateTime(timezone=True), nullable=False),
        Column(HOST, String(255), nullable=False),
        Column(PID, Integer, nullable=False),
    )
