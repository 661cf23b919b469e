"""``primer monitor``: how the served versions' answers turned out, and what to do about it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click

from contract.errors import PrimerError
from contract.settings import MonitorSettings


@dataclass(frozen=True)
class MonitorRun:
    """What one ``primer monitor`` works with, resolved once from the settings."""

    settings: MonitorSettings
    thresholds: Any  # contract.monitoring.Monitoring
    gate: Any  # contract.significance.GateSpec: the promotion gate's own test and level


def _resolve(settings: MonitorSettings) -> MonitorRun:
    from contract.monitoring import load_monitoring
    from promotion.policy import load_policy

    return MonitorRun(settings, load_monitoring(settings.monitoring_path()), load_policy(settings.policy_path()).gate)


def _visible_prices(settings: MonitorSettings) -> Any:
    """The source's bars known now, validated: up to today (live) or up to the replay clock's anchor (replay)."""
    from ml.data import load_prices
    from ml.features import WARMUP_ROWS
    from ml.replay import until_anchor, visible_end
    from ml.validate import Rules, validate_prices

    prices = load_prices(settings.data_spec(), seed=settings.synthetic_seed, end=visible_end(settings))
    # Training's rules, before anything is labelled or written; freshness is not asked: the log's
    # answers are labelled with whatever closes exist.
    prices = validate_prices(prices, rules=Rules(min_rows=WARMUP_ROWS + 2))
    prices, anchor = until_anchor(prices, settings)
    if anchor is not None:
        click.echo(f"[replay] the market is known up to {anchor}")
    return prices


def run_monitor(run: MonitorRun, *, propose: bool) -> None:
    """Score, write the live reports, log them to MLflow, then propose a demotion if warranted."""
    from contract.registry import public_uri
    from ml import monitor as scoring

    settings = run.settings
    answers = scoring.read_log(settings.prediction_log)
    if answers.empty:
        click.echo(f"the prediction log {public_uri(settings.prediction_log)} holds no answer yet")
        return
    prices = _visible_prices(settings)
    scored = scoring.scored_days(answers, prices, _training_rows(settings))
    pinned = _pinned(settings)
    reports = {}
    for s in (s for s in scored if len(s.days)):
        drift, notes = _drift(run, s, prices) if s.model_version == pinned else (None, [])
        reports[s.model_version] = scoring.live_report(s, run.gate, run.thresholds, drift=drift, notes=notes)
    scoring.write_reports(settings.prediction_log, reports.values())
    if reports:
        click.echo(scoring.table_text(reports.values()))
    else:
        click.echo("no answer is scored yet: every logged answer waits for its next close")
    for version, waiting in sorted(scoring.unscored(scored).items()):
        click.echo(f"version {version}: {waiting} answer(s) wait for their next close")
    _log_to_mlflow(run, [s for s in scored if s.model_version in reports], reports)
    if pinned is not None and pinned in reports:
        click.echo(f"live {scoring.summary_line(reports[pinned])}")
        if reports[pinned].demotion_warranted:
            _demote(run, next(s for s in scored if s.model_version == pinned), reports[pinned], prices, propose)
        elif propose:
            _withdraw(run, pinned, f"the live evidence of v{pinned} no longer warrants a demotion "
                                   f"({scoring.summary_line(reports[pinned])})")


def _withdraw(run: MonitorRun, pinned: int, why: str) -> None:
    from promotion.demote import withdraw_demotions
    from promotion.propose import load_promotion

    for url in withdraw_demotions(pinned, load_promotion(run.settings), why):
        click.echo(f"[demote] closed {url}: no longer applies")


def _drift(run: MonitorRun, scored: Any, prices: Any) -> tuple[Any, list[str]]:
    """(DriftStatus, []) for the pinned version, or (None, [why not]): drift never stops the scoring."""
    from contract.errors import one_line
    from contract.registry import client as registry_client
    from ml.monitor import drift_of

    try:
        return drift_of(scored, prices, registry_client(run.settings.tracking_uri), run.thresholds), []
    except Exception as exc:  # MLflow unreachable, a version without its training window, too few rows
        note = f"drift not computed: {one_line(exc)}"
        click.echo(f"warning: v{scored.model_version}: {note}", err=True)
        return None, [note]


def _training_rows(settings: MonitorSettings) -> int:
    """The training window in rows, as ``primer train`` fits with the same PRIMER_TRAIN_YEARS."""
    from ml.pipeline import train_rows_for

    return train_rows_for(settings.train_years)


def _pinned(settings: MonitorSettings) -> int | None:
    """The pinned version; an unreadable pin skips the demotion check (the reports are written)."""
    from contract.pin import PinError, read_pin

    try:
        return read_pin(settings.pin_path()).version
    except PinError as exc:
        click.echo(f"warning: no demotion check: {exc}", err=True)
        return None


def _demote(run: MonitorRun, scored: Any, report: Any, prices: Any, propose: bool) -> None:
    """The pinned version is worse than climatology: choose where to roll back, open the pull request."""
    if not propose or run.thresholds.demotion == "off":
        why = "--no-propose" if not propose else "demotion: off in monitoring.yaml"
        click.echo(f"[demote] v{report.model_version} warrants a demotion; not proposed ({why})")
        return
    from contract.errors import one_line
    from ml.demotion import ClimatologyFit, DemotionError, choose_target
    from ml.tracking import Tracker
    from primer.promotion_commands import pin_history_of, previous_version
    from promotion.demote import propose_demotion
    from promotion.propose import load_promotion

    settings = run.settings
    promotion = load_promotion(settings)
    history = pin_history_of(settings)
    current = history[0].version if history else None
    if current != report.model_version:  # before a climatology version may be registered for nothing
        click.echo(f"[demote] v{report.model_version}: no demotion: git now pins "
                   f"{'nothing' if current is None else f'v{current}'}; the next run judges that pin")
        return
    previous = previous_version(history, report.model_version)
    tracker = Tracker.connect(settings.tracking_uri)
    fit = ClimatologyFit(prices, _training_rows(settings), settings.data_spec(), settings.repo_root())
    try:
        target = choose_target(tracker, pinned=report.model_version, previous=previous, days=scored.days,
                               gate=run.gate, fit=fit)
    except PrimerError:
        raise
    except Exception as exc:  # MLflow failing mid-way: one line, not a traceback
        raise DemotionError(f"choosing the rollback target of v{report.model_version} failed: {one_line(exc)}"
                            ) from exc
    if target is not None:
        click.echo(f"[demote] target v{target.version}: {target.reason}")
    click.echo(f"[demote] {propose_demotion(report, target, promotion, tracker.client).message}")


def _log_to_mlflow(run: MonitorRun, scored: list[Any], reports: dict[int, Any]) -> None:
    """One live run per version in MLflow; prints each run's page (the UI's ML view) or its id."""
    from contract.errors import one_line
    from contract.names import MONITORING_EXPERIMENT_NAME
    from contract.ui import experiment_url, run_url, ui_base
    from ml.live_runs import log_live_record
    from ml.tracking import RegistryError, Tracker

    if not scored:
        return
    tracker = Tracker.connect(run.settings.tracking_uri)
    ui = ui_base(run.settings.tracking_uri)
    try:
        experiment = tracker.experiment_id(MONITORING_EXPERIMENT_NAME)
        for s in scored:
            run_id, added = log_live_record(tracker, s, reports[s.model_version], run.gate, run.thresholds)
            where = run_url(ui, experiment, run_id) if ui is not None else f"run {run_id}"
            click.echo(f"MLflow: live v{s.model_version} +{added} step(s): {where}")
    except PrimerError:
        raise
    except Exception as exc:
        uri = run.settings.tracking_uri
        raise RegistryError(f"logging the live record to MLflow at {uri} failed: {one_line(exc)}") from exc
    if ui is not None:
        click.echo(f"MLflow UI: {experiment_url(ui, experiment)}")


@click.command("monitor")
@click.option("--no-propose", is_flag=True, help="Score and report, but never open a demotion pull request.")
@click.option("--warn-only", is_flag=True,
              help="Report any failure as a warning and exit 0 (the training CronJob: monitoring never blocks "
                   "training).")
def monitor(no_propose: bool, warn_only: bool) -> None:
    """Score every served model version on the answers it published, and act on it.

    Reads the prediction log (PRIMER_PREDICTION_LOG, the service's setting: a SQLAlchemy
    URL) and the prices of PRIMER_DATA_SOURCE (in replay mode, only the bars up to the
    replay clock's anchor: the same clock as training and serving). Each logged answer
    whose next trading day's close is known is labelled as training labels rows (next
    close > as_of close); answers still waiting for it are counted, not scored.

    Per version, over all its scored days and the rolling window (promotion/monitoring.yaml):
    log loss, Brier, accuracy and balanced accuracy of its P(up), the same for climatology
    (the up-rate of the last PRIMER_TRAIN_YEARS of labels known at each as_of) and always-UP on the same days, and the
    gate's paired test (promotion/policy.yaml) asking whether the model is worse than
    climatology. The reports go to the log's database (the service shows them on /metrics)
    and to MLflow (experiment spy-direction-live, one run per version, one step per scored
    day). When the pinned version is significantly worse than climatology, a pull request
    rolls the pin back (never merged automatically). See docs/monitoring.md.
    """
    from contract.settings import quiet_mlflow

    quiet_mlflow(bounded=True)  # a dead MLflow ends the run in about a minute, not after MLflow's long retries
    try:
        run_monitor(_resolve(MonitorSettings.load()), propose=not no_propose)
    except Exception as exc:
        if not warn_only:
            raise
        click.echo(f"warning: primer monitor did not complete: {exc}", err=True)
