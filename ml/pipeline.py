"""The training pipeline, one run, as stage functions that return values:

    prepare_data -> build_dataset -> find_champion -> walkforward.gather (select a recipe on
    the selection folds, compare it with the champion's recipe and climatology on the
    comparison folds) -> refit to the anchor -> track_run -> Tracker.register
    -> build_evaluation -> the Proposer handed in

``run_pipeline(config)`` strings them together and returns a :class:`PipelineResult`;
``primer train`` (``primer.train_command``) prints its progress and hands in the
promotion step (a :class:`Proposer`), so this package never imports the gate or git.
Nothing touches MLflow before the data passed validation, so bad data never leaves a
run or a model version behind; a run that fails later is marked FAILED, and nothing is
registered before every candidate was fitted and logged.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import requests
from mlflow.exceptions import MlflowException

from contract import ui as ui_links
from contract.errors import PrimerError
from contract.evidence import Evaluation, Scores, evaluation_to_dict
from contract.names import EVALUATION_ARTIFACT, MODEL_NAME, Tag
from contract.pin import PinError, read_pin
from contract.registry import public_uri
from contract.settings import TrainSettings
from contract.significance import GateSpec
from contract.ui import ui_base
from ml import data as data_mod
from ml import evidence_log, plots, walkforward
from ml.evaluate import MIN_EVAL_DAYS, MIN_TRAIN_ROWS, Windows, metrics_dict, score
from ml.features import FEATURE_COLUMNS, WARMUP_ROWS, build_features, labeled, tomorrow_row
from ml.folds import FoldError, FoldRunner, recipe_from_json, recipe_to_json
from ml.replay import clock_from_settings, visible_end
from ml.tracking import Tracker, git_sha
from ml.train import Candidate, Grid, load_grid
from ml.validate import Rules, validate_prices

log = logging.getLogger(__name__)

TRADING_DAYS_PER_YEAR = 252

Echo = Callable[[str], None]


class PipelineError(PrimerError):
    """The run stopped for a reason the operator can act on (message says which)."""


class Proposer(Protocol):
    """The pipeline's last step, handed in by the caller (``promotion.propose.GitProposer``):
    the pipeline itself never imports the gate, git or forge code."""

    def check(self) -> None:
        """Raise a PrimerError when the step could not run (checked before anything is trained)."""

    def propose(self, evaluation: Evaluation) -> Any:
        """Gate the evaluation and propose the pin change; raise a PrimerError when that fails."""


def train_rows_for(years: float) -> int:
    """The training window in rows for PRIMER_TRAIN_YEARS (at least a trading year)."""
    return max(MIN_TRAIN_ROWS, int(round(years * TRADING_DAYS_PER_YEAR)))


@dataclass(frozen=True)
class PipelineConfig:
    """One run: the settings read at start-up plus what the command line asked for."""

    settings: TrainSettings
    anchor: date | None = None  # None: live mode -> today, replay mode -> the replay clock
    proposer: Proposer | None = None  # None: stop after registering (--no-promote)
    now: datetime | None = None  # the replay clock's "now" (tests)
    gate: GateSpec = GateSpec()  # the policy's test (primer train passes the policy file's)
    # Walk-forward days before the comparison folds, where the challenger is chosen (the grid's).
    selection_days: int = Grid.validation_days

    @property
    def source(self) -> str:
        return self.settings.data_source

    @property
    def train_rows(self) -> int:
        return train_rows_for(self.settings.train_years)

    @property
    def rows_needed(self) -> int:
        """Warm-up + training + selection + comparison rows, a fold of slack on each of the two
        regions (they are whole calendar blocks): the row budget of a run, in one place."""
        slack = 2 * 12 * 23
        return self.train_rows + self.selection_days + self.settings.eval_days + slack + WARMUP_ROWS

    @property
    def calendar_span(self) -> timedelta:
        """Calendar days holding :attr:`rows_needed` trading days, with room for holidays."""
        return timedelta(days=math.ceil(self.rows_needed * 365.25 / TRADING_DAYS_PER_YEAR) + 60)


@dataclass(frozen=True)
class Dataset:
    regions: walkforward.Regions
    next_row: pd.DataFrame  # the feature row that predicts the day after the anchor
    as_of: date
    train_rows: int

    @property
    def windows(self) -> Windows:
        """The comparison rows as the evaluation window, the final fit's rows as training."""
        return Windows(train=self.regions.rows.iloc[-self.train_rows:], eval=self.regions.compare_rows)


