"""Where a demotion rolls the pin back to (issue 13).

When the pinned version is significantly worse than climatology on its live days
(``LiveReport.demotion_warranted``), the pin goes back to:

1. the previously pinned version, when its forecasts on the *same* logged feature rows
   the pinned version answered lost less (mean log loss) than the pinned version's answers,
   and it is not itself significantly worse than climatology there (the gate's own test,
   level and minimum effect, climatology as the challenger, as the monitor judges the pin);
2. else the climatology version: the newest registered version whose recipe is the
   climatology family. When there is none, climatology is fitted on the training rows up to
   the monitor's anchor and registered the way the pipeline registers a version (the model,
   ``serving/latest_features.json``, the recipe, data source and git tags), through the same
   :class:`ml.tracking.Tracker` calls, so serving loads it like any other version.

The previous version is scored on the rows the service logged, not on rebuilt ones: the
comparison is exactly "what would it have said on those days". It was fitted before the
pinned version existed, so these days are out of sample for it too.

The scored days are the monitor's frame (``ml.monitor.ScoredDays.days``): indexed by as_of,
columns ``p_up`` (the pinned version's answer), ``label`` (1.0 up, 0.0 not), ``climatology``
(P(up) of climatology that day) and ``features`` (the logged row, JSON text or a dict).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contract import prediction_log as logged
from contract import registry
from contract.demotion import DemotionTarget
from contract.errors import PrimerError, one_line
from contract.names import CLIMATOLOGY_FAMILY, MODEL_NAME, Tag
from contract.significance import GateSpec, PairedTest, SignificanceError, paired_test
from ml import walkforward
from ml.drift import DriftError, served_rows
from ml.evaluate import metrics_dict, score
from ml.features import LABEL, build_features, labeled, tomorrow_row
from ml.folds import log_losses, recipe_to_json
from ml.tracking import Tracker, git_sha
from ml.train import Candidate, predict_up

CLIMATOLOGY = "climatology"  # the scored days' column: P(up) of climatology that day
SCORED_COLUMNS = (logged.P_UP, LABEL, CLIMATOLOGY, logged.FEATURES)
CLIMATOLOGY_RECIPE = Candidate("climatology", CLIMATOLOGY_FAMILY)  # as in ml/candidates.yaml


class DemotionError(PrimerError):
    """No rollback target could be chosen or registered; the message says why."""


@dataclass(frozen=True)
class ClimatologyFit:
    """How to fit climatology when no version of it is registered: the monitor's prices (validated,
    up to its anchor), the pipeline's training window in rows, and the data source's name."""

    prices: pd.DataFrame
    train_rows: int
    source: str
    repo_root: Path | None = None  # for the git_sha tag; None: "unknown"


@dataclass(frozen=True)
class PreviousCheck:
    """The previously pinned version on the pinned version's scored days."""

    version: int
    better: bool  # the rollback target: lower log loss, and not worse than climatology
    reason: str
    pinned_log_loss: float
    log_loss: float | None = None  # None: it could not be loaded
    versus_climatology: PairedTest | None = None  # climatology as the challenger


def _check_days(days: pd.DataFrame) -> None:
    missing = [c for c in SCORED_COLUMNS if c not in days.columns]
    if missing:
        raise DemotionError(f"the scored days lack column(s) {', '.join(missing)}; "
                            f"expected {', '.join(SCORED_COLUMNS)}")
    if days.empty:
        raise DemotionError("no scored days: nothing to judge a rollback target on")


def logged_rows(days: pd.DataFrame) -> pd.DataFrame:
    """The feature rows the pinned version answered from, in :data:`FEATURE_COLUMNS` order."""
    try:
        return served_rows(days.index, days[logged.FEATURES]).set_axis(days.index)
    except DriftError as exc:
        raise DemotionError(f"{exc}: cannot score another version on them") from None


def mean_log_loss(days: pd.DataFrame, p_up: Any) -> float:
    return float(np.mean(log_losses(days[LABEL], p_up)))


