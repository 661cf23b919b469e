"""The training pipeline, one run: ingest -> validate -> features -> train -> evaluate -> register -> propose.

``run_pipeline(config)`` does the work and returns a :class:`PipelineResult`;
``primer train`` (``primer.train_command``) is a thin wrapper that prints progress.
Nothing touches MLflow before the data passed validation, so bad data never
leaves a run or a model version behind.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from ml import data as data_mod
from ml.evaluate import (
    DEFAULT_EVAL_DAYS,
    MIN_EVAL_DAYS,
    MIN_TRAIN_ROWS,
    Windows,
    better,
    metrics_dict,
    score_baselines,
    score_model,
    split_validation,
    split_windows,
)
from ml.features import FEATURE_COLUMNS, LABEL, WARMUP_ROWS, build_features, tomorrow_row
from ml.replay import clock_from_env, mode_from_env
from ml.train import Grid, fit, load_grid
from ml.validate import Rules, validate_prices
from contract.evidence import Evaluation, Scores
from contract.names import MODEL_NAME, Tag

log = logging.getLogger(__name__)

DEFAULT_TRAIN_YEARS = 10.0
TRADING_DAYS_PER_YEAR = 252

Echo = Callable[[str], None]


class PipelineError(RuntimeError):
    """The run stopped for a reason the operator can act on (message says which)."""


@dataclass(frozen=True)
class PipelineConfig:
    source: str
    anchor: date | None = None  # None: live mode -> today, replay mode -> the replay clock
    eval_days: int = DEFAULT_EVAL_DAYS
    train_years: float = DEFAULT_TRAIN_YEARS
    promote: bool = True
    mode: str = "live"  # live | replay
    tracking_uri: str | None = None  # None: MLFLOW_TRACKING_URI or http://127.0.0.1:5000
    candidates_file: Path | None = None  # None: PRIMER_CANDIDATES_FILE or the packaged grid
    pin_file: Path | None = None  # None: contract.pin.default_pin_path()
    now: datetime | None = None  # the replay clock's "now" (tests)

    @property
    def train_rows(self) -> int:
        return max(MIN_TRAIN_ROWS, int(round(self.train_years * TRADING_DAYS_PER_YEAR)))


@dataclass
class CandidateResult:
    name: str
    family: str
    run_id: str
    scores: Scores  # on the evaluation window (fitted on the whole training window)
    seconds: float
    val_scores: Scores  # on the validation window (fitted on the training window before it)


@dataclass
class PipelineResult:
    evaluation: Evaluation
    version: int
    parent_run_id: str
    candidates: list[CandidateResult]
    anchor: date
    rows: int
    timings: dict[str, float] = field(default_factory=dict)
    proposal: Any = None  # promotion.propose.ProposalOutcome when the promotion step ran


def config_from_env(**overrides: Any) -> PipelineConfig:
    """Defaults from the environment (PRIMER_DATA_SOURCE, PRIMER_EVAL_DAYS, PRIMER_TRAIN_YEARS, PRIMER_MODE)."""
    values: dict[str, Any] = {
        "source": data_mod.default_source(),
        "eval_days": _number_env("PRIMER_EVAL_DAYS", DEFAULT_EVAL_DAYS, int),
        "train_years": _number_env("PRIMER_TRAIN_YEARS", DEFAULT_TRAIN_YEARS, float),
        "mode": mode_from_env(),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return PipelineConfig(**values)


def _number_env(name: str, default: float, cast: type[int] | type[float]) -> Any:
    """``cast(os.environ[name])``, ``default`` when unset or empty; PipelineError naming the variable."""
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return cast(text)
    except ValueError:
        raise PipelineError(f"{name} must be {'an integer' if cast is int else 'a number'}, got {text!r}") from None


class _Stages:
    """Wall time per stage (the benchmark prints these)."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0


def _fmt(scores: Scores | None) -> str:
    if scores is None:
        return "unavailable"
    auc = "n/a" if scores.roc_auc is None else f"{scores.roc_auc:.3f}"
    return (
        f"acc {scores.accuracy:.3f}  bal_acc {scores.balanced_accuracy:.3f}  auc {auc}  "
        f"log_loss {scores.log_loss:.4f}  brier {scores.brier:.4f}"
    )


