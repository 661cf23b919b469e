"""Benchmark: how often the drift verdict fires on stationary markets, and on regime changes.

Each window is a version's training window (``--train-rows`` feature rows, the pipeline's
10 years by default) and the monitor's recent window (``drift_window_days`` rows, from
promotion/monitoring.yaml) ``gap`` rows after it, cut from bars loaded through the
project's own source interface: ``synthetic:SEED``, ``synthetic:SEED:0`` and ``synthetic:SEED:0.5``
(stationary),
and CSV files (``csv:PATH``) of the same synthetic bars with a regime change planted at
the first recent row:

- ``vol x2`` / ``vol x3``: every daily move (and intraday range) two or three times larger;
- ``vol x3, last 20 days``: the change is only 20 days old when the monitor looks;
- ``up-rate 0.7``: 40 % of the DOWN days turned UP (about 70 % UP days instead of 53 %);
- ``range x2`` / ``range x4``: intraday ranges two or four times as wide, closes unchanged (a level
  shift of one feature);
- ``dividend``: a 0.5 % dividend adjusts every earlier bar 30 rows into the recent window
  (the served rows were computed before it: training/serving skew).

The stationary rows are the false-alarm rate of the whole verdict (any check); the others
its detection rate. The last column is a fixed PSI threshold (any feature at or above
``psi_alert``) on the same windows: why the feature check is calibrated to the null instead.

    python tests/perf/bench_drift.py [--seeds 20] [--train-rows 2520] [--thresholds FILE] [--only NAME]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from contract.live_report import DRIFT_CHECKS, DriftStatus  # noqa: E402
from contract.monitoring import Monitoring, load_monitoring  # noqa: E402
from ml.data import load_prices  # noqa: E402
from ml.drift import drift_status  # noqa: E402
from ml.features import build_features  # noqa: E402

END = date(2026, 6, 30)
TRAIN_ROWS = 2520  # ml.pipeline: train_years 10 x 252
GAPS = (0, 20, 60, 120, 250)  # rows between the training window's end and the recent window's start
OFFSET_STEP = 450  # rows between the training windows of one seed


# ---------------------------------------------------------------- regime changes (price frames)

def _returns(prices: pd.DataFrame) -> np.ndarray:
    close = prices["close"].to_numpy(dtype=float)
    return np.concatenate([[0.0], np.diff(np.log(close))])


def _rebuild(prices: pd.DataFrame, start: int, log_ret: np.ndarray, wick: float) -> pd.DataFrame:
    """Bars from row ``start`` on re-made from new log returns, each bar's open gap and wicks
    (relative to its close) scaled by ``wick``; earlier bars unchanged."""
    out = prices.copy()
    close = prices["close"].to_numpy(dtype=float)
    new_close = close.copy()
    new_close[start:] = close[start - 1] * np.exp(np.cumsum(log_ret[start:]))
    prev = np.concatenate([[close[0]], close[:-1]])
    new_prev = np.concatenate([[new_close[0]], new_close[:-1]])
    gap = np.log(prices["open"].to_numpy(dtype=float) / prev)
    top = np.maximum(prices["open"].to_numpy(dtype=float), close)
    bottom = np.minimum(prices["open"].to_numpy(dtype=float), close)
    up_wick = np.log(prices["high"].to_numpy(dtype=float) / top)
    down_wick = np.log(bottom / prices["low"].to_numpy(dtype=float))
    new_open = new_prev * np.exp(gap * wick)
    new_top, new_bottom = np.maximum(new_open, new_close), np.minimum(new_open, new_close)
    s = slice(start, None)
    out.loc[out.index[s], "open"] = new_open[s]
    out.loc[out.index[s], "close"] = new_close[s]
    out.loc[out.index[s], "high"] = (new_top * np.exp(up_wick * wick))[s]
    out.loc[out.index[s], "low"] = (new_bottom * np.exp(-down_wick * wick))[s]
    return out


def volatility_regime(prices: pd.DataFrame, start: int, factor: float) -> pd.DataFrame:
    """From bar ``start`` on, every move and range ``factor`` times larger (volume too: it rises with volatility)."""
    out = _rebuild(prices, start, _returns(prices) * factor, factor)
    out.loc[out.index[start:], "volume"] = (prices["volume"].to_numpy()[start:] * factor).astype("int64")
    return out


def up_rate_regime(prices: pd.DataFrame, start: int, flip: float, seed: int = 0) -> pd.DataFrame:
    """From bar ``start`` on, a share ``flip`` of the DOWN days turned UP (same size of move)."""
    ret = _returns(prices)
    rng = np.random.default_rng(seed)
    turn = (np.arange(len(ret)) >= start) & (ret < 0) & (rng.random(len(ret)) < flip)
    return _rebuild(prices, start, np.where(turn, -ret, ret), 1.0)


def range_regime(prices: pd.DataFrame, start: int, factor: float) -> pd.DataFrame:
    """From bar ``start`` on, intraday ranges ``factor`` times wider; closes unchanged."""
    out = prices.copy()
    top = np.maximum(prices["open"], prices["close"])
    bottom = np.minimum(prices["open"], prices["close"])
    s = out.index[start:]
    out.loc[s, "high"] = (top + factor * (prices["high"] - top))[s]
    out.loc[s, "low"] = (bottom - factor * (bottom - prices["low"]))[s]
    return out


def dividend_adjusted(prices: pd.DataFrame, ex_row: int, yield_: float) -> pd.DataFrame:
    """The bars as a source shows them after a dividend of ``yield_`` x the close before ``ex_row``:
    every earlier open/high/low/close multiplied by ``1 - yield_`` (Yahoo's adjustment)."""
    out = prices.copy()
    factor = 1.0 - yield_
    rows = out.index[:ex_row]
    for column in ("open", "high", "low", "close"):
        out.loc[rows, column] = out.loc[rows, column] * factor
    return out


def via_csv(prices: pd.DataFrame, folder: Path, name: str) -> pd.DataFrame:
    """``prices`` written as a CSV and read back through the source interface (``csv:PATH``)."""
    path = folder / f"{name}.csv"
    out = prices.copy()
    out["date"] = out["date"].dt.strftime("%Y-%m-%d")
    out.to_csv(path, index=False)
    return load_prices(f"csv:{path}")


# ---------------------------------------------------------------- windows


@dataclass(frozen=True)
class Window:
    seed: int
    train_start: int  # feature-row index of the training window's first row
    gap: int

    def recent_start(self, train_rows: int) -> int:
        return self.train_start + train_rows + self.gap


def windows(seeds: int, n_rows: int, train_rows: int, recent: int) -> Iterator[Window]:
    for seed in range(1, seeds + 1):
        for k, start in enumerate(range(0, n_rows - train_rows - max(GAPS) - recent, OFFSET_STEP)):
            yield Window(seed, start, GAPS[(seed + k) % len(GAPS)])


Builder = Callable[[int, int, Path], tuple[pd.DataFrame, pd.DataFrame | None]]
# A scenario: (seed, price row where the recent window starts, scratch folder) ->
# (bars the monitor sees now, bars the service saw when it answered; None = the same).


def scenario_builders(recent: int) -> dict[str, tuple[str, Builder]]:
    def plain(seed: int, row: int, tmp: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        return load_prices(f"synthetic:{seed}", end=END), None

    def planted(signal: float) -> Builder:
        def build(seed: int, row: int, tmp: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
            return load_prices(f"synthetic:{seed}:{signal:g}", end=END), None
        return build

    def changed(make: Callable[[pd.DataFrame, int], pd.DataFrame], at: int = 0) -> Builder:
        def build(seed: int, row: int, tmp: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
            return via_csv(make(load_prices(f"synthetic:{seed}", end=END), row + at), tmp, f"s{seed}"), None
        return build

    def dividend(seed: int, row: int, tmp: Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        before = load_prices(f"synthetic:{seed}", end=END)
        return via_csv(dividend_adjusted(before, row + recent // 2, 0.005), tmp, f"d{seed}"), before

    return {
        "stationary synthetic": ("null", plain),
        "stationary, no signal": ("null", planted(0.0)),
        "stationary, signal 0.5": ("null", planted(0.5)),
        "vol x2": ("change", changed(lambda p, r: volatility_regime(p, r, 2.0))),
        "vol x3": ("change", changed(lambda p, r: volatility_regime(p, r, 3.0))),
        "vol x3, last 20 days": ("change", changed(lambda p, r: volatility_regime(p, r, 3.0), recent - 20)),
        "up-rate 0.7": ("change", changed(lambda p, r: up_rate_regime(p, r, 0.4))),
        "range x2": ("change", changed(lambda p, r: range_regime(p, r, 2.0))),
        "range x4": ("change", changed(lambda p, r: range_regime(p, r, 4.0))),
        "dividend": ("change", dividend),
    }


def evaluate(window: Window, builder: Builder, thresholds: Monitoring, train_rows: int,
             tmp: Path) -> DriftStatus:
    recent_rows = thresholds.drift_window_days
    first = window.recent_start(train_rows)
    # build_features drops WARMUP_ROWS - 1 price rows: feature row i is price row i + 19.
    now, then = builder(window.seed, first + 19, tmp)
    features = build_features(now)
    training = features.iloc[window.train_start:window.train_start + train_rows].dropna(subset=["label"])
    recent = features.iloc[first:first + recent_rows]
    served = (build_features(then) if then is not None else features).loc[recent.index]
    # The null's windows: every row the source had before the recent window (as ml.drift.drift_from_features).
    return drift_status(training, recent, served.drop(columns="label"), thresholds, history=features.iloc[:first])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--train-rows", type=int, default=TRAIN_ROWS)
    parser.add_argument("--only", default="", help="run only the scenarios whose name contains this")
    parser.add_argument("--thresholds", default=str(REPO / "promotion" / "monitoring.yaml"),
                        help="the monitoring thresholds file to measure (default: the repository's)")
    args = parser.parse_args()
    thresholds = load_monitoring(args.thresholds)
    n_rows = len(build_features(load_prices("synthetic:1", end=END)))
    plan = list(windows(args.seeds, n_rows, args.train_rows, thresholds.drift_window_days))
    print(f"{len(plan)} windows per scenario: {args.seeds} seeds, training {args.train_rows} rows, recent "
          f"{thresholds.drift_window_days} rows {'/'.join(map(str, GAPS))} rows after it; "
          f"psi_level {thresholds.psi_level}, psi_alert {thresholds.psi_alert}, up_rate_level "
          f"{thresholds.up_rate_level}, skew_alert {thresholds.skew_alert:g}\n")
    head = ("scenario", "kind", "windows", "alerts", "rate", *DRIFT_CHECKS, f"fixed PSI>={thresholds.psi_alert:g}")
    rows: list[tuple[str, ...]] = [head]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-drift-") as tmp:
        for name, (kind, builder) in scenario_builders(thresholds.drift_window_days).items():
            if args.only and args.only not in name:
                continue
            found = [evaluate(w, builder, thresholds, args.train_rows, Path(tmp)) for w in plan]
            n = len(found)
            per_check = [f"{sum(s.alerts[c] for s in found) / n:.1%}" for c in DRIFT_CHECKS]
            fixed = sum(max(s.psi.values()) >= thresholds.psi_alert for s in found) / n
            alerts = sum(s.alerting for s in found)
            rows.append((name, kind, str(n), str(alerts), f"{alerts / n:.1%}", *per_check, f"{fixed:.1%}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    for r in rows:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    print(f"\n{time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