def previous_better_on_same_days(tracker: Tracker, previous: int, days: pd.DataFrame, gate: GateSpec) -> PreviousCheck:
    """Score ``previous`` on the logged rows of ``days`` against the pinned version's answers."""
    _check_days(days)
    pinned_loss = mean_log_loss(days, days[logged.P_UP])
    try:
        p_up = predict_up(tracker.load_version(previous), logged_rows(days))
    except DemotionError:
        raise
    except Exception as exc:  # pruned, unloadable: then it is no rollback target
        return PreviousCheck(previous, False, f"previously pinned v{previous} could not be loaded ({one_line(exc)})",
                             pinned_loss)
    losses = log_losses(days[LABEL], p_up)
    loss = float(np.mean(losses))
    try:
        test = paired_test(log_losses(days[LABEL], days[CLIMATOLOGY]), losses, level=gate.level, test=gate.test)
    except SignificanceError as exc:
        return PreviousCheck(previous, False, f"v{previous} cannot be tested against climatology ({exc})",
                             pinned_loss, loss)
    n = len(days)
    if loss >= pinned_loss:
        reason = (f"previously pinned v{previous} lost as much or more on the same {n} days "
                  f"({loss:.4f} vs {pinned_loss:.4f})")
        return PreviousCheck(previous, False, reason, pinned_loss, loss, test)
    if test.passes(gate.min_effect):
        reason = (f"previously pinned v{previous} lost less ({loss:.4f} vs {pinned_loss:.4f}) but is itself worse than "
                  f"climatology on those {n} days (p = {test.p_value:.3f} at level {gate.level})")
        return PreviousCheck(previous, False, reason, pinned_loss, loss, test)
    reason = (f"previously pinned v{previous} lost less on the same {n} days "
              f"({loss:.4f} vs {pinned_loss:.4f} nats/day) "
              f"and is not shown worse than climatology there (p = {test.p_value:.3f}, level {gate.level})")
    return PreviousCheck(previous, True, reason, pinned_loss, loss, test)


def newest_climatology(tracker: Tracker, name: str = MODEL_NAME) -> int | None:
    """The newest registered version whose recipe is the climatology family, None if there is none."""
    found = [int(mv.version) for mv in registry.all_versions(tracker.client, name)
             if registry.is_climatology_recipe(mv.tags.get(Tag.RECIPE.value))]
    return max(found) if found else None


def is_climatology(tracker: Tracker, version: int, name: str = MODEL_NAME) -> bool:
    return registry.is_climatology_recipe(tracker.version_tags(version, name).get(Tag.RECIPE.value))


def register_climatology(tracker: Tracker, fit: ClimatologyFit, days: pd.DataFrame) -> tuple[int, Any]:
    """Fit climatology on the training rows up to the anchor, log and register it like the pipeline
    does; returns (version, model). Its run's metrics are its scores on ``days`` (the live days)."""
    rows = labeled(build_features(fit.prices))
    model = walkforward.refit_to_anchor(CLIMATOLOGY_RECIPE, rows, fit.train_rows)
    next_row, as_of = tomorrow_row(fit.prices)
    train = rows.iloc[-fit.train_rows:]
    anchor = fit.prices["date"].iloc[-1].date().isoformat()
    sha = git_sha(fit.repo_root) if fit.repo_root is not None else "unknown"
    tags = {"anchor": anchor, Tag.DATA_SOURCE.value: fit.source, Tag.GIT_SHA.value: sha,
            "candidate": CLIMATOLOGY_RECIPE.name, "family": CLIMATOLOGY_RECIPE.family, "purpose": "demotion"}
    run_id = tracker.start_run(tracker.experiment_id(), f"demotion-climatology-{anchor}", tags)
    try:
        live = score(days[LABEL].astype(int), predict_up(model, logged_rows(days)))
        tracker.log(run_id, params={"candidate": CLIMATOLOGY_RECIPE.name, "family": CLIMATOLOGY_RECIPE.family,
                                    "anchor": anchor, "data_source": fit.source, "train_rows": len(train),
                                    "train_start": train.index[0].date().isoformat(),
                                    "train_end": train.index[-1].date().isoformat(),
                                    "metrics_on": f"live days {_day(days, 0)}..{_day(days, -1)}"},
                    metrics={**metrics_dict(live), "train_rows": float(len(train))})
        model_uri = tracker.log_model(run_id, model, train)
        tracker.log_latest_features(run_id, next_row, as_of)
        tracker.end_run(run_id)
    except BaseException:
        tracker.fail_open_runs()
        raise
    version = tracker.register(model_uri, run_id, {
        Tag.EVAL_START.value: _day(days, 0), Tag.EVAL_END.value: _day(days, -1),
        Tag.DATA_SOURCE.value: fit.source, Tag.GIT_SHA.value: sha, Tag.RECIPE.value: recipe_to_json(CLIMATOLOGY_RECIPE),
    })
    return version, model


