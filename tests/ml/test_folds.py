"""Walk-forward folds: out of sample by construction, calendar-aligned, cached across runs."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.data import load_prices
from ml.features import build_features, labeled
from ml.folds import FoldError, FoldRunner, log_losses, plan_folds
from ml.train import Candidate, Grid
from ml.walkforward import plan_regions

LOGREG = Candidate("logreg", "logistic_regression", {"C": 1.0})


def _rows(end: date, spec: str = "synthetic:7") -> pd.DataFrame:
    return labeled(build_features(load_prices(spec, end=end)))


def test_every_fold_trains_strictly_before_it_and_regions_do_not_overlap() -> None:
    rows = _rows(date(2024, 6, 28))
    regions = plan_regions(rows, eval_days=1000, grid=Grid(candidates=(LOGREG,)), train_rows=750)
    folds = [*regions.select, *regions.compare]
    assert sum(f.test_end - f.test_start for f in regions.compare) >= 1000
    assert sum(f.test_end - f.test_start for f in regions.select) >= 250
    for before, after in zip(folds, folds[1:], strict=False):
        assert before.test_end == after.test_start  # contiguous, no row in two folds
    for f in folds:
        assert f.train_start < f.test_start and f.test_start - f.train_start <= 750
        block = rows.index[f.test_start:f.test_end]
        assert len({(d.year, (d.month - 1) // 3) for d in block}) == 1  # one calendar quarter
    assert regions.compare[-1].test_end == len(rows)  # up to the last labelled row (the anchor's is unlabelled)
    assert rows.index[-1] < pd.Timestamp(date(2024, 6, 28))


def test_too_little_data_is_named() -> None:
    rows = _rows(date(1994, 6, 30))
    with pytest.raises(FoldError, match="walk-forward days"):
        plan_folds(rows, days=1000, months=3, train_rows=500)


def test_forecasts_of_completed_folds_do_not_change_when_later_bars_arrive_and_come_from_the_cache(
        tmp_path: Path) -> None:
    """Nothing after a fold leaks into it (the same forecasts a week and a month later), and the
    next run refits only the block still growing."""
    forecasts, fits = [], []
    for end in (date(2024, 6, 3), date(2024, 6, 10), date(2024, 7, 10)):
        rows = _rows(end)
        runner = FoldRunner(tmp_path / "cache")
        forecasts.append(runner.forecast(LOGREG, rows, plan_folds(rows, days=1000, months=3, train_rows=1000)).p_up)
        fits.append(runner.fits)
    assert fits[1:] == [1, 2]  # a week later: the growing quarter; next quarter: the one just completed and the new
    common = forecasts[0].index.intersection(forecasts[2].index)[:-30]
    assert len(common) > 900
    np.testing.assert_allclose(forecasts[0][common], forecasts[2][common])
    uncached = FoldRunner(None).forecast(LOGREG, rows, plan_folds(rows, days=1000, months=3, train_rows=1000))
    np.testing.assert_allclose(uncached.p_up, forecasts[2])


def test_per_day_log_loss_is_capped() -> None:
    losses = log_losses(np.array([1, 0, 1]), np.array([0.0, 0.0, 0.5]))
    assert losses[1] == pytest.approx(-np.log(1 - 1e-4)) and losses[2] == pytest.approx(np.log(2))
    assert losses[0] == pytest.approx(-np.log(1e-4))  # certain and wrong: costly, never infinite


def test_a_week_later_the_pipeline_sees_bit_identical_rows_so_the_cache_hits(tmp_path: Path) -> None:
    """Rolling features carry float rounding from the first bar: the data window must not start a
    week later when the anchor moves a week (it starts on January 1), or no fold would ever hit."""
    from contract.settings import TrainSettings
    from ml.pipeline import PipelineConfig, build_dataset, prepare_data

    settings = TrainSettings.load(data_source="synthetic:7", state_dir=tmp_path)
    grid = Grid(candidates=(LOGREG,))
    rows = []
    for anchor in (date(2025, 6, 2), date(2025, 6, 9)):
        config = PipelineConfig(settings, anchor=anchor)
        prices, _ = prepare_data(config, echo=lambda _: None)
        rows.append(build_dataset(prices, config, grid, echo=lambda _: None).regions.rows)
    common = rows[0].index.intersection(rows[1].index)
    assert len(common) > 4000
    assert (rows[0].loc[common].to_numpy() == rows[1].loc[common].to_numpy()).all()
