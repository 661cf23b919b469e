"""The replay clock: compressed time, so a lab sees many runs and promotions in an hour.

In replay mode (``PRIMER_MODE=replay``) the anchor date is
``PRIMER_REPLAY_START`` moved forward by ``floor((now - PRIMER_REPLAY_EPOCH) /
PRIMER_REPLAY_INTERVAL_SECONDS)`` trading days. Trading days are the dates
present in the data, so holidays are skipped exactly for any source; a step
beyond the last available bar stays on the last bar. In live mode
(the default) the anchor is today.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pandas as pd

from contract.errors import SettingsError
from contract.settings import ReplaySettings


class ReplayConfigError(SettingsError):
    """A replay setting is missing or inconsistent with the data; the message names the variable."""


@dataclass(frozen=True)
class ReplayClock:
    start: date
    epoch: datetime
    interval_seconds: float  # default: PRIMER_REPLAY_INTERVAL_SECONDS in contract.settings

    def steps(self, now: datetime | None = None) -> int:
        """Whole intervals elapsed since the epoch (0 before it)."""
        now = now or datetime.now(UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        elapsed = (now - self.epoch).total_seconds()
        return max(0, math.floor(elapsed / self.interval_seconds))

    def load_until(self, now: datetime | None = None) -> date:
        """A calendar date safely past the anchor (5 trading days per 7 calendar days, plus holidays)."""
        k = self.steps(now)
        return self.start + timedelta(days=math.ceil(k * 7 / 5) + 14)

    def anchor(self, dates: pd.Series | pd.DatetimeIndex, now: datetime | None = None) -> date:
        """The trading date ``steps(now)`` trading days after the first date >= start in ``dates``."""
        idx = pd.DatetimeIndex(pd.to_datetime(pd.Series(dates)).dropna().sort_values().unique())
        after = idx[idx >= pd.Timestamp(self.start)]
        if len(after) == 0:
            raise ReplayConfigError(f"PRIMER_REPLAY_START {self.start} is after the last bar of the data")
        return after[min(self.steps(now), len(after) - 1)].date()


def visible_end(settings: ReplaySettings, now: datetime | None = None) -> date:
    """The last calendar date a source may be asked for: today, or safely past the replay anchor."""
    if settings.mode != "replay":
        return date.today()
    return min(date.today(), clock_from_settings(settings).load_until(now))


def until_anchor(prices: pd.DataFrame, settings: ReplaySettings, now: datetime | None = None
                 ) -> tuple[pd.DataFrame, date | None]:
    """The bars known at the replay anchor and the anchor (replay mode); all bars and None (live)."""
    if settings.mode != "replay" or prices.empty:
        return prices, None
    anchor = clock_from_settings(settings).anchor(prices["date"], now)
    return prices.loc[~(pd.to_datetime(prices["date"]) > pd.Timestamp(anchor))].reset_index(drop=True), anchor


def clock_from_settings(settings: ReplaySettings) -> ReplayClock:
    """The clock of ``PRIMER_REPLAY_START``, ``PRIMER_REPLAY_EPOCH`` and ``PRIMER_REPLAY_INTERVAL_SECONDS``."""
    if settings.replay_start is None:
        raise ReplayConfigError("replay mode needs PRIMER_REPLAY_START (a date, e.g. 2018-01-02)")
    if settings.replay_epoch is None:
        raise ReplayConfigError("replay mode needs PRIMER_REPLAY_EPOCH (an ISO timestamp, e.g. 2026-01-01T00:00:00Z)")
    return ReplayClock(settings.replay_start, settings.replay_epoch, settings.replay_interval_seconds)
