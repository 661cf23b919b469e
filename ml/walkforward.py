"""One decision's evidence, without MLflow: choose a recipe, compare it walk-forward, refit it.

Used by ``ml.pipeline`` (one run, tracked in MLflow) and ``ml.backtest`` (many anchors
replayed in one process). The regions, in time order, all before the anchor:

    ... training rows ... | selection folds (validation_days) | comparison folds (eval_days) | anchor

The challenger is chosen on the selection folds only, so the comparison folds are out of
sample for the choice as well as for every fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from contract.evidence import Comparison, Scores
from contract.significance import GateSpec, paired_test
from ml.evaluate import better, score
from ml.folds import Fold, FoldRunner, Forecast, log_losses, plan_folds, recipe_id, recipe_to_json, region_labels
from ml.train import Candidate, Grid, fit, predict_up

CLIMATOLOGY = Candidate("climatology", "climatology", {})


@dataclass(frozen=True)
class Regions:
    rows: pd.DataFrame  # every labelled feature row up to the anchor
    select: list[Fold]
    compare: list[Fold]

    @property
    def compare_rows(self) -> pd.DataFrame:
        return self.rows.iloc[self.compare[0].test_start:self.compare[-1].test_end]

    @property
    def y(self) -> pd.Series:
        return region_labels(self.rows, self.compare)


@dataclass
class Evidence:
    """Forecasts on the comparison rows and what the selection saw."""

    regions: Regions
    challenger: Forecast
    climatology: Forecast
    champion_p: pd.Series | None = None  # the champion on the same rows (refitted per fold, or as registered)
    champion_recipe: Candidate | None = None
    selection: dict[str, Scores] = field(default_factory=dict)  # each grid recipe on the selection folds
    fallback: str | None = None  # why the challenger was replaced by climatology, if it was


def plan_regions(rows: pd.DataFrame, *, eval_days: int, grid: Grid, train_rows: int) -> Regions:
    compare = plan_folds(rows, days=eval_days, months=grid.fold_months, train_rows=train_rows)
    select = plan_folds(rows, days=grid.validation_days, months=grid.fold_months, train_rows=train_rows,
                        end=compare[0].test_start)
    return Regions(rows, select, compare)


def select_recipe(runner: FoldRunner, grid: Grid, regions: Regions) -> tuple[Candidate, dict[str, Scores]]:
    """Every grid recipe walk-forward over the selection folds; the best by ``grid.select_by``."""
    y = region_labels(regions.rows, regions.select)
    scores = {c.name: score(y, runner.forecast(c, regions.rows, regions.select).p_up) for c in grid.candidates}
    best = grid.candidates[0]
    for cand in grid.candidates[1:]:
        if better(scores[cand.name], scores[best.name], grid.select_by):
            best = cand
    return best, scores


def same_recipe(a: Candidate | None, b: Candidate | None) -> bool:
    return a is not None and b is not None and recipe_id(a) == recipe_id(b)


def gather(runner: FoldRunner, grid: Grid, regions: Regions, *, champion_recipe: Candidate | None,
           champion_model: Any = None, bootstrap: bool, spec: GateSpec) -> Evidence:
    """Select, then forecast challenger, champion and climatology on the comparison folds.

    With nothing pinned (``bootstrap``) the first pin must be honest: a challenger that does not
    pass the gate's test against climatology is replaced by climatology itself.
    """
    chosen, selection = select_recipe(runner, grid, regions)
    climatology = runner.forecast(CLIMATOLOGY, regions.rows, regions.compare)
    challenger = climatology if same_recipe(chosen, CLIMATOLOGY) else \
        runner.forecast(chosen, regions.rows, regions.compare)
    evidence = Evidence(regions, challenger, climatology, selection=selection)
    if bootstrap and challenger is not climatology:
        y = regions.y
        test = paired_test(challenger.losses(y), climatology.losses(y), level=spec.level, test=spec.test)
        if not test.passes(spec.min_effect):
            evidence.fallback = (f"{chosen.name} does not beat climatology on the comparison folds "
                                 f"(improvement {test.improvement:+.4f} nats/day, p = {test.p_value:.3f}); "
                                 "the first pin is climatology")
            evidence.challenger = climatology
    if champion_recipe is not None:
        evidence.champion_recipe = champion_recipe
        evidence.champion_p = runner.forecast(champion_recipe, regions.rows, regions.compare).p_up
    elif champion_model is not None:
        evidence.champion_p = predict_up(champion_model, regions.compare_rows)
    return evidence


def refit_to_anchor(recipe: Candidate, rows: pd.DataFrame, train_rows: int) -> Any:
    """The recipe fitted on the last ``train_rows`` labelled rows up to the anchor: what serves."""
    return fit(recipe, rows.iloc[-train_rows:])


def comparison(evidence: Evidence, grid: Grid) -> Comparison:
    """The evidence as the gate reads it (``contract.evidence.Comparison``)."""
    y = evidence.regions.y
    champion_loss = disagreements = None
    if evidence.champion_p is not None:
        champion_loss = log_losses(y, evidence.champion_p).tolist()
        calls = evidence.challenger.p_up.to_numpy() >= 0.5
        disagreements = int(np.sum(calls != (evidence.champion_p.to_numpy() >= 0.5)))
    return Comparison(
        folds=len(evidence.regions.compare), fold_months=grid.fold_months,
        challenger_recipe=recipe_to_json(evidence.challenger.recipe),
        challenger_loss=evidence.challenger.losses(y).tolist(),
        climatology_loss=evidence.climatology.losses(y).tolist(),
        champion_recipe=recipe_to_json(evidence.champion_recipe) if evidence.champion_recipe else None,
        champion_loss=champion_loss, champion_refitted=evidence.champion_recipe is not None,
        disagreements=disagreements, climatology=score(y, evidence.climatology.p_up),
        selection_days=sum(f.test_end - f.test_start for f in evidence.regions.select),
    )


def baselines(evidence: Evidence) -> dict[str, Scores]:
    """Naive forecasters on the comparison rows (secondary evidence beside the losses)."""
    rows, y = evidence.regions.compare_rows, evidence.regions.y
    return {
        "always_up": score(y, pd.Series(1.0, index=rows.index)),
        "climatology": score(y, evidence.climatology.p_up),
        "yesterday_direction": score(y, (rows["ret_1"] > 0).astype(float)),
    }
