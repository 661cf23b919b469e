"""Scoring the served answers: what each model version said against what happened.

Reads the prediction log (:mod:`contract.prediction_log`), labels each answer with the
realized next-day move (:func:`ml.features.next_day_labels`, the training label) and
scores every served version on its scored days, next to two baselines on the same days:

- climatology: P(up) = the up-rate of the labels known at the answer's as_of (bars before
  as_of, all of the source's history); the training up-rate is not in the log.
- always UP: P(up) = 1.

An answer is scored only once its next trading day's close is in the prices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from contract import prediction_log as schema
from contract.errors import PrimerError, one_line
from contract.evidence import Scores
from contract.registry import public_uri
from ml.evaluate import score
from ml.features import next_day_labels


class MonitorError(PrimerError):
    """The prediction log is not configured, unreachable or unreadable."""


@dataclass(frozen=True)
class VersionReport:
    """One served version over its scored days."""

    model_version: int
    answers: int  # logged answers, scored or not
    scored_days: int
    model: Scores
    climatology: Scores
    always_up: Scores


def read_log(url: str) -> pd.DataFrame:
    """The log's answers as a frame (model_version, as_of, p_up); raises :class:`MonitorError`."""
    if not url.strip():
        raise MonitorError("the prediction log is not configured: set PRIMER_PREDICTION_LOG "
                           "(a SQLAlchemy URL, e.g. sqlite:///PATH/predictions.db)")
    from sqlalchemy import MetaData, create_engine, inspect, select  # imported on use

    table = schema.table(MetaData())
    try:
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                if not inspect(conn).has_table(schema.TABLE_NAME):
                    raise MonitorError(f"prediction log {public_uri(url)}: no {schema.TABLE_NAME} table "
                                       "(the service has recorded no answer there yet)")
                cols = [table.c[schema.MODEL_VERSION], table.c[schema.AS_OF], table.c[schema.P_UP]]
                rows = [tuple(r) for r in conn.execute(select(*cols))]
        finally:
            engine.dispose()
    except MonitorError:
        raise
    except Exception as exc:  # any driver/URL failure: one clear line
        raise MonitorError(f"prediction log {public_uri(url)} is unreachable: {one_line(exc)}") from None
    frame = pd.DataFrame(rows, columns=[schema.MODEL_VERSION, schema.AS_OF, schema.P_UP])
    frame[schema.AS_OF] = pd.to_datetime(frame[schema.AS_OF])
    return frame


def up_rate_before(labels: pd.Series) -> pd.Series:
    """At each date, the up-rate of the labels known then: those of the bars strictly before it.

    The label of the bar before ``d`` needs ``d``'s close, which is known at as_of ``d``.
    NaN (unknown) labels count for nothing; the first date, with no history, gets 0.5.
    """
    known = labels.shift(1)
    ups = known.fillna(0.0).cumsum()
    count = known.notna().astype(float).cumsum()
    return (ups / count.replace(0.0, np.nan)).fillna(0.5)


def score_log(answers: pd.DataFrame, prices: pd.DataFrame) -> list[VersionReport]:
    """One report per model version in ``answers`` (ascending), scored on the days whose label is known."""
    labels = next_day_labels(prices)
    climatology = up_rate_before(labels)
    reports = []
    for version, group in answers.groupby(schema.MODEL_VERSION, sort=True):
        days = pd.DatetimeIndex(group[schema.AS_OF])
        y = labels.reindex(days).to_numpy()
        known = ~np.isnan(y)
        if not known.any():
            continue
        p_up = group[schema.P_UP].to_numpy(dtype=float)[known]
        y_known = y[known].astype(int)
        reports.append(VersionReport(
            model_version=int(str(version)), answers=len(group), scored_days=int(known.sum()),
            model=score(y_known, p_up),
            climatology=score(y_known, climatology.reindex(days).to_numpy()[known]),
            always_up=score(y_known, np.ones(len(y_known))),
        ))
    return reports


def unscored(answers: pd.DataFrame, reports: list[VersionReport]) -> dict[int, int]:
    """Per version, how many logged answers still wait for their next close."""
    scored = {r.model_version: r.scored_days for r in reports}
    counts = answers[schema.MODEL_VERSION].astype(int).value_counts()
    waiting = {int(str(v)): int(n) - scored.get(int(str(v)), 0) for v, n in counts.items()}
    return {v: n for v, n in waiting.items() if n > 0}


def table_text(reports: list[VersionReport]) -> str:
    """The report as a fixed-width table, one row per version."""
    head = ("version", "scored days", "log loss", "Brier", "accuracy", "bal. accuracy",
            "climatology log loss", "always-UP accuracy")
    rows: list[tuple[Any, ...]] = [head]
    for r in reports:
        rows.append((r.model_version, r.scored_days, f"{r.model.log_loss:.4f}", f"{r.model.brier:.4f}",
                     f"{r.model.accuracy:.3f}", f"{r.model.balanced_accuracy:.3f}",
                     f"{r.climatology.log_loss:.4f}", f"{r.always_up.accuracy:.3f}"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows)

