"""``primer monitor``: how the served versions' answers turned out (scoring only, for now)."""

from __future__ import annotations

import click

from contract.settings import ServingSettings


@click.command("monitor")
def monitor() -> None:
    """Score every served model version on the answers it published.

    Reads the prediction log (PRIMER_PREDICTION_LOG, the service's setting: a SQLAlchemy
    URL) and the prices of PRIMER_DATA_SOURCE (the service's source). Each logged answer
    whose next trading day's close is known is labelled as training labels rows (next
    close > as_of close); answers still waiting for it are counted, not scored.

    One row per version, over its scored days: log loss, Brier, accuracy and balanced
    accuracy of its P(up) (threshold 0.5), then climatology's log loss (P(up) = the
    up-rate of the labels known at each as_of) and always-UP's accuracy on the same days.
    See docs/monitoring.md.
    """
    from ml import monitor as scoring  # pandas, sklearn, SQLAlchemy: imported on use
    from ml.data import load_prices

    settings = ServingSettings.load()
    answers = scoring.read_log(settings.prediction_log)
    if answers.empty:
        click.echo("the prediction log holds no answer yet")
        return
    prices = load_prices(settings.data_spec(), seed=settings.synthetic_seed)
    reports = scoring.score_log(answers, prices)
    if reports:
        click.echo(scoring.table_text(reports))
    else:
        click.echo("no answer is scored yet: every logged answer waits for its next close")
    for version, waiting in sorted(scoring.unscored(answers, reports).items()):
        click.echo(f"version {version}: {waiting} answer(s) wait for their next close")