def _day(days: pd.DataFrame, i: int) -> str:
    return pd.Timestamp(days.index[i]).date().isoformat()


def _climatology_target(tracker: Tracker, days: pd.DataFrame, fit: ClimatologyFit | None,
                        why_not_previous: str) -> tuple[int, float | None, bool, str]:
    """(version, its mean log loss on ``days`` or None, registered now?, reason)."""
    version = newest_climatology(tracker)
    if version is not None:
        try:
            loss: float | None = mean_log_loss(days, predict_up(tracker.load_version(version), logged_rows(days)))
        except DemotionError:
            raise
        except Exception:  # noqa: BLE001 - the number is for the PR body only; the target stands
            loss = None
        return version, loss, False, f"{why_not_previous}; rolling back to climatology v{version}"
    if fit is None:
        raise DemotionError(f"{why_not_previous}, and no climatology version is registered (nothing to fit one on)")
    try:
        version, model = register_climatology(tracker, fit, days)
    except Exception as exc:
        raise DemotionError(f"{why_not_previous}; registering a climatology version failed: {one_line(exc)}") from exc
    loss = mean_log_loss(days, predict_up(model, logged_rows(days)))
    return version, loss, True, (f"{why_not_previous}; no climatology version was registered: fitted on "
                                 f"{fit.train_rows} rows up to {fit.prices['date'].iloc[-1].date()} as v{version}")


def choose_target(tracker: Tracker, *, pinned: int, previous: int | None, days: pd.DataFrame, gate: GateSpec,
                  fit: ClimatologyFit | None) -> DemotionTarget | None:
    """The rollback target of ``pinned`` on its scored ``days`` (see the module docstring); None when
    ``pinned`` is itself a climatology version (there is nothing simpler to roll back to).
    ``fit`` is used only when no climatology version is registered."""
    _check_days(days)
    if is_climatology(tracker, pinned):
        return None
    check = None
    if previous is not None and previous != pinned:
        check = previous_better_on_same_days(tracker, previous, days, gate)
    common: dict[str, Any] = dict(
        pinned=pinned, days=len(days), first_day=_day(days, 0), last_day=_day(days, -1),
        pinned_log_loss=mean_log_loss(days, days[logged.P_UP]),
        previous=previous if check is not None else None,
        previous_log_loss=check.log_loss if check is not None else None,
        previous_vs_climatology=check.versus_climatology.to_dict() if check and check.versus_climatology else None)
    if check is not None and check.better:
        return DemotionTarget(version=check.version, kind="previous", reason=check.reason,
                              target_log_loss=check.log_loss, **common)
    why = check.reason if check is not None else "no earlier pinned version to roll back to"
    version, loss, registered_now, reason = _climatology_target(tracker, days, fit, why)
    return DemotionTarget(version=version, kind="climatology", reason=reason, target_log_loss=loss,
                          registered_now=registered_now, **common)
