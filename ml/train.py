"""Training: the candidate grid (from YAML) and fitting one candidate.

The grid ships as ``ml/candidates.yaml``; ``PRIMER_CANDIDATES_FILE`` (or
``primer train --candidates PATH``, both read by ``contract.settings``) names another file of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from sklearn.base import ClassifierMixin
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from contract.errors import SettingsError
from contract.evidence import METRICS as SELECT_METRICS
from ml.features import FEATURE_COLUMNS, LABEL

RANDOM_STATE = 42
PACKAGED_GRID = Path(__file__).with_name("candidates.yaml")


class CandidateConfigError(SettingsError):
    """The candidate file is missing or malformed; the message names the problem."""


@dataclass(frozen=True)
class Candidate:
    name: str
    family: str  # random_forest | logistic_regression | gradient_boosting
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Grid:
    candidates: tuple[Candidate, ...]
    select_by: str = "balanced_accuracy"
    # Trading days at the end of the training window held out to choose the best candidate.
    validation_days: int = 250
    source: str = "ml/candidates.yaml"


def _build_random_forest(params: dict[str, Any]) -> ClassifierMixin:
    # n_jobs=1: the machine is small and shared; parallel trees cost more than they save here.
    return RandomForestClassifier(random_state=RANDOM_STATE, n_jobs=1, **params)


def _build_logistic_regression(params: dict[str, Any]) -> ClassifierMixin:
    return Pipeline([("scale", StandardScaler()), ("logreg", LogisticRegression(max_iter=1000, **params))])


def _build_gradient_boosting(params: dict[str, Any]) -> ClassifierMixin:
    return GradientBoostingClassifier(random_state=RANDOM_STATE, **params)


FAMILIES = {
    "random_forest": _build_random_forest,
    "logistic_regression": _build_logistic_regression,
    "gradient_boosting": _build_gradient_boosting,
}


def load_grid(path: str | Path | None = None) -> Grid:
    """Read and check the candidate grid (None: the packaged one); raise :class:`CandidateConfigError`."""
    file = Path(path) if path else None
    if file is None:
        # Next to this module (shipped as package data; importlib.resources trips on editable installs).
        text = PACKAGED_GRID.read_text()
        source = "ml/candidates.yaml"
    else:
        try:
            text = file.read_text()
        except OSError as exc:
            raise CandidateConfigError(f"cannot read candidate file {file}: {exc.strerror or exc}") from exc
        source = str(file)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CandidateConfigError(f"{source}: YAML syntax error: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("candidates"), list) or not data["candidates"]:
        raise CandidateConfigError(f"{source}: expected a mapping with a non-empty 'candidates' list")
    select_by = data.get("select_by", Grid.select_by)
    if select_by not in SELECT_METRICS:
        raise CandidateConfigError(f"{source}: select_by {select_by!r} is not one of {', '.join(SELECT_METRICS)}")
    validation_days = data.get("validation_days", Grid.validation_days)
    if isinstance(validation_days, bool) or not isinstance(validation_days, int) or validation_days < 20:
        raise CandidateConfigError(f"{source}: validation_days must be an integer >= 20, got {validation_days!r}")
    out: list[Candidate] = []
    for i, item in enumerate(data["candidates"]):
        if not isinstance(item, dict) or "name" not in item or "family" not in item:
            raise CandidateConfigError(f"{source}: candidate #{i + 1} needs 'name' and 'family'")
        if item["family"] not in FAMILIES:
            raise CandidateConfigError(
                f"{source}: candidate {item['name']!r} has unknown family {item['family']!r}; "
                f"known: {', '.join(FAMILIES)}"
            )
        params = item.get("params") or {}
        if not isinstance(params, dict):
            raise CandidateConfigError(f"{source}: candidate {item['name']!r}: 'params' must be a mapping")
        cand = Candidate(name=str(item["name"]), family=item["family"], params=dict(params))
        try:
            build_estimator(cand)
        except TypeError as exc:
            raise CandidateConfigError(f"{source}: candidate {cand.name!r}: {exc}") from exc
        out.append(cand)
    names = [c.name for c in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CandidateConfigError(f"{source}: duplicate candidate name(s) {', '.join(dupes)}")
    return Grid(candidates=tuple(out), select_by=select_by, validation_days=validation_days, source=source)


def build_estimator(candidate: Candidate) -> ClassifierMixin:
    # Unknown parameters raise TypeError here, which load_grid reports at config time.
    return FAMILIES[candidate.family](candidate.params)


def fit(candidate: Candidate, train: pd.DataFrame) -> ClassifierMixin:
    """Fit ``candidate`` on the labelled rows of ``train`` (exactly FEATURE_COLUMNS, label 0/1 ints)."""
    X = train.loc[:, list(FEATURE_COLUMNS)]
    y = train[LABEL].astype(int)
    if y.nunique() < 2:
        raise ValueError(f"training window holds a single class ({int(y.iloc[0])}); cannot train {candidate.name}")
    est = build_estimator(candidate)
    est.fit(X, y)
    return est


def predict_up(model: Any, frame: pd.DataFrame) -> pd.Series:
    """P(next close is higher) for each row, from ``predict_proba``'s column of class 1."""
    proba = model.predict_proba(frame.loc[:, list(FEATURE_COLUMNS)])
    classes = list(getattr(model, "classes_", [0, 1]))
    col = classes.index(1) if 1 in classes else None
    values = proba[:, col] if col is not None else proba[:, 0] * 0.0
    return pd.Series(values, index=frame.index, name="p_up")