@dataclass
class CandidateResult:
    name: str
    family: str
    scores: Scores  # walk-forward over the selection folds (the challenger: over the comparison folds)
    val_scores: Scores  # walk-forward over the selection folds: what the choice was made on
    seconds: float
    params: dict[str, Any] = field(default_factory=dict)
    model: Any = None  # the selected recipe only: refitted on every labelled row up to the anchor
    p_up: pd.Series | None = None  # the selected recipe only: on the comparison rows
    run_id: str = ""  # set once tracked


@dataclass(frozen=True)
class Champion:
    version: int | None  # what the pin names (None: nothing pinned)
    scores: Scores | None  # None when nothing is pinned or it could not be loaded/scored
    recipe: Candidate | None = None  # what it was fitted with, when its version records it
    model: Any = None  # the registered model, when there is no recipe to refit


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


def fmt_scores(scores: Scores | None) -> str:
    if scores is None:
        return "unavailable"
    auc = "n/a" if scores.roc_auc is None else f"{scores.roc_auc:.3f}"
    return (f"acc {scores.accuracy:.3f}  bal_acc {scores.balanced_accuracy:.3f}  auc {auc}  "
            f"log_loss {scores.log_loss:.4f}  brier {scores.brier:.4f}")


# ---------------------------------------------------------------- data + validate


def _visible_end(config: PipelineConfig) -> date:
    """The last date the run may ask a source for."""
    return config.anchor if config.anchor is not None else visible_end(config.settings, config.now)


def _load_window(config: PipelineConfig, echo: Echo) -> tuple[pd.DataFrame, date]:
    """The bars the run may see, and the end date asked for (the replay anchor in replay mode)."""
    end = _visible_end(config)
    span = config.calendar_span
    # Only Yahoo is asked for less: files and the generator are cheap to read whole.
    start = _year_start(end - span) if data_mod.parse_spec(config.source).kind == "yfinance" else None
    try:
        prices = data_mod.load_prices(config.source, start=start, end=end, seed=config.settings.synthetic_seed)
    except data_mod.DataSourceError as exc:
        raise PipelineError(str(exc)) from exc
    if config.settings.mode == "replay" and config.anchor is None and "date" in prices.columns and len(prices):
        clock = clock_from_settings(config.settings)
        end = clock.anchor(prices["date"], config.now)
        echo(f"[replay] {clock.steps(config.now)} step(s) of {clock.interval_seconds:.0f}s since "
             f"{clock.epoch.isoformat()} from {clock.start} -> anchor {end}")
        prices = prices.loc[~(prices["date"] > pd.Timestamp(end))].reset_index(drop=True)
    # Keep the bars within reach of the windows, measured back from the last bar (not from
    # `end`), so stale data still reaches validation and fails "freshness".
    if "date" in prices.columns and len(prices):
        dates = pd.to_datetime(prices["date"], errors="coerce")
        if dates.notna().any():
            prices = prices.loc[~(dates < pd.Timestamp(_year_start(dates.max() - span)))].reset_index(drop=True)
    return prices, end


def _year_start(day: date | pd.Timestamp) -> date:
    """January 1 of ``day``'s year. Windows start there, not a fixed number of rows back: rolling
    features carry float rounding from the first bar, so a start that moves daily would change
    every fold's rows in the last bits and no run would find the previous run's folds in the cache."""
    return date(day.year, 1, 1)


def _check_windows(config: PipelineConfig) -> None:
    if config.settings.eval_days < MIN_EVAL_DAYS:
        raise PipelineError(f"--eval-days {config.settings.eval_days} is too small; "
                            f"the minimum is {MIN_EVAL_DAYS} trading days")


def prepare_data(config: PipelineConfig, echo: Echo = print) -> tuple[pd.DataFrame, date]:
    """Load and validate the window; return (validated prices cut to the rows used, anchor date).

    Raises ``ml.validate.ValidationError`` or :class:`PipelineError`; touches no MLflow state.
    """
    _check_windows(config)
    prices, end = _load_window(config, echo)
    echo(f"[data] source {config.source}: {len(prices)} rows loaded up to {end}")
    rules = Rules(min_rows=MIN_TRAIN_ROWS + config.selection_days + config.settings.eval_days + WARMUP_ROWS)
    # Freshness only means something live; with an explicit anchor the bars must reach the anchor.
    live = config.settings.mode == "live"
    prices = validate_prices(prices, rules=rules, live=live, today=end if config.anchor is not None else None)
    if len(prices) > config.rows_needed:  # what the windows need, from the start of that year
        first = pd.Timestamp(_year_start(prices["date"].iloc[-config.rows_needed]))
        prices = prices.loc[prices["date"] >= first].reset_index(drop=True)
    anchor = prices["date"].iloc[-1].date()
    echo(f"[validate] ok: {len(prices)} rows used, {prices['date'].iloc[0].date()} .. {anchor} (anchor {anchor})")
    return prices, anchor


