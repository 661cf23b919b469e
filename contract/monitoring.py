"""``promotion/monitoring.yaml``: the monitor's thresholds, in git beside the gate policy.

Which test and level call a served version "worse than climatology" is *not* here: the
monitor uses the gate's own (``promotion/policy.yaml``), so the word means the same in
both places. This file says how much live evidence it takes, and when drift alerts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from contract.errors import SettingsError
from contract.yaml_files import load_model, non_negative, one_sided_level, parse_model, positive_int

EMPTY = "expected a mapping of thresholds"


class MonitoringError(SettingsError):
    """The monitoring thresholds file is missing or invalid; the message names the field."""


class Monitoring(BaseModel):
    """Every field optional; each checked with a message naming it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # The rolling window, in scored trading days.
    rolling_days: int = 20
    # A version is judged (and may be demoted) only with at least this many scored days.
    min_live_days: int = 20
    # propose: open a demotion pull request when warranted; off: report only.
    demotion: Literal["propose", "off"] = "propose"
    # Drift: the recent window (trading days) compared with the version's training window.
    drift_window_days: int = 60
    psi_bins: int = 10
    psi_alert: float = 0.25
    # The feature check's false-alarm level: its p-value is calibrated on every window of the
    # source's history before the recent one (ml/drift.py).
    psi_level: float = 0.01
    up_rate_level: float = 0.01
    skew_alert: float = 1e-6

    @field_validator("rolling_days", "min_live_days", "drift_window_days", "psi_bins", mode="before")
    @classmethod
    def _positive_int(cls, value: Any, info: Any) -> Any:
        return positive_int(info.field_name, value)

    @field_validator("psi_alert", "skew_alert", mode="before")
    @classmethod
    def _non_negative(cls, value: Any, info: Any) -> Any:
        return non_negative(info.field_name, value)

    @field_validator("up_rate_level", "psi_level", mode="before")
    @classmethod
    def _level(cls, value: Any, info: Any) -> Any:
        return one_sided_level(info.field_name, value)

    @field_validator("demotion", mode="before")
    @classmethod
    def _known_mode(cls, value: Any) -> Any:
        if value not in ("propose", "off"):
            raise ValueError(f"demotion must be propose or off, got {value!r}")
        return value


def parse_monitoring(text: str, source: str = "monitoring") -> Monitoring:
    return parse_model(Monitoring, text, source, MonitoringError, empty=EMPTY)


def load_monitoring(path: str | Path) -> Monitoring:
    return load_model(Monitoring, path, MonitoringError, "monitoring thresholds file", empty=EMPTY)
