"""The live record in MLflow: one run per served version, its metrics stepped by trading day.

``primer monitor`` keeps a run named ``live v<N>`` in the ``spy-direction-live``
experiment for each version it scored. Step k holds the record as it stood after the
version's k-th scored trading day (``ml.monitor.step_series``), timestamped with that
day, so the MLflow UI plots log loss against climatology over the version's life. Each
monitor run logs only the steps the run does not have yet: re-running adds nothing twice.
The version itself is tagged with its run (``live_run``) to link the two in the UI.
"""

from __future__ import annotations

import calendar
from dataclasses import asdict

from mlflow.entities import Metric, RunTag

from contract import registry
from contract.live_report import DriftStatus, LiveReport
from contract.monitoring import Monitoring
from contract.names import MODEL_NAME, MONITORING_EXPERIMENT_NAME, Tag
from contract.significance import GateSpec
from ml.monitor import ScoredDays, step_series
from ml.tracking import Tracker

VERSION_TAG = "model_version"
STEP_KEY = "log_loss"  # always logged at every step: its history says how far the run got
BATCH = 900  # MLflow's log_batch takes at most 1,000 metrics per call


def live_run(tracker: Tracker, version: int) -> str:
    """The version's live run id, created (and linked from the version) the first time."""
    experiment = tracker.experiment_id(MONITORING_EXPERIMENT_NAME)
    found = tracker.client.search_runs([experiment], f"tags.{VERSION_TAG} = '{version}'", max_results=1)
    if found:
        return str(found[0].info.run_id)
    run_id = tracker.start_run(experiment, f"live v{version}", {
        VERSION_TAG: str(version),
        "mlflow.note.content": f"Live record of {MODEL_NAME} v{version}: its served answers scored against "
                               "the next close, step = scored trading day (primer monitor).",
    })
    tracker.end_run(run_id)  # a record, not a process: it stays FINISHED and grows
    if registry.get_version(tracker.client, version) is not None:  # pruned versions keep their record
        tracker.client.set_model_version_tag(MODEL_NAME, str(version), Tag.LIVE_RUN.value, run_id)
    return run_id


def drift_metrics(drift: DriftStatus) -> dict[str, float]:
    """The drift checks as MLflow metrics: PSI per feature, up-rates, skew, and 0/1 per alert."""
    out = {f"drift_psi_{feature}": value for feature, value in drift.psi.items()}
    out |= {"drift_up_rate_training": drift.up_rate_training, "drift_up_rate_recent": drift.up_rate_recent}
    if drift.skew is not None:
        out["drift_skew"] = drift.skew
    if drift.features_p_value is not None:
        out["drift_features_p_value"] = drift.features_p_value
    return out | {f"drift_alert_{check}": float(on) for check, on in drift.alerts.items()}


def logged_steps(tracker: Tracker, run_id: str) -> int:
    history = tracker.client.get_metric_history(run_id, STEP_KEY)
    return max((m.step for m in history), default=0)


def log_live_record(tracker: Tracker, scored: ScoredDays, report: LiveReport, gate: GateSpec,
                    thresholds: Monitoring) -> tuple[str, int]:
    """Log the steps the version's run lacks and the current report; (run id, steps added).

    Nothing new scored (a version retired long ago, or a rerun): nothing is written, so a
    CronJob every 5 minutes does not re-upload the record of every version ever served.
    """
    run_id = live_run(tracker, scored.model_version)
    steps = step_series(scored, gate, thresholds, first=logged_steps(tracker, run_id) + 1)
    if not steps:
        return run_id, 0
    if report.drift is not None:  # drift as of the newest step (it looks at a window, not a day)
        steps[-1][2].update(drift_metrics(report.drift))
    # Whole steps per request, each step's STEP_KEY last: a request that fails leaves no step
    # marked logged (STEP_KEY is the progress mark) with some of its metrics missing.
    batch: list[Metric] = []
    for step, day, values in steps:
        stamp = calendar.timegm(day.timetuple()) * 1000
        ordered = sorted(values.items(), key=lambda kv: kv[0] == STEP_KEY)
        if len(batch) + len(ordered) > BATCH:
            tracker.client.log_batch(run_id, metrics=batch)
            batch = []
        batch += [Metric(name, value, stamp, step) for name, value in ordered]
    tracker.client.log_batch(run_id, metrics=batch)
    tags = {"as_of": report.as_of, "scored_days": str(report.scored_days),
            "demotion_warranted": str(report.demotion_warranted).lower()}
    if report.drift is not None:
        tags["drift_alerts"] = ",".join(k for k, on in report.drift.alerts.items() if on) or "none"
    tracker.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
    tracker.log_dict(run_id, asdict(report), "live_report.json")
    return run_id, len(steps)
