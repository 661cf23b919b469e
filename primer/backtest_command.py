"""``primer backtest``: replay the promotion loop over history (``ml.backtest``) under the policy file."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import click

from contract.errors import PrimerError


class BacktestError(PrimerError):
    """The replay could not run (data, windows); the message says why."""


@click.command("backtest")
@click.option("--source", metavar="SPEC", required=True,
              help="Data source: csv:PATH (real prices) | synthetic[:SEED[:SIGNAL]] | yfinance.")
@click.option("--from", "start", type=click.DateTime(formats=["%Y-%m-%d"]), required=True, metavar="YYYY-MM-DD",
              help="First anchor.")
@click.option("--to", "end", type=click.DateTime(formats=["%Y-%m-%d"]), required=True, metavar="YYYY-MM-DD",
              help="Last anchor.")
@click.option("--every", type=click.IntRange(min=1), default=5, show_default=True, metavar="N",
              help="Trading days between anchors (5 = weekly, as a daily CronJob merged weekly).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where report.md, report.json and champion_timeline.png go. Default: ./backtest-FROM-TO")
@click.option("--candidates", "candidates_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Candidate grid YAML. [default: PRIMER_CANDIDATES_FILE or the packaged ml/candidates.yaml]")
@click.option("--eval-days", type=int, default=None, metavar="DAYS",
              help="Walk-forward comparison days per decision. [default: PRIMER_EVAL_DAYS or 1000]")
@click.option("--train-years", type=float, default=None, metavar="YEARS",
              help="Training window cap in years. [default: PRIMER_TRAIN_YEARS or 10]")
def backtest(source: str, start: datetime, end: datetime, every: int, out_dir: Path | None,
             candidates_file: Path | None, eval_days: int | None, train_years: float | None) -> None:
    """Replay the loop over history in one process: at every N-th trading day from --from to --to,
    train as `primer train` would (no MLflow), let the gate in the policy file decide, merge every
    proposal. Prints each decision and the served track record (log loss, accuracy, balanced
    accuracy) against deploying every challenger, never re-promoting, and climatology."""
    from contract.settings import TrainSettings
    from ml.backtest import run_backtest, save_report
    from ml.data import DataSourceError, load_prices
    from ml.pipeline import PipelineConfig
    from ml.train import load_grid
    from promotion.policy import decide, load_policy

    if end < start:
        raise click.BadParameter("--to is before --from", param_hint="--to")
    settings = TrainSettings.load(data_source=source, candidates_file=candidates_file, eval_days=eval_days,
                                  train_years=train_years)
    policy, grid = load_policy(settings.policy_path()), load_grid(settings.candidates_file)
    try:  # past --to too: the last anchor's served days need their labels
        prices = load_prices(source, end=end.date() + timedelta(days=3 * every + 10), seed=settings.synthetic_seed)
    except DataSourceError as exc:
        raise BacktestError(str(exc)) from exc
    config = PipelineConfig(settings)
    try:
        report = run_backtest(prices, grid, source=source, start=start.date(), end=end.date(), every=every,
                              eval_days=settings.eval_days, train_rows=config.train_rows, spec=policy.gate,
                              decide=lambda e: decide(e, policy), cache_dir=settings.fold_cache_path(),
                              echo=click.echo)
    except ValueError as exc:  # too little data for the windows, one-class folds
        raise BacktestError(f"{exc}") from exc
    out = out_dir or Path(f"backtest-{start.date()}-{end.date()}")
    paths = save_report(report, out)
    click.echo(f"\n{report.promotions} promotion(s) in {len(report.decisions)} decisions; served "
               f"{report.served_days} days:")
    for track, s in report.served.items():
        click.echo(f"  {track:<17} log loss {s.log_loss:.4f}  accuracy {s.accuracy:.3f}  "
                   f"balanced accuracy {s.balanced_accuracy:.3f}")
    click.echo("report: " + ", ".join(str(p) for p in paths))
