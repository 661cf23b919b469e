"""Walk-forward evaluation of recipes: folds, per-fold refits, per-day losses, a fold cache.

A *recipe* is a :class:`ml.train.Candidate` (estimator family + params, on FEATURE_COLUMNS).
A *fold* is a block of consecutive labelled rows (a calendar block of ``fold_months``
months) plus the training rows strictly before it (at most ``train_rows``): the recipe is
refitted on those and scores the block, so every forecast is out of sample. Fold edges
are calendar-aligned, so the next run (a day or a week later) finds every completed fold
it needs in the cache and only refits the block still growing.

The cache is keyed by the recipe, the content of the fold's rows and the code that fits
them (``joblib.Memory`` hashes the arguments and the function).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from joblib import Memory

from contract.errors import PrimerError
from ml.features import FEATURE_COLUMNS, LABEL
from ml.train import Candidate, fit, predict_up

# Forecasts of exactly 0 or 1 would cost infinite log loss on one wrong day; clip like
# this so one day never costs more than ~9.2 nats (the ranking of sane models is unchanged).
PROBABILITY_FLOOR = 1e-4
MIN_FOLD_TRAIN_ROWS = 250  # about one trading year
CACHE_MAX_AGE = timedelta(days=30)


class FoldError(PrimerError, ValueError):
    """Not enough labelled rows for the folds asked for."""


@dataclass(frozen=True)
class Fold:
    train_start: int  # positions in the labelled rows: train = rows[train_start:test_start]
    test_start: int
    test_end: int  # exclusive


@dataclass(frozen=True)
class Forecast:
    """One recipe's out-of-sample P(up) over a region of folds."""

    recipe: Candidate
    p_up: pd.Series  # indexed by date, the region's rows in order
    folds: int

    def losses(self, y: pd.Series) -> np.ndarray:
        return log_losses(y, self.p_up)


def recipe_id(recipe: Candidate) -> str:
    """A stable short hash of what the recipe fits (family, params, feature columns)."""
    text = json.dumps({"family": recipe.family, "params": recipe.params, "features": FEATURE_COLUMNS},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def recipe_to_json(recipe: Candidate) -> str:
    return json.dumps({"name": recipe.name, "family": recipe.family, "params": recipe.params}, sort_keys=True)


def recipe_from_json(text: str) -> Candidate:
    data = json.loads(text)
    return Candidate(str(data["name"]), str(data["family"]), dict(data.get("params") or {}))


def log_losses(y: pd.Series | np.ndarray, p_up: pd.Series | np.ndarray) -> np.ndarray:
    """Per-day log loss (nats) of P(up) against 0/1 outcomes."""
    yv = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p_up, dtype=float), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return -(yv * np.log(p) + (1 - yv) * np.log(1 - p))


def _block_keys(index: pd.DatetimeIndex, months: int) -> np.ndarray:
    """Calendar block of each row: blocks of ``months`` months, aligned to January 1970."""
    month_number = (index.year - 1970) * 12 + (index.month - 1)
    return np.asarray(month_number // months)


def plan_folds(rows: pd.DataFrame, *, days: int, months: int, train_rows: int, end: int | None = None) -> list[Fold]:
    """Whole calendar blocks, latest first back from ``end`` until they hold >= ``days`` rows.

    ``rows`` are labelled feature rows in date order; ``end`` (exclusive position) stops the
    region earlier (the selection region ends where the comparison region starts).
    """
    end = len(rows) if end is None else end
    keys = _block_keys(pd.DatetimeIndex(rows.index[:end]), months)
    folds: list[Fold] = []
    stop, covered = end, 0
    while covered < days and stop > 0:
        start = int(np.searchsorted(keys, keys[stop - 1], side="left"))
        if start < MIN_FOLD_TRAIN_ROWS:
            break
        folds.append(Fold(max(0, start - train_rows), start, stop))
        covered += stop - start
        stop = start
    if covered < days:
        raise FoldError(f"{len(rows[:end])} labelled rows hold {covered} walk-forward days after "
                        f"{MIN_FOLD_TRAIN_ROWS} training rows; {days} were asked for (use fewer days or more data)")
    return folds[::-1]


def _fit_predict(family: str, params: dict, train: np.ndarray, test: np.ndarray, name: str = "") -> np.ndarray:
    """The cached unit of work: fit on the fold's past, P(up) on the fold's block (``name``: for messages).

    Plain C-ordered arrays (features then label), not frames: the cache key is a hash of the
    arguments, and two frames with equal values can pickle differently (block layout).
    """
    frame = pd.DataFrame(train, columns=[*FEATURE_COLUMNS, LABEL])
    model = fit(Candidate(name, family, params), frame)
    return predict_up(model, pd.DataFrame(test, columns=list(FEATURE_COLUMNS))).to_numpy()


class FoldRunner:
    """Runs recipes over folds, through the cache when it has a directory."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.memory = Memory(location=str(cache_dir) if cache_dir else None, verbose=0)
        self._cached = self.memory.cache(_fit_predict, ignore=["name"])
        self.fits = 0  # folds actually fitted (cache misses), for the progress line and benchmark

    def _one(self, recipe: Candidate, rows: pd.DataFrame, fold: Fold) -> np.ndarray:
        train = np.ascontiguousarray(rows.iloc[fold.train_start:fold.test_start][[*FEATURE_COLUMNS, LABEL]]
                                     .to_numpy(dtype=float))
        test = np.ascontiguousarray(rows.iloc[fold.test_start:fold.test_end][list(FEATURE_COLUMNS)]
                                    .to_numpy(dtype=float))
        try:
            if self.memory.location is None:
                self.fits += 1
                return _fit_predict(recipe.family, recipe.params, train, test, recipe.name)
            if not self._cached.check_call_in_cache(recipe.family, recipe.params, train, test, recipe.name):
                self.fits += 1
            return np.asarray(self._cached(recipe.family, recipe.params, train, test, recipe.name))
        except ValueError as exc:  # e.g. a fold whose past holds one class: the data, not a bug
            raise FoldError(f"cannot train candidate {recipe.name}: {exc}") from exc

    def prune(self) -> None:
        """Drop entries no run has read for :data:`CACHE_MAX_AGE` (the block still growing leaves
        one stale entry a day); completed folds in use are read by every run and stay."""
        if self.memory.location is not None:
            self.memory.reduce_size(age_limit=CACHE_MAX_AGE)

    def forecast(self, recipe: Candidate, rows: pd.DataFrame, folds: Sequence[Fold]) -> Forecast:
        parts = [self._one(recipe, rows, fold) for fold in folds]
        index = rows.index[folds[0].test_start:folds[-1].test_end]
        return Forecast(recipe, pd.Series(np.concatenate(parts), index=index, name="p_up"), len(folds))


def region_labels(rows: pd.DataFrame, folds: Sequence[Fold]) -> pd.Series:
    return rows[LABEL].iloc[folds[0].test_start:folds[-1].test_end].astype(int)