# ---------------------------------------------------------------- features + folds


def build_dataset(prices: pd.DataFrame, config: PipelineConfig, grid: Grid, echo: Echo = print) -> Dataset:
    rows = labeled(build_features(prices))  # the anchor's own row has no label yet: never trained or scored
    try:
        regions = walkforward.plan_regions(rows, eval_days=config.settings.eval_days, grid=grid,
                                           train_rows=config.train_rows)
        next_row, as_of = tomorrow_row(prices)
    except (FoldError, ValueError) as exc:
        raise PipelineError(str(exc)) from exc
    sel, cmp_ = regions.select, regions.compare
    echo(f"[features] {len(FEATURE_COLUMNS)} features, {len(rows)} labelled rows; selection folds "
         f"{len(sel)} ({rows.index[sel[0].test_start].date()}..{rows.index[sel[-1].test_end - 1].date()}); "
         f"comparison folds {len(cmp_)}: {len(regions.compare_rows)} rows "
         f"{regions.compare_rows.index[0].date()}..{regions.compare_rows.index[-1].date()}; "
         f"refit every {grid.fold_months} month(s) on <= {config.train_rows} rows; next-day row as of {as_of}")
    return Dataset(regions, next_row, as_of, config.train_rows)


def gather_evidence(config: PipelineConfig, grid: Grid, dataset: Dataset, champion: Champion,
                    echo: Echo) -> tuple[walkforward.Evidence, list[CandidateResult]]:
    """Select, compare, refit the challenger up to the anchor; the candidates as the run logs them."""
    runner = FoldRunner(config.settings.fold_cache_path())
    t0 = time.perf_counter()
    try:
        evidence = walkforward.gather(runner, grid, dataset.regions, champion_recipe=champion.recipe,
                                      champion_model=champion.model, bootstrap=champion.version is None,
                                      spec=config.gate)
        model = walkforward.refit_to_anchor(evidence.challenger.recipe, dataset.regions.rows, config.train_rows)
    except ValueError as exc:  # e.g. a fold holding one class: the data, not a bug
        raise PipelineError(f"{exc}; nothing was registered") from exc
    runner.prune()
    seconds = time.perf_counter() - t0
    echo(f"[train] {runner.fits} fold fit(s), the rest from the cache ({runner.memory.location}); {seconds:.1f}s")
    for name, scores in evidence.selection.items():
        echo(f"[candidate] {name:<20} selection folds: {fmt_scores(scores)}")
    if evidence.fallback:
        echo(f"[select] {evidence.fallback}")
    chosen = evidence.challenger.recipe
    y = dataset.regions.y
    results = []
    for cand in [*grid.candidates, *([] if chosen in grid.candidates else [chosen])]:
        sel = evidence.selection.get(cand.name) or score(y, evidence.climatology.p_up)
        mine = cand == chosen
        results.append(CandidateResult(
            cand.name, cand.family, score(y, evidence.challenger.p_up) if mine else sel, sel,
            seconds if mine else 0.0, dict(cand.params), model if mine else None,
            evidence.challenger.p_up if mine else None))
    return evidence, results


def select_best(results: list[CandidateResult]) -> CandidateResult:
    """The one the walk-forward chose (it carries the model refitted up to the anchor)."""
    return next(r for r in results if r.model is not None)


# ---------------------------------------------------------------- MLflow


@dataclass
class RunContext:
    """What every run of this training shares in MLflow."""

    tracker: Tracker
    experiment_id: str
    tags: dict[str, str]
    baseline_metrics: dict[str, float]
    registered: int | None = None  # the version, once registered


def _parent_params(config: PipelineConfig, anchor: date, windows: Windows, grid: Grid) -> dict[str, Any]:
    return {
        "data_source": config.source, "anchor": anchor.isoformat(), "mode": config.settings.mode,
        "eval_days": config.settings.eval_days, "train_rows": len(windows.train),
        "train_start": windows.train_start.isoformat(), "train_end": windows.train_end.isoformat(),
        "eval_start": windows.eval_start.isoformat(), "eval_end": windows.eval_end.isoformat(),
        "candidates_file": grid.source, "select_by": grid.select_by, "validation_days": grid.validation_days,
        "fold_months": grid.fold_months, "gate_test": config.gate.test, "gate_level": config.gate.level,
        "gate_min_effect": config.gate.min_effect,
    }


