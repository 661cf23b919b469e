"""Training: the candidate grid (from YAML) and fitting one candidate.

The grid ships as ``ml/candidates.yaml``; ``PRIMER_CANDIDATES_FILE`` (or
``primer train --candidates PATH``, both read by ``contract.settings``) names another file of the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from sklearn.base import ClassifierMixin
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from contract.errors import SettingsError
from contract.evidence import METRICS as SELECT_METRICS
from contract.yaml_files import parse_model
from ml.features import FEATURE_COLUMNS, LABEL

RANDOM_STATE = 42
PACKAGED_GRID = Path(__file__).with_name("candidates.yaml")


class CandidateConfigError(SettingsError):
    """The candidate file is missing or malformed; the message names the problem."""


@dataclass(frozen=True)
class Candidate:
    name: str
    family: str  # climatology | random_forest | logistic_regression | gradient_boosting
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Grid:
    candidates: tuple[Candidate, ...]
    select_by: str = "log_loss"
    # Walk-forward days just before the comparison folds, where the challenger is chosen.
    validation_days: int = 250
    source: str = "ml/candidates.yaml"
    fold_months: int = 3  # each fold refits on the rows before a block of this many calendar months


def _build_random_forest(params: dict[str, Any]) -> ClassifierMixin:
    # n_jobs=1: the machine is small and shared; parallel trees cost more than they save here.
    return RandomForestClassifier(random_state=RANDOM_STATE, n_jobs=1, **params)


def _build_logistic_regression(params: dict[str, Any]) -> ClassifierMixin:
    return Pipeline([("scale", StandardScaler()), ("logreg", LogisticRegression(max_iter=1000, **params))])


def _build_gradient_boosting(params: dict[str, Any]) -> ClassifierMixin:
    return GradientBoostingClassifier(random_state=RANDOM_STATE, **params)


def _build_climatology(params: dict[str, Any]) -> ClassifierMixin:
    # The training window's up-rate as P(up) every day: the honest "no skill" forecaster.
    return DummyClassifier(strategy="prior", **params)


FAMILIES = {
    "climatology": _build_climatology,
    "random_forest": _build_random_forest,
    "logistic_regression": _build_logistic_regression,
    "gradient_boosting": _build_gradient_boosting,
}


class _CandidateSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    family: str
    params: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _buildable(self) -> _CandidateSpec:
        if self.family not in FAMILIES:
            known = ", ".join(FAMILIES)
            raise ValueError(f"candidate {self.name!r} has unknown family {self.family!r}; known: {known}")
        try:  # unknown parameters raise TypeError here, at config time
            build_estimator(Candidate(self.name, self.family, dict(self.params or {})))
        except TypeError as exc:
            raise ValueError(f"candidate {self.name!r}: {exc}") from exc
        return self


class _GridFile(BaseModel):
    """``ml/candidates.yaml``."""

    model_config = ConfigDict(extra="forbid")

    candidates: list[_CandidateSpec]
    select_by: str = "log_loss"
    validation_days: int = 250
    fold_months: int = 3

    @field_validator("candidates", mode="before")
    @classmethod
    def _non_empty(cls, value: Any) -> Any:
        if not isinstance(value, list) or not value:
            raise ValueError("expected a non-empty 'candidates' list")
        for i, item in enumerate(value):
            if not isinstance(item, dict) or "name" not in item or "family" not in item:
                raise ValueError(f"candidate #{i + 1} needs 'name' and 'family'")
        return value

    @field_validator("select_by", mode="before")
    @classmethod
    def _known_metric(cls, value: Any) -> Any:
        if value not in SELECT_METRICS:
            raise ValueError(f"select_by {value!r} is not one of {', '.join(SELECT_METRICS)}")
        return value

    @field_validator("validation_days", mode="before")
    @classmethod
    def _enough_days(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value < 20:
            raise ValueError(f"validation_days must be an integer >= 20, got {value!r}")
        return value

    @field_validator("fold_months", mode="before")
    @classmethod
    def _whole_months(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 12:
            raise ValueError(f"fold_months must be an integer from 1 to 12, got {value!r}")
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> _GridFile:
        names = [c.name for c in self.candidates]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate candidate name(s) {', '.join(dupes)}")
        return self


def load_grid(path: str | Path | None = None) -> Grid:
    """Read and check the candidate grid (None: the packaged one); raise :class:`CandidateConfigError`."""
    file = Path(path) if path else None
    if file is None:
        # Next to this module (shipped as package data; importlib.resources trips on editable installs).
        text, source = PACKAGED_GRID.read_text(), "ml/candidates.yaml"
    else:
        try:
            text, source = file.read_text(), str(file)
        except OSError as exc:
            raise CandidateConfigError(f"cannot read candidate file {file}: {exc.strerror or exc}") from exc
    spec = parse_model(_GridFile, text, source, CandidateConfigError,
                       missing={"candidates": "expected a mapping with a non-empty 'candidates' list"})
    candidates = tuple(Candidate(c.name, c.family, dict(c.params or {})) for c in spec.candidates)
    return Grid(candidates=candidates, select_by=spec.select_by, validation_days=spec.validation_days, source=source,
                fold_months=spec.fold_months)


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
