"""Data sources behind one interface: ``load_prices(spec)`` returns a prices frame.

A prices frame has columns ``date`` (datetime64, no time zone), ``open``,
``high``, ``low``, ``close``, ``volume``, one row per trading day, sorted by
date. Sources are selected by a spec string (``PRIMER_DATA_SOURCE`` or
``primer train --source``):

- ``yfinance``: daily SPY bars from Yahoo Finance (the only source that needs
  the internet; timeouts, retries with backoff, clear errors).
- ``csv:PATH``: a CSV file with columns date, open, high, low, close, volume
  in any letter case (extra columns are ignored).
- ``synthetic`` / ``synthetic:SEED``: a seeded generator of realistic daily
  bars for tests and offline runs (``seed`` when the spec names none: ``PRIMER_SYNTHETIC_SEED``).
- ``synthetic:SEED:SIGNAL``: bars whose next-day direction carries a planted signal of
  known strength (0 = none: a seeded random walk whose labels are independent of every
  feature), to measure how often the gate promotes without and with a real advantage.
- ``synthetic:SEED:SIGNAL:UNTIL``: the same, with the signal removed after the date UNTIL
  (YYYY-MM-DD): a model that learned it is wrong from then on (monitoring's demotion test).

Loaders do not judge the data: a CSV with a missing column or a NaN close is
returned as it is, and ``ml.validate`` names what is wrong with it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from tenacity import RetryError, retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from contract.errors import PrimerError

log = logging.getLogger(__name__)

PRICE_COLUMNS: tuple[str, ...] = ("date", "open", "high", "low", "close", "volume")
TICKER = "SPY"
DEFAULT_SEED = 42
# The synthetic market starts here whatever window is requested, so a given
# seed always yields the same bar for the same date (prefix-stable).
SYNTHETIC_FIRST_DAY = date(1993, 1, 29)  # SPY's first trading day
# Planted signals stronger than this are not a market any more (P(up) beyond 0.05..0.95).
MAX_SIGNAL = 3.0
YAHOO_TIMEOUT_SECONDS = 20
YAHOO_ATTEMPTS = 4
# NYSE closes at 16:00 New York time; Yahoo's daily bar settles a little later.
MARKET_CLOSE_SETTLED = time(16, 30)


class DataSourceError(PrimerError):
    """A source could not deliver data (bad spec, missing file, Yahoo failure)."""


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # "yfinance" | "csv" | "synthetic"
    arg: str | None = None  # CSV path or synthetic seed
    signal: float | None = None  # synthetic only: a planted signal of this strength
    signal_until: date | None = None  # synthetic only: the last date the signal holds

    def __str__(self) -> str:
        text = self.kind if self.arg is None else f"{self.kind}:{self.arg}"
        text = text if self.signal is None else f"{text}:{self.signal:g}"
        return text if self.signal_until is None else f"{text}:{self.signal_until.isoformat()}"


def parse_spec(spec: str) -> SourceSpec:
    """Parse ``yfinance`` | ``csv:PATH`` | ``synthetic[:SEED]``; raise DataSourceError otherwise."""
    spec = (spec or "").strip()
    kind, sep, arg = spec.partition(":")
    kind = kind.lower()
    if kind == "yfinance" and not sep:
        return SourceSpec("yfinance")
    if kind == "csv":
        if not arg:
            raise DataSourceError("data source 'csv:' needs a path, e.g. csv:data/spy.csv")
        return SourceSpec("csv", arg)
    if kind == "synthetic":
        return _synthetic_spec(spec, arg) if sep else SourceSpec("synthetic")
    raise DataSourceError(
        f"unknown data source {spec!r}; expected 'yfinance', 'csv:PATH' or 'synthetic' "
        "(or 'synthetic:SEED', 'synthetic:SEED:SIGNAL', 'synthetic:SEED:SIGNAL:UNTIL')"
    )


def _synthetic_spec(spec: str, arg: str) -> SourceSpec:
    seed, sep, signal = arg.partition(":")
    try:
        int(seed)
    except ValueError:
        raise DataSourceError(f"data source {spec!r}: seed must be an integer, e.g. synthetic:7") from None
    if not sep:
        return SourceSpec("synthetic", seed)
    signal, sep, until = signal.partition(":")
    try:
        strength = float(signal)
    except ValueError:
        strength = float("nan")
    if not (math.isfinite(strength) and 0 <= strength <= MAX_SIGNAL):
        raise DataSourceError(f"data source {spec!r}: signal must be a number from 0 to {MAX_SIGNAL:g}, "
                              "e.g. synthetic:7:0.3 (0 = no signal)")
    if not sep:
        return SourceSpec("synthetic", seed, strength)
    try:
        last = date.fromisoformat(until)
    except ValueError:
        raise DataSourceError(f"data source {spec!r}: the signal's last date must be YYYY-MM-DD, "
                              "e.g. synthetic:7:1.5:2024-06-28") from None
    return SourceSpec("synthetic", seed, strength, last)


def load_prices(
    spec: str, *, end: date | None = None, start: date | None = None, seed: int = DEFAULT_SEED
) -> pd.DataFrame:
    """Daily bars from the source ``spec``, limited to ``start <= date <= end`` when given.

    ``seed`` is the synthetic generator's seed when the spec names none (``synthetic``).
    """
    parsed = parse_spec(spec)
    if parsed.kind == "synthetic":
        seed = int(parsed.arg) if parsed.arg is not None else seed
        if parsed.signal is not None:
            frame = planted_signal_prices(seed=seed, signal=parsed.signal, end=end or date.today(),
                                          signal_until=parsed.signal_until)
        else:
            frame = synthetic_prices(seed=seed, end=end or date.today())
    elif parsed.kind == "csv":
        frame = csv_prices(Path(parsed.arg or ""))
    else:
        frame = yfinance_prices(start=start, end=end)
    return _window(frame, start, end)


def _window(frame: pd.DataFrame, start: date | None, end: date | None) -> pd.DataFrame:
    if "date" not in frame.columns or (start is None and end is None):
        return frame.reset_index(drop=True)
    dates = frame["date"]
    keep = pd.Series(True, index=frame.index)
    # Unparseable dates (NaT) are kept so validation can name them.
    if start is not None:
        keep &= ~(dates < pd.Timestamp(start))
    if end is not None:
        keep &= ~(dates > pd.Timestamp(end))
    return frame.loc[keep].reset_index(drop=True)


# ---------------------------------------------------------------- CSV


def normalize_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Lower-case, trimmed column names; ``date`` parsed (unparseable -> NaT), time zone dropped."""
    frame = frame.rename(columns=lambda c: str(c).strip().lower().replace(" ", "_"))
    if "date" in frame.columns:
        dates = pd.to_datetime(frame["date"], errors="coerce", utc=True, format="mixed")
        frame["date"] = dates.dt.tz_localize(None).dt.normalize().astype("datetime64[ns]")
    return frame