def _load_window(config: PipelineConfig, echo: Echo) -> tuple[pd.DataFrame, date, bool]:
    """Load the bars the run may see. Returns (frame, end date asked for, anchor explicit?)."""
    today = date.today()
    if config.anchor is not None:
        end = config.anchor
    elif config.mode == "replay":
        clock = clock_from_env()
        end = min(today, clock.load_until(config.now))
    else:
        end = today
    span = _calendar_span(config)
    # Only Yahoo is asked for less: files and the generator are cheap to read whole.
    start = end - span if data_mod.parse_spec(config.source).kind == "yfinance" else None
    try:
        prices = data_mod.load_prices(config.source, start=start, end=end)
    except data_mod.DataSourceError as exc:
        raise PipelineError(str(exc)) from exc
    if config.mode == "replay" and config.anchor is None and "date" in prices.columns and len(prices):
        clock = clock_from_env()
        anchor = clock.anchor(prices["date"], config.now)
        echo(f"[replay] {clock.steps(config.now)} step(s) of {clock.interval_seconds:.0f}s since "
             f"{clock.epoch.isoformat()} from {clock.start} -> anchor {anchor}")
        prices = prices.loc[~(prices["date"] > pd.Timestamp(anchor))].reset_index(drop=True)
        end = anchor
    # Keep the bars within reach of the training + evaluation windows, measured back from the
    # last bar (not from `end`), so stale data still reaches validation and fails "freshness".
    if "date" in prices.columns and len(prices):
        dates = pd.to_datetime(prices["date"], errors="coerce")
        if dates.notna().any():
            prices = prices.loc[~(dates < dates.max() - span)].reset_index(drop=True)
    return prices, end, config.anchor is not None


def _calendar_span(config: PipelineConfig) -> timedelta:
    """Calendar days holding warm-up + training + evaluation rows, with room for holidays."""
    rows_needed = config.train_rows + config.eval_days + WARMUP_ROWS
    return timedelta(days=math.ceil(rows_needed * 365.25 / TRADING_DAYS_PER_YEAR) + 60)


def prepare_data(config: PipelineConfig, echo: Echo = print) -> tuple[pd.DataFrame, date]:
    """Load and validate the window; return (validated prices cut to the rows used, anchor date).

    Raises ``ml.validate.ValidationError`` or :class:`PipelineError`; touches no MLflow state.
    """
    if config.eval_days < MIN_EVAL_DAYS:
        raise PipelineError(f"--eval-days {config.eval_days} is too small; the minimum is {MIN_EVAL_DAYS} trading days")
    if not math.isfinite(config.train_years) or config.train_years <= 0:  # nan/inf parse as floats
        raise PipelineError(f"--train-years (PRIMER_TRAIN_YEARS) must be a positive number, got {config.train_years}")
    prices, end, explicit = _load_window(config, echo)
    echo(f"[data] source {config.source}: {len(prices)} rows loaded up to {end}")
    rules = Rules(min_rows=MIN_TRAIN_ROWS + config.eval_days + WARMUP_ROWS)
    # Freshness only means something live; with an explicit anchor the bars must reach the anchor.
    live = config.mode == "live"
    prices = validate_prices(prices, rules=rules, live=live, today=end if explicit else None)
    rows_used = config.train_rows + config.eval_days + WARMUP_ROWS
    prices = prices.iloc[-rows_used:].reset_index(drop=True)
    anchor = prices["date"].iloc[-1].date()
    echo(f"[validate] ok: {len(prices)} rows used, {prices['date'].iloc[0].date()} .. {anchor} (anchor {anchor})")
    return prices, anchor


def _champion(pin_file: Path | None, echo: Echo) -> int | None:
    from contract.pin import PinError, default_pin_path, read_pin

    path = pin_file or default_pin_path()
    try:
        pin = read_pin(path)
    except PinError as exc:
        echo(f"WARNING: cannot read the pin ({exc}); no champion to compare against")
        return None
    return pin.version


def _score_champion(version: int, windows: Windows, echo: Echo) -> Scores | None:
    """Re-score the pinned version on this run's own evaluation window.

    If it cannot be loaded or scored, warn and return None: the Evaluation then
    carries champion_version with champion=None ("pinned but unavailable"),
    which the promotion gate can tell apart from "nothing pinned yet".
    """
    from ml.tracking import load_version, version_tags

    try:
        model = load_version(version)
        scores, _ = score_model(model, windows.eval)
        seen_until = version_tags(version).get(Tag.EVAL_START.value, "")
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot compare"; say why
        echo(f"WARNING: champion {MODEL_NAME} v{version} could not be loaded/scored: {type(exc).__name__}: {exc}")
        return None
    # The champion was fitted on rows before its own eval_start. If that is later than this
    # window's start (an earlier --anchor, a restarted replay clock), it has seen part of
    # this window: its scores are in-sample, optimistic. The gate stays safe (the bar only
    # rises) but the comparison is not like for like, so say so.
    if seen_until > windows.eval_start.isoformat():
        echo(f"WARNING: champion {MODEL_NAME} v{version} was trained on rows before {seen_until}, inside this "
             f"run's evaluation window {windows.eval_start}..{windows.eval_end}: its scores are optimistic")
    return scores


