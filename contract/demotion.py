"""Where a demotion rolls the pin back to, and why: what the monitor (``ml.demotion``) decides
and the demotion pull request (``promotion.demote``) shows.

In ``contract`` because both sides use it and neither may import the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

TargetKind = Literal["previous", "climatology"]


@dataclass(frozen=True)
class DemotionTarget:
    """The version a demotion pins instead of ``pinned``, with the numbers behind the choice.

    Every log loss is a mean over the same ``days`` (the pinned version's scored live days,
    ``first_day``..``last_day``), in nats per day.
    """

    pinned: int
    version: int  # the target
    kind: TargetKind
    reason: str  # one sentence, for the PR body and the monitor's output
    days: int
    first_day: str  # ISO dates
    last_day: str
    pinned_log_loss: float
    target_log_loss: float | None  # the target's forecasts on the same days (None: it could not be loaded)
    previous: int | None = None  # the previously pinned version that was considered
    previous_log_loss: float | None = None
    # The gate's paired test with climatology as the challenger, on the previous version's losses
    # (PairedTest.to_dict): passing means the previous version is worse than climatology too.
    previous_vs_climatology: dict[str, Any] | None = None
    registered_now: bool = False  # a climatology version was fitted and registered for this demotion

