"""Scoring the served answers: what each model version said against what happened.

Reads the prediction log (:mod:`contract.prediction_log`), labels each answer with the
realized next-day move (:func:`ml.features.next_day_labels`, the training label) and
scores every served version on its scored days, next to two baselines on the same days:

- climatology: P(up) = the up-rate of the labels known at the answer's as_of, over the
  training window's length (``train_years``): what the gate's climatology recipe forecasts.
- always UP: P(up) = 1.

An answer is scored only once its next trading day's close is in the prices. Each version
gets a :class:`contract.live_report.LiveReport`: all its scored days and the rolling
window, and the gate's own paired test with climatology as the challenger, so "worse than
climatology" means here what it means for a promotion. The reports are written to the
``live_report`` table beside the log, where the service reads them for ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from contract import live_report as reports_table
from contract import prediction_log as schema
from contract.errors import PrimerError, one_line
from contract.live_report import SCORE_METRICS, DriftStatus, LiveReport
from contract.monitoring import Monitoring
from contract.registry import public_uri
from contract.significance import GateSpec, PairedTest, SignificanceError, paired_test
from ml.evaluate import score
from ml.features import next_day_labels
from ml.folds import log_losses

LABEL = "label"
CLIMATOLOGY = "climatology"


class MonitorError(PrimerError):
    """The prediction log is not configured, unreachable or unreadable."""


@dataclass(frozen=True)
class ScoredDays:
    """One version's answers, labelled: ``days`` holds only the scored ones, in as_of order."""

    model_version: int
    answers: int  # logged answers, scored or not
    days: pd.DataFrame  # index as_of; columns p_up, label, climatology, features (JSON text)

    def losses(self, column: str) -> np.ndarray:
        return log_losses(self.days[LABEL], self.days[column])


def _engine(url: str) -> Any:
    if not url.strip():
        raise MonitorError("the prediction log is not configured: set PRIMER_PREDICTION_LOG "
                           "(a SQLAlchemy URL, e.g. sqlite:///PATH/predictions.db)")
    from sqlalchemy import create_engine  # imported on use

    return create_engine(url)


def _read_rows(url: str, table: Any, columns: list[str]) -> list[tuple[Any, ...]]:
    """``columns`` of every row of ``table`` ([] when the table does not exist yet); :class:`MonitorError`
    in one line when the database cannot be reached or read."""
    from sqlalchemy import inspect, select

    try:
        engine = _engine(url)
        try:
            with engine.connect() as conn:
                if not inspect(conn).has_table(table.name):
                    return []
                return [tuple(r) for r in conn.execute(select(*(table.c[c] for c in columns)))]
        finally:
            engine.dispose()
    except MonitorError:
        raise
    except Exception as exc:  # any driver/URL failure: one clear line
        raise MonitorError(f"prediction log {public_uri(url)} is unreachable: {one_line(exc)}") from None


def read_log(url: str) -> pd.DataFrame:
    """The log's answers as a frame (model_version, as_of, p_up, features); none when no table exists yet."""
    from sqlalchemy import MetaData

    columns = [schema.MODEL_VERSION, schema.AS_OF, schema.P_UP, schema.FEATURES]
    frame = pd.DataFrame(_read_rows(url, schema.table(MetaData()), columns), columns=columns)
    frame[schema.AS_OF] = pd.to_datetime(frame[schema.AS_OF])
    return frame


def up_rate_before(labels: pd.Series, window: int) -> pd.Series:
    """At each date, the up-rate of the last ``window`` labels known then (bars strictly before it).

    The label of the bar before ``d`` needs ``d``'s close, which is known at as_of ``d``.
    ``window`` is the training window's length in rows, so this is the forecast the gate's
    climatology recipe makes (the training rows' up-rate). NaN (unknown) labels count for
    nothing; the first date, with no history, gets 0.5.
    """
    known = labels.shift(1)
    ups = known.fillna(0.0).rolling(window, min_periods=1).sum()
    count = known.notna().astype(float).rolling(window, min_periods=1).sum()
    return (ups / count.replace(0.0, np.nan)).fillna(0.5)