def run_pipeline(config: PipelineConfig, echo: Echo = print) -> PipelineResult:
    """One full training run; see the module docstring. Raises PipelineError / ValidationError."""
    import mlflow

    from ml import plots, tracking as registry

    stages = _Stages()
    t_start = time.perf_counter()
    if config.promote:
        _check_promotion_settings()
    with stages("data+validate"):
        prices, anchor = prepare_data(config, echo)
    with stages("features"):
        feats = build_features(prices)
        try:
            windows = split_windows(feats, config.eval_days, config.train_rows)
        except ValueError as exc:
            raise PipelineError(str(exc)) from exc
        next_row, as_of = tomorrow_row(prices)
    echo(
        f"[features] {len(FEATURE_COLUMNS)} features; train {len(windows.train)} rows "
        f"{windows.train_start}..{windows.train_end}; eval {len(windows.eval)} rows "
        f"{windows.eval_start}..{windows.eval_end}; next-day row as of {as_of}"
    )
    try:
        grid: Grid = load_grid(config.candidates_file)
    except ValueError as exc:
        raise PipelineError(str(exc)) from exc

    with stages("mlflow-setup"):
        try:
            uri = registry.connect(config.tracking_uri)
            experiment_id = registry.ensure_experiment()
        except registry.RegistryError as exc:
            raise PipelineError(str(exc)) from exc
        sha = registry.git_sha()
    echo(f"[mlflow] {registry.public_uri(uri)} experiment {experiment_id}")

    baselines = score_baselines(windows)
    baseline_metrics: dict[str, float] = {}
    for name, s in baselines.items():
        baseline_metrics.update(metrics_dict(s, prefix=f"baseline_{name}_"))
    results: list[CandidateResult] = []
    models: dict[str, Any] = {}
    probs: dict[str, pd.Series] = {}
    common_tags = {"anchor": anchor.isoformat(), Tag.DATA_SOURCE.value: config.source, Tag.GIT_SHA.value: sha}

    with mlflow.start_run(run_name=f"train-{anchor}", tags={**common_tags, "mode": config.mode}) as parent:
        parent_id = parent.info.run_id
        with stages("log-data"):
            mlflow.log_params(
                {
                    "data_source": config.source,
                    "anchor": anchor.isoformat(),
                    "mode": config.mode,
                    "eval_days": config.eval_days,
                    "train_rows": len(windows.train),
                    "train_start": windows.train_start.isoformat(),
                    "train_end": windows.train_end.isoformat(),
                    "eval_start": windows.eval_start.isoformat(),
                    "eval_end": windows.eval_end.isoformat(),
                    "candidates_file": grid.source,
                    "select_by": grid.select_by,
                    "validation_days": grid.validation_days,
                }
            )
            registry.log_data_window(prices, config.source, anchor)
            mlflow.log_metrics(baseline_metrics)
        for name, s in baselines.items():
            echo(f"[baseline] {name:<20} {_fmt(s)}")

        fit_part, val_part = split_validation(windows.train, grid.validation_days)
        echo(
            f"[train] selection: fit on {len(fit_part)} rows, validate on {len(val_part)} rows "
            f"{val_part.index[0].date()}..{val_part.index[-1].date()}; then refit on all {len(windows.train)} "
            f"training rows and score on the evaluation window"
        )
        with stages("train+score"):
            for cand in grid.candidates:
                t0 = time.perf_counter()
                tags = {**common_tags, "candidate": cand.name, "family": cand.family}
                with mlflow.start_run(run_name=cand.name, nested=True, tags=tags) as run:
                    try:
                        val_scores, _ = score_model(fit(cand, fit_part), val_part)
                        model = fit(cand, windows.train)
                    except ValueError as exc:  # e.g. a window holding one class: the data, not a bug
                        raise PipelineError(f"cannot train candidate {cand.name}: {exc}; nothing was registered") from exc
                    scores, p = score_model(model, windows.eval)
                    mlflow.log_params({"candidate": cand.name, "family": cand.family,
                                       **{f"model_{k}": v for k, v in cand.params.items()}})
                    mlflow.log_metrics({**metrics_dict(scores), **metrics_dict(val_scores, prefix="val_"),
                                        **baseline_metrics, "train_rows": float(len(windows.train))})
                    results.append(CandidateResult(cand.name, cand.family, run.info.run_id, scores,
                                                   time.perf_counter() - t0, val_scores))
                    models[cand.name] = model
                    probs[cand.name] = p
                v = val_scores.get(grid.select_by)
                echo(f"[candidate] {cand.name:<20} eval: {_fmt(scores)} | validation {grid.select_by} "
                     f"{'n/a' if v is None else f'{v:.4f}'}  ({results[-1].seconds:.1f}s)")

        # Chosen on the validation window, so the evaluation scores below stay out-of-sample.
        best = results[0]
        for r in results[1:]:
            if better(r.val_scores, best.val_scores, grid.select_by):
                best = r
        echo(f"[select] best by validation {grid.select_by}: {best.name}")

        with stages("log-model"), mlflow.start_run(run_id=best.run_id, nested=True):
            info = registry.log_model(models[best.name], windows.train)
            registry.log_latest_features(next_row, as_of)
            with tempfile.TemporaryDirectory() as tmp:
                for path in plots.save_plots(windows.eval[LABEL], probs[best.name], Path(tmp), title=best.name):
                    mlflow.log_artifact(str(path), artifact_path="plots")
            mlflow.set_tag("selected", "true")

        with stages("champion"):
            champion_version = _champion(config.pin_file, echo)
            champion_scores = _score_champion(champion_version, windows, echo) if champion_version else None
        if champion_version is None:
            echo("[champion] none pinned yet")
        else:
            echo(f"[champion] v{champion_version} on the same window: {_fmt(champion_scores)}")
            if champion_scores is not None:
                mlflow.log_metrics(metrics_dict(champion_scores, prefix="champion_"))
            mlflow.set_tag("champion_version", str(champion_version))

        with stages("register"):
            version = registry.register(
                info.model_uri,
                {
                    Tag.EVAL_START.value: windows.eval_start.isoformat(),
                    Tag.EVAL_END.value: windows.eval_end.isoformat(),
                    Tag.DATA_SOURCE.value: config.source,
                    Tag.GIT_SHA.value: sha,
                },
            )
        evaluation = Evaluation(
            model_name=MODEL_NAME,
            challenger_version=version,
            challenger_run_id=best.run_id,
            challenger_candidate=best.name,
            parent_run_id=parent_id,
            experiment_id=experiment_id,
            tracking_uri=uri,
            eval_start=windows.eval_start,
            eval_end=windows.eval_end,
            eval_days=len(windows.eval),
            challenger=best.scores,
            data_source=config.source,
            baselines=baselines,
            champion_version=champion_version,
            champion=champion_scores,
        )
        mlflow.log_metrics(metrics_dict(best.scores, prefix="challenger_"))
        mlflow.set_tags({"challenger_version": str(version), "challenger_candidate": best.name})
        mlflow.log_dict(_evaluation_json(evaluation), "evaluation.json")
    echo(f"[register] {MODEL_NAME} v{version} (candidate {best.name}, run {best.run_id}), alias challenger")

    result = PipelineResult(
        evaluation=evaluation,
        version=version,
        parent_run_id=parent_id,
        candidates=results,
        anchor=anchor,
        rows=len(prices),
        timings=stages.timings,
    )
    if config.promote:
        with stages("promote"):
            result.proposal = _propose(evaluation, echo)
    stages.timings["total"] = time.perf_counter() - t_start
    return result


def _evaluation_json(ev: Evaluation) -> dict[str, Any]:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(ev), default=str))


def _check_promotion_settings() -> None:
    """Fail before training when the promotion step could not run (policy file, forge variables)."""
    from promotion import propose

    try:
        propose.load_settings()
    except propose.PromotionConfigError as exc:
        raise PipelineError(f"{exc}; nothing was trained (fix it, or run with --no-promote)") from exc


def _propose(evaluation: Evaluation, echo: Echo) -> Any:
    """Hand the evaluation to the promotion step (the pipeline's last stage)."""
    from promotion import propose

    try:
        outcome = propose.propose_from_evaluation(evaluation)
    except propose.ProposalError as exc:
        raise PipelineError(
            f"promotion failed: {exc} ({MODEL_NAME} v{evaluation.challenger_version} stays registered)"
        ) from exc
    echo(f"[promote] {outcome}")
    return outcome
