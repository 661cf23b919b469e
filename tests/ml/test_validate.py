"""Validation: each corrupt input stops `primer train` naming the rule, and nothing is registered."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from contract.names import EXPERIMENT_NAME, MODEL_NAME
from ml.validate import Rules, ValidationError, validate_prices
from tests.ml.conftest import ANCHOR, write_csv


def _tail(market: pd.DataFrame, n: int = 600) -> pd.DataFrame:
    return market.tail(n).reset_index(drop=True).copy()


def _nan_close(df):
    df.loc[len(df) - 100, "close"] = np.nan
    return df, "missing_values", [df.loc[len(df) - 100, "date"]]


def _duplicate_date(df):
    i = len(df) - 50
    df.loc[i, "date"] = df.loc[i - 1, "date"]
    return df, "unique_dates", [df.loc[i, "date"]]


def _unsorted(df):
    i = len(df) - 30
    order = list(range(len(df)))
    order[i], order[i + 1] = order[i + 1], order[i]
    swapped = df.iloc[order].reset_index(drop=True)
    # The row where time goes backwards is the earlier bar, now second.
    return swapped, "sorted_dates", [swapped.loc[i + 1, "date"]]


def _long_gap(df):
    i = len(df) - 200
    before = df.loc[i - 1, "date"]
    return df.drop(index=range(i, i + 12)).reset_index(drop=True), "max_gap", [before]


def _absurd_return(df):
    i = len(df) - 80
    df.loc[i, ["open", "high", "low", "close"]] *= 1.6
    return df, "absurd_return", [df.loc[i, "date"]]


def _non_positive(df):
    i = len(df) - 120
    df.loc[i, "low"] = 0.0
    return df, "positive_prices", [df.loc[i, "date"]]


def _missing_column(df):
    return df.drop(columns="volume"), "required_columns", []


def _too_few_rows(df):
    return df.tail(100).reset_index(drop=True), "enough_rows", []


def _non_numeric(df):
    df["close"] = df["close"].astype(object)
    i = len(df) - 10
    df.loc[i, "close"] = "n/a?"
    return df, "numeric_dtypes", [df.loc[i, "date"]]


CORRUPTIONS: dict[str, Callable] = {
    "nan_close": _nan_close,
    "duplicate_date": _duplicate_date,
    "unsorted": _unsorted,
    "long_gap": _long_gap,
    "absurd_return": _absurd_return,
    "non_positive_price": _non_positive,
    "missing_column": _missing_column,
    "too_few_rows": _too_few_rows,
    "non_numeric": _non_numeric,
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_each_rule_names_itself_and_the_dates(case: str, market: pd.DataFrame):
    frame, rule, dates = CORRUPTIONS[case](_tail(market))
    with pytest.raises(ValidationError) as info:
        validate_prices(frame, rules=Rules(min_rows=330))
    assert rule in info.value.rules
    for d in dates:
        assert pd.Timestamp(d).date().isoformat() in str(info.value)


def test_clean_data_passes_and_is_typed(market: pd.DataFrame):
    frame = _tail(market)
    frame["volume"] = frame["volume"].astype(str)  # as a sloppy CSV might hold it
    out = validate_prices(frame, rules=Rules(min_rows=330))
    assert out["volume"].dtype == float and len(out) == len(frame)


def test_empty_and_freshness_rules(market: pd.DataFrame):
    with pytest.raises(ValidationError, match=r"\[non_empty\]"):
        validate_prices(pd.DataFrame())
    frame = _tail(market)
    with pytest.raises(ValidationError, match=r"\[freshness\] last bar is 2024-06-28") as info:
        validate_prices(frame, rules=Rules(min_rows=330), live=True, today=date(2024, 7, 15))
    assert info.value.rules == ["freshness"]
    # The same bars are fresh enough on the Monday after.
    validate_prices(frame, rules=Rules(min_rows=330), live=True, today=date(2024, 7, 1))


def test_a_holiday_week_is_not_a_long_gap(market: pd.DataFrame):
    # 9/11 closed the market four weekdays: within the default rule.
    frame = _tail(market)
    i = len(frame) - 300
    validate_prices(frame.drop(index=range(i, i + 4)).reset_index(drop=True), rules=Rules(min_rows=330))


# ----------------------------------------------------------------- through the real CLI


def _counts(uri: str) -> tuple[int, int]:
    client = MlflowClient(tracking_uri=uri)
    versions = len(client.search_model_versions(f"name='{MODEL_NAME}'"))
    exp = client.get_experiment_by_name(EXPERIMENT_NAME)
    runs = 0 if exp is None else len(client.search_runs([exp.experiment_id]))
    return versions, runs


CLI_CASES = [*sorted(CORRUPTIONS), "empty_file", "stale_live"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_corrupt_input_stops_primer_train_and_registers_nothing(
    case: str, market: pd.DataFrame, tmp_path: Path, mlflow_server, trainer_factory, fast_grid: Path
):
    train = trainer_factory(mlflow_server.uri)
    csv = tmp_path / "prices.csv"
    args = ["--source", f"csv:{csv}", "--no-promote", "--train-years", "1", "--candidates", str(fast_grid)]
    if case == "empty_file":
        csv.write_text("")
        rule = "non_empty"
        args += ["--anchor", ANCHOR.isoformat()]
    elif case == "stale_live":
        write_csv(_tail(market), csv)
        rule = "freshness"  # live mode, no anchor: today is long after 2024-06-28
    else:
        frame, rule, _ = CORRUPTIONS[case](_tail(market))
        write_csv(frame, csv)
        args += ["--anchor", ANCHOR.isoformat()]
    before = _counts(mlflow_server.uri)
    result = train(*args)
    assert result.exit_code != 0, result.output
    assert f"[{rule}]" in result.output
    assert "nothing was registered" in result.output
    assert "Traceback" not in result.output
    assert _counts(mlflow_server.uri) == before, "no model version and no run may be created"


@pytest.mark.slow
def test_clean_csv_trains_through_the_cli(market: pd.DataFrame, tmp_path: Path, mlflow_server, trainer_factory,
                                          fast_grid: Path):
    """The control for the cases above: an uncorrupted CSV (31 years, 1993-2024) registers a version."""
    train = trainer_factory(mlflow_server.uri)
    assert market["date"].iloc[0].year == 1993
    csv = write_csv(market, tmp_path / "prices.csv")
    before_versions, _ = _counts(mlflow_server.uri)
    result = train("--source", f"csv:{csv}", "--anchor", ANCHOR.isoformat(), "--no-promote",
                   "--train-years", "1", "--candidates", str(fast_grid))
    assert result.exit_code == 0, result.output
    assert _counts(mlflow_server.uri)[0] == before_versions + 1
    assert "[register] spy-direction v" in result.output
    assert train.last is not None and train.last.anchor == ANCHOR
    assert train.last.evaluation.data_source == f"csv:{csv}"
    assert f"rows loaded up to {ANCHOR}" in result.output and f"(anchor {ANCHOR})" in result.output
