"""The replay clock: one trading day per interval from a start date."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from contract.errors import SettingsError
from contract.settings import TrainSettings
from ml.pipeline import PipelineConfig, prepare_data
from ml.replay import ReplayClock, ReplayConfigError, clock_from_settings

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def test_steps_follow_the_interval():
    clock = ReplayClock(start=date(2020, 1, 2), epoch=EPOCH, interval_seconds=300)
    assert clock.steps(EPOCH - timedelta(hours=1)) == 0
    assert clock.steps(EPOCH) == 0
    assert clock.steps(EPOCH + timedelta(seconds=299)) == 0
    assert clock.steps(EPOCH + timedelta(seconds=300)) == 1
    assert clock.steps(EPOCH + timedelta(hours=1)) == 12


def test_anchor_moves_one_trading_day_per_step_and_skips_holidays():
    dates = pd.Series(pd.to_datetime(["2020-12-23", "2020-12-24", "2020-12-28", "2020-12-29", "2020-12-30"]))
    clock = ReplayClock(start=date(2020, 12, 24), epoch=EPOCH, interval_seconds=60)
    assert clock.anchor(dates, EPOCH) == date(2020, 12, 24)
    assert clock.anchor(dates, EPOCH + timedelta(minutes=1)) == date(2020, 12, 28)
    assert clock.anchor(dates, EPOCH + timedelta(minutes=2)) == date(2020, 12, 29)
    # Past the data: stays on the last bar.
    assert clock.anchor(dates, EPOCH + timedelta(days=3)) == date(2020, 12, 30)
    # A start on a holiday begins at the next trading day.
    assert ReplayClock(date(2020, 12, 25), EPOCH, 60).anchor(dates, EPOCH) == date(2020, 12, 28)


def _clock(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> ReplayClock:
    for key in ("PRIMER_REPLAY_START", "PRIMER_REPLAY_EPOCH", "PRIMER_REPLAY_INTERVAL_SECONDS", "PRIMER_MODE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return clock_from_settings(TrainSettings.load())


def test_env_parsing_names_the_variable(monkeypatch: pytest.MonkeyPatch):
    env = {"PRIMER_REPLAY_START": "2019-01-02", "PRIMER_REPLAY_EPOCH": "2026-01-01T00:00:00Z",
           "PRIMER_REPLAY_INTERVAL_SECONDS": "120"}
    clock = _clock(monkeypatch, env)
    assert clock == ReplayClock(date(2019, 1, 2), EPOCH, 120.0)
    for key, bad in [("PRIMER_REPLAY_START", "soon"), ("PRIMER_REPLAY_EPOCH", "noon"),
                     ("PRIMER_REPLAY_INTERVAL_SECONDS", "0"), ("PRIMER_REPLAY_INTERVAL_SECONDS", "nan"),
                     ("PRIMER_REPLAY_INTERVAL_SECONDS", "inf")]:
        with pytest.raises(SettingsError, match=key):
            _clock(monkeypatch, {**env, key: bad})
    with pytest.raises(ReplayConfigError, match="PRIMER_REPLAY_EPOCH"):
        _clock(monkeypatch, {"PRIMER_REPLAY_START": "2019-01-02"})
    assert TrainSettings.load().mode == "live"
    with pytest.raises(SettingsError, match="PRIMER_MODE"):
        _clock(monkeypatch, {"PRIMER_MODE": "fast"})


def test_pipeline_anchor_in_replay_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("PRIMER_REPLAY_START", "2018-01-02")
    monkeypatch.setenv("PRIMER_REPLAY_EPOCH", "2026-01-01T00:00:00Z")
    monkeypatch.setenv("PRIMER_REPLAY_INTERVAL_SECONDS", "300")
    settings = TrainSettings.load(data_source="synthetic:3", mode="replay", train_years=1)
    lines: list[str] = []
    anchors = []
    for minutes in (0, 5, 20):
        cfg = PipelineConfig(settings, now=EPOCH + timedelta(minutes=minutes))
        prices, anchor = prepare_data(cfg, echo=lines.append)
        assert prices["date"].iloc[-1].date() == anchor, "nothing after the anchor is visible"
        anchors.append(anchor)
    # 2018-01-02 (Tue) then +1 and +4 trading days (weekend skipped).
    assert anchors == [date(2018, 1, 2), date(2018, 1, 3), date(2018, 1, 8)]
    assert any("[replay] 4 step(s)" in line for line in lines)