def scored_days(answers: pd.DataFrame, prices: pd.DataFrame, training_rows: int) -> list[ScoredDays]:
    """Per model version (ascending), its answers whose label is known in ``prices``; climatology
    is the up-rate of the ``training_rows`` labels known before each as_of."""
    labels = next_day_labels(prices)
    climatology = up_rate_before(labels, training_rows)
    out = []
    for version, group in answers.groupby(schema.MODEL_VERSION, sort=True):
        group = group.sort_values(schema.AS_OF)
        days = pd.DatetimeIndex(group[schema.AS_OF], name=schema.AS_OF)
        frame = pd.DataFrame({
            schema.P_UP: group[schema.P_UP].to_numpy(dtype=float),
            LABEL: labels.reindex(days).to_numpy(),
            CLIMATOLOGY: climatology.reindex(days).to_numpy(),
            schema.FEATURES: group[schema.FEATURES].to_numpy() if schema.FEATURES in group else None,
        }, index=days)
        out.append(ScoredDays(int(str(version)), len(group), frame.dropna(subset=[LABEL])))
    return out


def window_scores(days: pd.DataFrame) -> dict[str, dict[str, float]]:
    """scorer -> metric -> value over ``days`` (model, climatology and always UP on the same days)."""
    y = days[LABEL].to_numpy().astype(int)
    probabilities = {"model": days[schema.P_UP].to_numpy(), "climatology": days[CLIMATOLOGY].to_numpy(),
                     "always_up": np.ones(len(y))}
    return {name: {m: float(v) for m in SCORE_METRICS if (v := score(y, p).get(m)) is not None}
            for name, p in probabilities.items()}


def versus_climatology(scored: ScoredDays, gate: GateSpec) -> PairedTest | None:
    """The gate's paired test with climatology as the challenger: passing means the model is worse."""
    try:
        return paired_test(scored.losses(CLIMATOLOGY), scored.losses(schema.P_UP), level=gate.level, test=gate.test)
    except SignificanceError:  # fewer than 3 days: no verdict yet
        return None


def drift_of(scored: ScoredDays, prices: pd.DataFrame, client: Any, thresholds: Monitoring) -> DriftStatus:
    """Drift for the version (:mod:`ml.drift`): its training window (read from its MLflow run) against
    the ``drift_window_days`` bars up to its last scored day (the market it answered in), and its
    logged rows against the rows rebuilt now from the same bars."""
    from ml.drift import drift_from_features, served_rows, training_window
    from ml.features import build_features

    train_start, train_end = training_window(client, scored.model_version)
    features = build_features(prices)
    served = served_rows(scored.days.index, scored.days[schema.FEATURES])
    return drift_from_features(features, train_start, train_end, scored.days.index[-1].date(), served, thresholds)


def live_report(scored: ScoredDays, gate: GateSpec, thresholds: Monitoring, drift: DriftStatus | None = None,
                now: datetime | None = None, notes: Iterable[str] = ()) -> LiveReport:
    """The version's report as of its last scored day (``scored.days`` must not be empty)."""
    days = scored.days
    scores = {"all": window_scores(days)}
    if len(days) >= thresholds.rolling_days:
        scores["rolling"] = window_scores(days.iloc[-thresholds.rolling_days:])
    test = versus_climatology(scored, gate)
    notes = list(notes)
    if len(days) < thresholds.min_live_days:
        notes.append(f"{len(days)} scored day(s), fewer than min_live_days {thresholds.min_live_days}: no verdict")
    warranted = bool(test is not None and len(days) >= thresholds.min_live_days and test.passes(gate.min_effect))
    return LiveReport(
        model_version=scored.model_version, as_of=days.index[-1].date().isoformat(), scored_days=len(days),
        rolling_days=thresholds.rolling_days, scores=scores,
        versus_climatology=test.to_dict() if test is not None else None, demotion_warranted=warranted,
        drift=drift, updated_at=(now or datetime.now(UTC)).isoformat(timespec="seconds"), notes=notes,
    )


def step_series(scored: ScoredDays, gate: GateSpec, thresholds: Monitoring, first: int = 1
                ) -> list[tuple[int, pd.Timestamp, dict[str, float]]]:
    """(step, trading day, metrics) for steps ``first``..N: the record as it stood after each scored day.

    Step k is the k-th scored trading day; its metrics cover days 1..k (``rolling_*``: the last
    ``rolling_days`` of them, once there are that many).
    """
    out = []
    clim_loss, model_loss = scored.losses(CLIMATOLOGY), scored.losses(schema.P_UP)
    for k in range(max(first, 1), len(scored.days) + 1):
        upto = scored.days.iloc[:k]
        scores = window_scores(upto)
        metrics = {**scores["model"], "climatology_log_loss": scores["climatology"]["log_loss"],
                   "always_up_accuracy": scores["always_up"]["accuracy"],
                   "improvement_over_climatology": float(np.mean(clim_loss[:k] - model_loss[:k]))}
        if k >= thresholds.rolling_days:
            rolling = window_scores(upto.iloc[-thresholds.rolling_days:])
            metrics |= {"rolling_log_loss": rolling["model"]["log_loss"],
                        "rolling_climatology_log_loss": rolling["climatology"]["log_loss"]}
        if k >= 3:
            test = paired_test(clim_loss[:k], model_loss[:k], level=gate.level, test=gate.test)
            metrics["p_worse_than_climatology"] = test.p_value
        out.append((k, upto.index[-1], metrics))
    return out