def _log_candidate(ctx: RunContext, parent_id: str, result: CandidateResult, train_rows: int) -> None:
    tags = {**ctx.tags, "candidate": result.name, "family": result.family}
    result.run_id = ctx.tracker.start_run(ctx.experiment_id, result.name, tags, parent=parent_id)
    ctx.tracker.log(
        result.run_id,
        params={"candidate": result.name, "family": result.family,
                **{f"model_{k}": v for k, v in result.params.items()}},
        metrics={**metrics_dict(result.scores), **metrics_dict(result.val_scores, prefix="val_"),
                 **ctx.baseline_metrics, "train_rows": float(train_rows)},
    )


def _log_selected(ctx: RunContext, best: CandidateResult, dataset: Dataset) -> str:
    """The winner's run gets the model, the next-day feature row and the plots; returns the model URI."""
    tracker, windows = ctx.tracker, dataset.windows
    model_uri = tracker.log_model(best.run_id, best.model, windows.train)
    tracker.log_latest_features(best.run_id, dataset.next_row, dataset.as_of)
    assert best.p_up is not None
    with tempfile.TemporaryDirectory() as tmp:
        y = dataset.regions.y
        paths = plots.save_plots(y, best.p_up, Path(tmp), title=f"{best.name}, walk-forward")
        tracker.log_files(best.run_id, paths, "plots")
    tracker.log(best.run_id, metrics=evidence_log.calibration_metrics(dataset.regions.y, best.p_up))
    tracker.log(best.run_id, tags={"selected": "true"})
    return model_uri


def track_run(ctx: RunContext, parent_id: str, results: list[CandidateResult], best: CandidateResult,
              dataset: Dataset) -> str:
    """Log every candidate as a nested run and the winner's model; returns the model URI."""
    for result in results:
        _log_candidate(ctx, parent_id, result, len(dataset.windows.train))
    model_uri = _log_selected(ctx, best, dataset)
    for result in results:
        ctx.tracker.end_run(result.run_id)
    return model_uri


def find_champion(tracker: Tracker, pin_file: Path, grid: Grid, echo: Echo) -> Champion:
    """The pinned version and the recipe it was fitted with (its ``recipe`` tag, else its run's
    candidate in this grid), so the comparison refits it per fold like the challenger.

    A version with neither is scored as registered (it may have seen some comparison rows:
    optimistic, so the bar only rises). A missing or unreadable pin counts as nothing pinned;
    a champion that cannot be loaded gives ``Champion(version, None)`` ("pinned but
    unavailable"), which the gate tells apart from "nothing pinned yet".
    """
    try:
        version = read_pin(pin_file).version
    except PinError as exc:
        echo(f"WARNING: cannot read the pin ({exc}); no champion to compare against")
        return Champion(None, None)
    if version is None:
        return Champion(None, None)
    try:
        tags = tracker.version_tags(version)
        if Tag.RECIPE.value in tags:
            return Champion(version, None, recipe=recipe_from_json(tags[Tag.RECIPE.value]))
        model = tracker.load_version(version)
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot compare"; say why
        echo(f"WARNING: champion {MODEL_NAME} v{version} could not be loaded: {type(exc).__name__}: {exc}")
        return Champion(version, None)
    echo(f"WARNING: champion {MODEL_NAME} v{version} records no recipe; it is scored as registered, "
         "not refitted per fold (optimistic if it was trained on comparison rows)")
    return Champion(version, None, model=model)


def build_evaluation(ctx: RunContext, config: PipelineConfig, *, parent_id: str, version: int,
                     best: CandidateResult, evidence: walkforward.Evidence, grid: Grid,
                     champion: Champion) -> Evaluation:
    windows = Windows(train=evidence.regions.rows, eval=evidence.regions.compare_rows)
    y = evidence.regions.y
    champion_scores = score(y, evidence.champion_p) if evidence.champion_p is not None else None
    return Evaluation(
        model_name=MODEL_NAME, challenger_version=version, challenger_run_id=best.run_id,
        challenger_candidate=best.name, parent_run_id=parent_id, experiment_id=ctx.experiment_id,
        tracking_uri=ctx.tracker.uri, eval_start=windows.eval_start, eval_end=windows.eval_end,
        eval_days=len(windows.eval), challenger=best.scores, data_source=config.source,
        baselines=walkforward.baselines(evidence), champion_version=champion.version, champion=champion_scores,
        comparison=walkforward.comparison(evidence, grid),
    )


