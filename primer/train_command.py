"""``primer train``: run the training pipeline once with readable progress.

Kept apart from ``ml.pipeline`` so ``primer --help`` does not import MLflow.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import click

from contract.errors import PrimerError
from contract.names import DEFAULT_TRACKING_URI
from contract.settings import TrainSettings
from contract.significance import GateSpec


def _gate(settings: TrainSettings) -> GateSpec:
    """The policy file's test, level and minimum effect (the defaults when it cannot be read:
    the promotion step, if asked for, stops on that file before anything is trained)."""
    from promotion.policy import PolicyError, load_policy

    try:
        return load_policy(settings.policy_path()).gate
    except PolicyError:
        return GateSpec()


def _echo(line: str) -> None:
    click.echo(line, err=line.startswith("WARNING"))


@click.command("train", help=f"""Ingest, validate, build features, train and evaluate candidates, register, propose.

    Needs an MLflow tracking server (MLFLOW_TRACKING_URI, default {DEFAULT_TRACKING_URI}).
    Exit status is non-zero when data validation fails (nothing is registered) or any step fails.
    """)
@click.option("--source", metavar="SPEC",
              help="Data source: yfinance | csv:PATH | synthetic[:SEED]. [env PRIMER_DATA_SOURCE; default yfinance]")
@click.option(
    "--anchor",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    metavar="YYYY-MM-DD",
    help="Last visible trading date. Default: today (live) or the replay clock (PRIMER_MODE=replay).",
)
@click.option("--eval-days", type=int, metavar="DAYS",
              help="Walk-forward comparison: out-of-sample trading days, >= 60. [env PRIMER_EVAL_DAYS; default 1000]")
@click.option("--train-years", type=float, metavar="YEARS",
              help="Training window cap in years. [env PRIMER_TRAIN_YEARS; default 10]")
@click.option(
    "--candidates",
    "candidates_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Candidate grid YAML. [env PRIMER_CANDIDATES_FILE; default: the packaged ml/candidates.yaml]",
)
@click.option("--no-promote", is_flag=True,
              help="Stop after registering; do not hand the result to the promotion step.")
def train_command(
    source: str | None,
    anchor: datetime | None,
    eval_days: int | None,
    train_years: float | None,
    candidates_file: Path | None,
    no_promote: bool,
) -> None:
    from contract.settings import quiet_mlflow
    from ml.pipeline import PipelineConfig, run_pipeline
    from ml.validate import ValidationError
    from promotion.propose import GitProposer

    quiet_mlflow(bounded=True)  # a dead MLflow ends the run in bounded time, with one line
    settings = TrainSettings.load(data_source=source, eval_days=eval_days, train_years=train_years,
                                  candidates_file=candidates_file)
    proposer = None if no_promote else GitProposer(settings)
    config = PipelineConfig(settings, anchor=anchor.date() if anchor else None, proposer=proposer,
                            gate=_gate(settings))
    try:
        result = run_pipeline(config, echo=_echo)
    except ValidationError as exc:
        for v in exc.violations:
            click.echo(f"[validate] FAILED {v}", err=True)
        raise PrimerError(f"data validation failed ({', '.join(dict.fromkeys(exc.rules))}); "
                          "nothing was registered") from exc
    ev = result.evaluation
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())
    click.echo(
        f"[done] {ev.model_name} v{result.version}: {ev.challenger_candidate} on {ev.eval_start}..{ev.eval_end} "
        f"({ev.eval_days} days); {timing}"
    )
    sys.stdout.flush()
