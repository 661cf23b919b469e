"""Data sources: synthetic generator, CSV (any column case), yfinance through an injected fetcher."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from contract.errors import SettingsError
from contract.settings import DataSettings
from ml import data
from ml.data import DataSourceError, load_prices, parse_spec, synthetic_prices, yfinance_prices
from tests.ml.conftest import write_csv


def test_synthetic_is_deterministic_per_seed_and_prefix_stable():
    a = synthetic_prices(seed=1, end=date(2020, 12, 31))
    b = synthetic_prices(seed=1, end=date(2020, 12, 31))
    pd.testing.assert_frame_equal(a, b)
    other = synthetic_prices(seed=2, end=date(2020, 12, 31))
    assert not np.allclose(a["close"], other["close"])
    # Asking for more days does not change the days already generated.
    longer = synthetic_prices(seed=1, end=date(2022, 6, 30))
    pd.testing.assert_frame_equal(longer.iloc[: len(a)].reset_index(drop=True), a)


def test_synthetic_looks_like_daily_index_bars():
    df = synthetic_prices(seed=42, end=date(2024, 12, 31))
    assert list(df.columns) == ["date", "open", "high", "low", "close", "volume"]
    assert df["date"].is_monotonic_increasing and df["date"].is_unique
    assert (df["date"].dt.day_of_week < 5).all(), "weekends are skipped"
    days = set(df["date"].dt.date)
    for holiday in (date(2019, 12, 25), date(2020, 1, 1), date(2022, 7, 4), date(2023, 11, 23)):
        assert holiday not in days, holiday
    assert (df["high"] >= df[["open", "close"]].max(axis=1)).all()
    assert (df["low"] <= df[["open", "close"]].min(axis=1)).all()
    assert (df[["open", "high", "low", "close"]] > 0).all(axis=None)
    assert (df["volume"] > 0).all()
    ret = df["close"].pct_change().dropna()
    assert 0.08 < ret.std() * np.sqrt(252) < 0.35, "annualised volatility of an index"
    assert ret.mean() > 0, "positive drift"
    assert ret.abs().max() < 0.2
    # Volatility clusters: absolute returns are autocorrelated (GARCH-like), raw returns barely.
    assert ret.abs().autocorr(lag=1) > 0.1
    assert abs(ret.autocorr(lag=1)) < 0.15


def test_synthetic_spec_and_env_seed(monkeypatch: pytest.MonkeyPatch):
    end = date(2015, 1, 30)
    monkeypatch.setenv("PRIMER_SYNTHETIC_SEED", "9")
    via_env = load_prices("synthetic", end=end, seed=DataSettings.load().synthetic_seed)
    via_spec = load_prices("synthetic:9", end=end)
    pd.testing.assert_frame_equal(via_env, via_spec)
    assert via_env["date"].iloc[-1] <= pd.Timestamp(end)
    windowed = load_prices("synthetic:9", start=date(2014, 1, 1), end=end)
    assert windowed["date"].iloc[0] >= pd.Timestamp(2014, 1, 1)
    assert len(windowed) < len(via_env)


def test_bad_env_seed_is_named_and_empty_env_means_default(monkeypatch: pytest.MonkeyPatch):
    # A malformed seed used to escape as a bare int() ValueError (a traceback from primer train).
    monkeypatch.setenv("PRIMER_SYNTHETIC_SEED", "seven")
    with pytest.raises(SettingsError, match="PRIMER_SYNTHETIC_SEED must be an integer, got 'seven'"):
        DataSettings.load()
    # Empty values (as a manifest may set them) mean "unset", not an empty seed or source.
    monkeypatch.setenv("PRIMER_SYNTHETIC_SEED", "")
    seed = DataSettings.load().synthetic_seed
    pd.testing.assert_frame_equal(load_prices("synthetic", end=date(2015, 1, 30), seed=seed),
                                  load_prices(f"synthetic:{data.DEFAULT_SEED}", end=date(2015, 1, 30)))
    monkeypatch.setenv("PRIMER_DATA_SOURCE", "")
    assert DataSettings.load().data_source == "yfinance"


@pytest.mark.parametrize("spec", ["", "csv:", "yahoo", "synthetic:abc", "yfinance:SPY"])
def test_bad_specs_are_named(spec: str):
    with pytest.raises(DataSourceError, match="source"):
        parse_spec(spec)


def test_csv_any_column_case_and_extra_columns(tmp_path: Path, market: pd.DataFrame):
    frame = market.tail(50).copy()
    frame["Adj Close"] = frame["close"]
    path = write_csv(frame, tmp_path / "spy.csv", upper=True)
    header = path.read_text().splitlines()[0]
    assert header.startswith("Date,Open,High,Low,Close,Volume")
    loaded = load_prices(f"csv:{path}")
    assert list(loaded.columns) == list(data.PRICE_COLUMNS)
    expected = frame.loc[:, list(data.PRICE_COLUMNS)].reset_index(drop=True)
    pd.testing.assert_frame_equal(loaded, expected, check_dtype=False)
    assert pd.api.types.is_datetime64_any_dtype(loaded["date"])
    shouty = tmp_path / "shouty.csv"
    shouty.write_text(path.read_text().replace("Date,Open,High,Low,Close,Volume", "DATE, OPEN ,HIGH,low,ClOsE,VOLUME"))
    pd.testing.assert_frame_equal(load_prices(f"csv:{shouty}"), loaded)


def test_csv_missing_file_and_empty_file(tmp_path: Path):
    with pytest.raises(DataSourceError, match="not found"):
        load_prices(f"csv:{tmp_path / 'nope.csv'}")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert load_prices(f"csv:{empty}").empty


def _yahoo_frame(prices: pd.DataFrame) -> pd.DataFrame:
    """Shaped like yfinance's Ticker.history(auto_adjust=False): tz-aware Date index, capitalised columns."""
    out = prices.set_index(pd.DatetimeIndex(prices["date"]).tz_localize("America/New_York").rename("Date"))
    out = out.drop(columns="date")
    out.columns = ["Open", "High", "Low", "Close", "Volume"]
    out.insert(4, "Adj Close", out["Close"] * 0.9)
    return out