# ---------------------------------------------------------------- the run


def _connect(config: PipelineConfig) -> Tracker:
    try:
        return Tracker.connect(config.settings.tracking_uri)
    except PrimerError as exc:
        raise PipelineError(str(exc)) from exc


def _load_grid(config: PipelineConfig) -> Grid:
    try:
        return load_grid(config.settings.candidates_file)
    except ValueError as exc:
        raise PipelineError(str(exc)) from exc


def _finish(ctx: RunContext, config: PipelineConfig, parent_id: str, grid: Grid, dataset: Dataset,
            champion: Champion, stages: _Stages, echo: Echo) -> tuple[Evaluation, list[CandidateResult]]:
    """Everything after the data, inside the parent run: evidence, track, register, evaluation.json."""
    tracker = ctx.tracker
    with stages("train+score"):
        evidence, results = gather_evidence(config, grid, dataset, champion, echo)
    best = select_best(results)
    echo(f"[select] challenger: {best.name} " + ("(the first pin must beat climatology or be it)"
                                                 if evidence.fallback else
                                                 f"(best {grid.select_by} on the selection folds)"))
    with stages("log-model"):
        model_uri = track_run(ctx, parent_id, results, best, dataset)
    with stages("register"):
        version = tracker.register(model_uri, best.run_id, {
            Tag.EVAL_START.value: dataset.windows.eval_start.isoformat(),
            Tag.EVAL_END.value: dataset.windows.eval_end.isoformat(),
            Tag.DATA_SOURCE.value: config.source, Tag.GIT_SHA.value: ctx.tags[Tag.GIT_SHA.value],
            Tag.RECIPE.value: recipe_to_json(evidence.challenger.recipe),
        })
        ctx.registered = version
    evaluation = build_evaluation(ctx, config, parent_id=parent_id, version=version, best=best,
                                  evidence=evidence, grid=grid, champion=champion)
    _report_evidence(ctx, parent_id, config, evaluation, evidence, echo)
    tracker.log(parent_id, metrics=metrics_dict(best.scores, prefix="challenger_"),
                tags={"challenger_version": str(version), "challenger_candidate": best.name})
    tracker.log_dict(parent_id, evaluation_to_dict(evaluation), EVALUATION_ARTIFACT)
    echo(f"[register] {MODEL_NAME} v{version} (candidate {best.name}, refitted on {config.train_rows} rows up to "
         f"{dataset.regions.rows.index[-1].date()}, run {best.run_id}), alias challenger")
    if (ui := ui_base(tracker.uri)) is not None:
        echo(f"[mlflow] the selected run: {ui_links.run_url(ui, ctx.experiment_id, best.run_id)}")
        echo(f"[mlflow] the model's versions: {ui_links.model_url(ui, MODEL_NAME)}")
    return evaluation, results


def _report_evidence(ctx: RunContext, parent_id: str, config: PipelineConfig, evaluation: Evaluation,
                     evidence: walkforward.Evidence, echo: Echo) -> None:
    """Baselines, champion and the paired tests: printed, and logged on the parent run."""
    metrics: dict[str, float] = {}
    for name, s in evaluation.baselines.items():
        metrics.update(metrics_dict(s, prefix=f"baseline_{name}_"))
        echo(f"[baseline] {name:<20} {fmt_scores(s)}")
    tags: dict[str, str] = {}
    if evaluation.champion_version is None:
        echo("[champion] none pinned yet")
    else:
        echo(f"[champion] v{evaluation.champion_version} on the same rows: {fmt_scores(evaluation.champion)}")
        tags["champion_version"] = str(evaluation.champion_version)
        if evaluation.champion is not None:
            metrics.update(metrics_dict(evaluation.champion, prefix="champion_"))
    for line in evidence_log.summary_lines(evaluation, config.gate):
        echo(f"[evidence] {line}")
    metrics.update(evidence_log.evidence_metrics(evaluation, config.gate))
    ctx.tracker.log(parent_id, metrics=metrics, tags=tags)
    with tempfile.TemporaryDirectory() as tmp:
        paths = evidence_log.save_evidence_plots(evaluation, evidence, Path(tmp))
        ctx.tracker.log_files(parent_id, paths, "evidence")