def csv_prices(path: Path) -> pd.DataFrame:
    """Read a CSV of daily bars (any column case). An empty file gives an empty frame."""
    if not path.is_file():
        raise DataSourceError(f"CSV data file not found: {path}")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataSourceError(f"cannot parse CSV {path}: {exc}") from exc
    frame = normalize_columns(frame)
    keep = [c for c in PRICE_COLUMNS if c in frame.columns]
    return frame.loc[:, keep] if keep else frame


# ---------------------------------------------------------------- Yahoo Finance


class _Retryable(Exception):
    """Yahoo answered with nothing or refused; worth another try."""


def _yahoo_history(ticker: str, start: date | None, end: date | None, timeout: float) -> pd.DataFrame:
    """One request to Yahoo (imported lazily: yfinance is slow to import)."""
    import yfinance as yf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # raise_errors is deprecated but still the per-call switch
        return yf.Ticker(ticker).history(
            start=(start or date(1993, 1, 1)).isoformat(),
            # Yahoo's end is exclusive.
            end=((end or date.today()) + timedelta(days=1)).isoformat(),
            interval="1d",
            auto_adjust=False,
            actions=False,
            timeout=timeout,
            raise_errors=True,
        )


def _is_rate_limit(exc: BaseException) -> bool:
    name = type(exc).__name__
    return "RateLimit" in name or "Too Many Requests" in str(exc) or "429" in str(exc)


Fetcher = Callable[[str, "date | None", "date | None", float], pd.DataFrame]