def test_yfinance_source_through_injected_fetch(market: pd.DataFrame):
    calls = []

    def fetch(ticker, start, end, timeout):
        calls.append((ticker, start, end, timeout))
        return _yahoo_frame(market.tail(30))

    got = yfinance_prices(start=date(2024, 1, 1), end=date(2024, 6, 28), fetch=fetch)
    assert calls == [("SPY", date(2024, 1, 1), date(2024, 6, 28), data.YAHOO_TIMEOUT_SECONDS)]
    expected = market.tail(30).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)
    assert got["date"].dt.tz is None


def test_yfinance_retries_transient_failures_then_succeeds(market: pd.DataFrame):
    attempts = []

    def flaky(ticker, start, end, timeout):
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("connection reset")
        if len(attempts) == 2:
            return pd.DataFrame()  # Yahoo sometimes answers with nothing
        return _yahoo_frame(market.tail(5))

    got = yfinance_prices(fetch=flaky, backoff_seconds=0.01)
    assert len(attempts) == 3 and len(got) == 5


def test_yfinance_empty_result_is_a_clear_error():
    seen = []

    def empty(ticker, start, end, timeout):
        seen.append(1)
        return pd.DataFrame()

    with pytest.raises(DataSourceError, match="no data for SPY.*after 3 attempts: no rows returned"):
        yfinance_prices(fetch=empty, attempts=3, backoff_seconds=0.01)
    assert len(seen) == 3


def test_yfinance_rate_limit_is_named():
    class YFRateLimitError(Exception):
        pass

    def limited(ticker, start, end, timeout):
        raise YFRateLimitError("Too Many Requests. Rate limited. Try after a while.")

    with pytest.raises(DataSourceError, match="rate-limited by Yahoo"):
        yfinance_prices(fetch=limited, attempts=2, backoff_seconds=0.01)


def test_yfinance_spec_goes_through_load_prices(monkeypatch: pytest.MonkeyPatch, market: pd.DataFrame):
    # The default fetcher is the only network call; replace it to prove the spec routes there.
    monkeypatch.setattr(data, "_yahoo_history", lambda t, s, e, timeout: _yahoo_frame(market.tail(40)))
    got = load_prices("yfinance", end=market["date"].iloc[-1].date())
    assert len(got) == 40


def test_todays_bar_is_dropped_while_the_session_is_open(market: pd.DataFrame):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    last = market["date"].iloc[-1].date()  # 2024-06-28, a Friday
    fetch = lambda t, s, e, timeout: _yahoo_frame(market.tail(10))  # noqa: E731
    ny = ZoneInfo("America/New_York")
    during = yfinance_prices(fetch=fetch, now=datetime(last.year, last.month, last.day, 11, 0, tzinfo=ny))
    after = yfinance_prices(fetch=fetch, now=datetime(last.year, last.month, last.day, 17, 0, tzinfo=ny))
    assert len(during) == 9 and during["date"].iloc[-1].date() < last
    assert len(after) == 10 and after["date"].iloc[-1].date() == last


def test_a_planted_signal_can_end_on_a_date_and_the_bars_before_it_stay_the_same():
    """``synthetic:SEED:SIGNAL:UNTIL``: the momentum signal holds up to UNTIL, then labels are coins."""
    from ml.features import build_features, labeled

    until = date(2015, 12, 31)
    kept = load_prices("synthetic:5:3", end=date(2021, 12, 31))
    broken = load_prices(f"synthetic:5:3:{until}", end=date(2021, 12, 31))
    before = kept["date"] <= pd.Timestamp(until)
    pd.testing.assert_frame_equal(kept[before], broken[before])

    def momentum_hit_rate(prices: pd.DataFrame, after: bool) -> float:
        rows = labeled(build_features(prices))
        rows = rows[(rows.index > pd.Timestamp(until)) == after]
        return float(((rows["ret_1"] > 0) == (rows["label"] == 1)).mean())

    assert momentum_hit_rate(broken, after=False) > 0.6  # the signal: today's direction repeats
    assert abs(momentum_hit_rate(broken, after=True) - 0.5) < 0.05  # gone after UNTIL
    assert momentum_hit_rate(kept, after=True) > 0.6
    assert str(parse_spec(f"synthetic:5:3:{until}")) == f"synthetic:5:3:{until}"
    with pytest.raises(DataSourceError, match="YYYY-MM-DD"):
        parse_spec("synthetic:5:3:someday")