def _open_run(config: PipelineConfig, prices: pd.DataFrame, anchor: date, dataset: Dataset, grid: Grid,
              echo: Echo, tracker: Tracker) -> tuple[RunContext, str]:
    experiment_id = tracker.experiment_id()
    ui = ui_base(tracker.uri)
    where = ui_links.experiment_url(ui, experiment_id) if ui else public_uri(tracker.uri)
    echo(f"[mlflow] experiment {experiment_id}: {where}")
    tags = {"anchor": anchor.isoformat(), Tag.DATA_SOURCE.value: config.source,
            Tag.GIT_SHA.value: git_sha(config.settings.repo_root())}
    ctx = RunContext(tracker, experiment_id, tags, {})
    if abandoned := tracker.fail_abandoned(experiment_id):
        echo(f"[mlflow] marked {len(abandoned)} run(s) FAILED that an earlier, cut-off run left RUNNING")
    parent_id = tracker.start_run(experiment_id, f"train-{anchor}", {**tags, "mode": config.settings.mode})
    tracker.log(parent_id, params=_parent_params(config, anchor, dataset.windows, grid))
    tracker.log_data_window(parent_id, prices, config.source, anchor)
    return ctx, parent_id


def run_pipeline(config: PipelineConfig, echo: Echo = print) -> PipelineResult:
    """One full training run; see the module docstring. Raises PipelineError / ValidationError."""
    stages = _Stages()
    t_start = time.perf_counter()
    if config.proposer is not None:
        _check_proposer(config.proposer)
    grid = _load_grid(config)
    config = replace(config, selection_days=grid.validation_days)
    with stages("data+validate"):
        prices, anchor = prepare_data(config, echo)
    with stages("features"):
        dataset = build_dataset(prices, config, grid, echo)
    tracker = _connect(config)
    with _mlflow_failures(config, tracker), stages("mlflow-setup"):
        try:
            ctx, parent_id = _open_run(config, prices, anchor, dataset, grid, echo, tracker)
        except BaseException:
            tracker.fail_open_runs()  # the parent run, if it was created
            raise
    with _mlflow_failures(config, tracker, ctx):
        try:
            with stages("champion"):
                champion = find_champion(tracker, config.settings.pin_path(), grid, echo)
            evaluation, results = _finish(ctx, config, parent_id, grid, dataset, champion, stages, echo)
            ctx.tracker.end_run(parent_id)
        except BaseException:
            ctx.tracker.fail_open_runs()
            raise
    result = PipelineResult(evaluation, evaluation.challenger_version, parent_id, results, anchor, len(prices),
                            stages.timings)
    if config.proposer is not None:
        with stages("promote"):
            result.proposal = _run_proposer(config.proposer, evaluation, echo)
    stages.timings["total"] = time.perf_counter() - t_start
    return result


@contextmanager
def _mlflow_failures(config: PipelineConfig, tracker: Tracker, ctx: RunContext | None = None) -> Iterator[None]:
    """MLflow failing mid-run (killed, unreachable): one line that says so, after bounded retries
    (``quiet_mlflow``), never a traceback; the runs it left open are FAILED now or at the next run."""
    try:
        yield
    except (MlflowException, requests.RequestException) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        registered = f"{MODEL_NAME} v{ctx.registered} is registered" if ctx and ctx.registered else \
            "nothing was registered"
        runs = "" if not tracker.runs_started else "; its runs are marked FAILED" if not tracker.open_runs else \
            "; the runs it left open are marked FAILED by the next `primer train`"
        raise PipelineError(f"MLflow at {public_uri(config.settings.tracking_uri)} failed during training "
                            f"({first}); {registered}{runs}") from exc


def _check_proposer(proposer: Proposer) -> None:
    """Fail before training when the promotion step could not run (policy file, forge variables)."""
    try:
        proposer.check()
    except PrimerError as exc:
        raise PipelineError(f"{exc}; nothing was trained (fix it, or run with --no-promote)") from exc


def _run_proposer(proposer: Proposer, evaluation: Evaluation, echo: Echo) -> Any:
    """Hand the evaluation to the promotion step (the pipeline's last stage)."""
    try:
        outcome = proposer.propose(evaluation)
    except PrimerError as exc:
        raise PipelineError(
            f"promotion failed: {exc} ({MODEL_NAME} v{evaluation.challenger_version} stays registered)"
        ) from exc
    echo(f"[promote] {outcome}")
    return outcome