def yfinance_prices(
    *,
    start: date | None = None,
    end: date | None = None,
    ticker: str = TICKER,
    fetch: Fetcher | None = None,
    attempts: int = YAHOO_ATTEMPTS,
    backoff_seconds: float = 2.0,
    timeout: float = YAHOO_TIMEOUT_SECONDS,
    now: datetime | None = None,
) -> pd.DataFrame:
    """Daily bars from Yahoo with retries (exponential backoff) and clear errors.

    ``fetch`` stands in for the network call in tests; it has the signature
    ``fetch(ticker, start, end, timeout) -> DataFrame`` shaped like yfinance's.
    Today's bar is dropped until the session has closed (see :func:`drop_unfinished_bar`).
    """
    fetch = fetch or _yahoo_history
    last_problem: list[str] = []

    @retry(
        retry=retry_if_exception_type(_Retryable),
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_exponential(multiplier=backoff_seconds, max=30),
        reraise=False,
    )
    def attempt() -> pd.DataFrame:
        try:
            raw = fetch(ticker, start, end, timeout)
        except Exception as exc:  # network, HTTP, parsing: all retried, then reported
            kind = "rate-limited by Yahoo" if _is_rate_limit(exc) else f"{type(exc).__name__}: {exc}"
            last_problem[:] = [kind]
            log.warning("Yahoo request for %s failed (%s); retrying", ticker, kind)
            raise _Retryable(kind) from exc
        if raw is None or len(raw) == 0:
            last_problem[:] = ["no rows returned"]
            log.warning("Yahoo returned no rows for %s; retrying", ticker)
            raise _Retryable("empty")
        return raw

    try:
        raw = attempt()
    except RetryError:
        window = f"{start or 'first'}..{end or 'today'}"
        problem = last_problem[0] if last_problem else "unknown error"
        raise DataSourceError(
            f"Yahoo Finance gave no data for {ticker} ({window}) after {attempts} attempts: {problem}. "
            "Try again later, or run offline with --source synthetic or --source csv:PATH"
        ) from None
    return drop_unfinished_bar(_from_yahoo(raw), now=now)


def drop_unfinished_bar(frame: pd.DataFrame, now: datetime | None = None) -> pd.DataFrame:
    """Drop today's bar while the US session is still open (Yahoo serves it with a moving close)."""
    ny = (now or datetime.now(UTC)).astimezone(ZoneInfo("America/New_York"))
    if len(frame) and ny.time() < MARKET_CLOSE_SETTLED and frame["date"].iloc[-1].date() >= ny.date():
        log.info("dropping the unfinished bar of %s (New York time %s)", ny.date(), ny.strftime("%H:%M"))
        return frame.iloc[:-1].reset_index(drop=True)
    return frame