def unscored(scored: Iterable[ScoredDays]) -> dict[int, int]:
    """Per version, how many logged answers still wait for their next close."""
    return {s.model_version: s.answers - len(s.days) for s in scored if s.answers > len(s.days)}


def write_reports(url: str, reports: Iterable[LiveReport]) -> None:
    """Insert or replace each version's report in the ``live_report`` table (created if missing)."""
    from sqlalchemy import MetaData

    table = reports_table.table(MetaData())
    rows = [{reports_table.MODEL_VERSION: r.model_version, reports_table.REPORT: r.to_json(),
             reports_table.UPDATED_AT: datetime.fromisoformat(r.updated_at)} for r in reports]
    if not rows:
        return
    engine = _engine(url)
    try:
        table.create(engine, checkfirst=True)
        with engine.begin() as conn:
            conn.execute(_upsert(engine.dialect.name, table), rows)
    except Exception as exc:
        raise MonitorError(f"writing live reports to {public_uri(url)} failed: {one_line(exc)}") from None
    finally:
        engine.dispose()


def _upsert(dialect: str, table: Any) -> Any:
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
    else:
        raise MonitorError(f"live reports: unsupported database {dialect!r} (use sqlite:// or postgresql://)")
    stmt = insert(table)
    replaced = {c: stmt.excluded[c] for c in (reports_table.REPORT, reports_table.UPDATED_AT)}
    return stmt.on_conflict_do_update(index_elements=[reports_table.MODEL_VERSION], set_=replaced)


def read_reports(url: str) -> dict[int, LiveReport]:
    """Every version's last report ({} when the monitor never wrote one); raises :class:`MonitorError`."""
    from sqlalchemy import MetaData

    rows = _read_rows(url, reports_table.table(MetaData()), [reports_table.REPORT])
    reports = [LiveReport.from_json(text) for (text,) in rows]
    return {r.model_version: r for r in reports}


def table_text(reports: Iterable[LiveReport]) -> str:
    """The reports as a fixed-width table, one row per version."""
    head = ("version", "scored days", "log loss", "Brier", "accuracy", "bal. accuracy",
            "climatology log loss", "always-UP accuracy", "rolling log loss", "p worse")
    rows: list[tuple[Any, ...]] = [head]
    for r in reports:
        model, clim, up = (r.scores["all"][s] for s in ("model", "climatology", "always_up"))
        rolling = r.scores.get("rolling", {}).get("model", {}).get("log_loss")
        p = r.versus_climatology["p_value"] if r.versus_climatology else None
        rows.append((r.model_version, r.scored_days, f"{model['log_loss']:.4f}", f"{model['brier']:.4f}",
                     f"{model['accuracy']:.3f}", f"{model['balanced_accuracy']:.3f}", f"{clim['log_loss']:.4f}",
                     f"{up['accuracy']:.3f}", "-" if rolling is None else f"{rolling:.4f}",
                     "-" if p is None else f"{p:.3f}"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def summary_line(r: LiveReport) -> str:
    """One line for ``primer status`` and ``primer up``: the live record and its verdict."""
    model, clim = r.scores["all"]["model"]["log_loss"], r.scores["all"]["climatology"]["log_loss"]
    line = (f"v{r.model_version}: {r.scored_days} scored day(s) to {r.as_of}, log loss {model:.4f} "
            f"vs climatology {clim:.4f}")
    if r.versus_climatology is not None:
        line += f" (p worse = {r.versus_climatology['p_value']:.3f})"
    line += "; DEMOTION WARRANTED" if r.demotion_warranted else ""
    if r.drift is not None:
        alerts = [check for check, on in r.drift.alerts.items() if on]
        line += f"; drift: {', '.join(alerts) if alerts else 'none'}"
    return line