def _from_yahoo(raw: pd.DataFrame) -> pd.DataFrame:
    frame = raw.copy()
    if isinstance(frame.columns, pd.MultiIndex):  # yf.download's (field, ticker) columns
        frame.columns = frame.columns.get_level_values(0)
    frame = frame.reset_index()
    frame = normalize_columns(frame)
    if "date" not in frame.columns and "datetime" in frame.columns:
        frame = frame.rename(columns={"datetime": "date"})
    missing = [c for c in PRICE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataSourceError(f"Yahoo answer lacks column(s) {', '.join(missing)}; got {list(frame.columns)}")
    return frame.loc[:, list(PRICE_COLUMNS)].reset_index(drop=True)


# ---------------------------------------------------------------- synthetic


def _nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    first = date(year, month, 1)
    return first + timedelta(days=(weekday - first.weekday()) % 7 + 7 * (n - 1))


def market_holidays(year: int) -> set[date]:
    """A few fixed US market holidays (enough to make the calendar realistic, not NYSE-exact)."""
    days = {date(year, 1, 1), date(year, 7, 4), date(year, 12, 25)}
    days.add(_nth_weekday(year, 1, 0, 3))   # Martin Luther King Jr. Day
    days.add(_nth_weekday(year, 11, 3, 4))  # Thanksgiving
    # Labor Day: first Monday of September.
    days.add(_nth_weekday(year, 9, 0, 1))
    return days


def trading_days(first: date, last: date) -> pd.DatetimeIndex:
    """Weekdays from ``first`` to ``last`` without :func:`market_holidays`."""
    days = pd.bdate_range(first, last)
    if len(days) == 0:
        return days
    holidays = set().union(*(market_holidays(y) for y in range(first.year, last.year + 1)))
    return days[~days.to_series().dt.date.isin(holidays).to_numpy()]


def synthetic_prices(*, seed: int = DEFAULT_SEED, end: date | None = None) -> pd.DataFrame:
    """Seeded daily bars from ``SYNTHETIC_FIRST_DAY`` to ``end`` (default today).

    Returns follow a GARCH(1,1)-like process (volatility clusters) with
    positive drift and fat-ish tails; a small negative autocorrelation gives
    the models something faint to learn, as in real index data. Highs and
    lows bracket open and close; volume rises with volatility. The same seed
    gives the same bar for the same date whatever ``end`` is.
    """
    end = end or date.today()
    days = trading_days(SYNTHETIC_FIRST_DAY, end)
    n = len(days)
    rng = np.random.default_rng(seed)
    # Draw every stream for a fixed horizon (~65 years) so the values for a given
    # day do not depend on how many days were requested (prefix-stable).
    total = max(n, 16384)
    shocks = rng.standard_t(df=6, size=total) / np.sqrt(6 / 4)  # unit variance
    gap_noise = rng.standard_normal(total)
    wick_hi = np.abs(rng.standard_normal(total))
    wick_lo = np.abs(rng.standard_normal(total))
    vol_noise = rng.standard_normal(total)

    mu, long_var = 0.0003, 0.011**2
    alpha, beta, phi = 0.08, 0.90, -0.05
    omega = long_var * (1 - alpha - beta)
    ret = np.empty(n)
    sigma = np.empty(n)
    var, prev = long_var, 0.0
    for i in range(n):
        var = omega + alpha * prev**2 + beta * var
        s = min(np.sqrt(var), 0.05)
        r = mu + phi * prev + s * shocks[i]
        r = float(np.clip(r, -0.12, 0.12))
        ret[i], sigma[i], prev = r, s, r - mu
    close = 45.0 * np.exp(np.cumsum(np.log1p(ret)))
    prev_close = np.concatenate([[45.0], close[:-1]])
    open_ = prev_close * np.exp(0.25 * sigma * gap_noise[:n])
    top = np.maximum(open_, close)
    bottom = np.minimum(open_, close)
    high = top * (1 + 0.4 * sigma * wick_hi[:n])
    low = bottom * (1 - 0.4 * sigma * wick_lo[:n])
    volume = np.round(8e7 * (sigma / 0.011) * np.exp(0.25 * vol_noise[:n]))
    return pd.DataFrame(
        {
            "date": days.astype("datetime64[ns]"),
            "open": open_.round(4),
            "high": np.maximum(high, top).round(4),
            "low": np.minimum(low, bottom).round(4),
            "close": close.round(4),
            "volume": volume.astype("int64"),
        }
    )


def planted_signal_prices(*, seed: int, signal: float, end: date | None = None,
                          signal_until: date | None = None) -> pd.DataFrame:
    """Seeded bars whose next-day direction depends on today's move with a known strength.

    Volatility follows the same GARCH-like process as :func:`synthetic_prices`; the size of
    each move is drawn from it, its sign separately: UP with probability
    ``sigmoid(signal * z)``, where ``z`` is yesterday's move in units of its volatility
    (momentum). ``signal`` 0 is a random walk with no drift: every label is a fair coin,
    independent of every feature. After ``signal_until`` (when given) the signal is 0: the
    bars up to it are the same as without a break. Prefix-stable like :func:`synthetic_prices`.
    """
    end = end or date.today()
    days = trading_days(SYNTHETIC_FIRST_DAY, end)
    n = len(days)
    rng = np.random.default_rng([seed, 1])  # its own stream: never the realistic generator's
    total = max(n, 16384)
    size, coin = np.abs(rng.standard_t(df=6, size=total) / np.sqrt(6 / 4)), rng.random(total)
    wicks, vol_noise = np.abs(rng.standard_normal((2, total))), rng.standard_normal(total)
    long_var, alpha, beta = 0.011**2, 0.08, 0.90
    omega = long_var * (1 - alpha - beta)
    ret, sigma = np.empty(n), np.empty(n)
    var, prev, z = long_var, 0.0, 0.0
    strength = np.full(n, signal)
    if signal_until is not None:
        strength[days > pd.Timestamp(signal_until)] = 0.0
    for i in range(n):
        var = omega + alpha * prev**2 + beta * var
        s = min(np.sqrt(var), 0.05)
        up = coin[i] < 1 / (1 + np.exp(-strength[i] * z))
        r = min(s * max(size[i], 1e-4), 0.12) * (1 if up else -1)
        ret[i], sigma[i], prev, z = r, s, r, float(np.clip(r / s, -3, 3))
    close = 45.0 * np.exp(np.cumsum(np.log1p(ret)))
    open_ = np.concatenate([[45.0], close[:-1]])  # no overnight gap: the day's move is the label's move
    top, bottom = np.maximum(open_, close), np.minimum(open_, close)
    return pd.DataFrame({
        "date": days.astype("datetime64[ns]"),
        "open": open_.round(6), "close": close.round(6),
        "high": (top * (1 + 0.4 * sigma * wicks[0, :n])).round(6),
        "low": (bottom * (1 - 0.4 * sigma * wicks[1, :n])).round(6),
        "volume": np.round(8e7 * (sigma / 0.011) * np.exp(0.25 * vol_noise[:n])).astype("int64"),
    })
