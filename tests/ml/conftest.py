"""Fixtures for the pipeline tests.

- Every test runs with a clean PRIMER_* environment, a temporary pin file and
  PRIMER_REPO_DIR pointing at an empty folder, so neither the repository's own
  pin nor the developer's shell leak in, and no test can act on this checkout.
- Tests use the session MLflow servers (tests/conftest.py); the model name
  ``spy-direction`` is fixed, so they assert versions relative to each other.
- ``train`` runs the real ``primer train`` CLI in-process (click's CliRunner) and keeps
  the ``PipelineResult`` it got, so tests assert on the result rather than parse its output.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest.mock import patch

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from ml.data import synthetic_prices
from primer.cli import main
from tests.support import scrub_environ, write_pin_text

if TYPE_CHECKING:
    from ml.pipeline import PipelineResult

# A small grid keeps the integration tests quick; the packaged grid is tested in test_train.py.
FAST_GRID = """\
select_by: log_loss
candidates:
  - {name: rf_small, family: random_forest, params: {n_estimators: 10, max_depth: 3}}
  - {name: logreg, family: logistic_regression, params: {C: 1.0}}
"""
ANCHOR = date(2024, 6, 28)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    scrub_environ(monkeypatch)
    pin = write_pin_text(tmp_path / "model-version.yaml", None)
    monkeypatch.setenv("PRIMER_PIN_FILE", str(pin))
    # Never this checkout: whatever a test runs (git_sha, a promotion step) sees an empty folder.
    no_repo = tmp_path / "no-repo"
    no_repo.mkdir()
    monkeypatch.setenv("PRIMER_REPO_DIR", str(no_repo))
    return pin


@pytest.fixture
def fast_grid(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(FAST_GRID)
    return path


@pytest.fixture(scope="session")
def market() -> pd.DataFrame:
    """Synthetic daily bars up to ANCHOR (seed 7), shared read-only."""
    return synthetic_prices(seed=7, end=ANCHOR)


def write_csv(frame: pd.DataFrame, path: Path, upper: bool = True) -> Path:
    out = frame.copy()
    if "date" in out.columns and pd.api.types.is_datetime64_any_dtype(out["date"]):
        out["date"] = out["date"].dt.strftime("%Y-%m-%d")
    if upper:  # as Yahoo exports them: Date, Open, ...
        out.columns = [str(c).capitalize() for c in out.columns]
    out.to_csv(path, index=False)
    return path


@dataclass
class Trainer:
    """``primer train ARGS`` in-process; ``last`` is the run's ``PipelineResult`` (None if it failed)."""

    uri: str
    pin: Path
    last: PipelineResult | None = None

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        import ml.pipeline

        run_pipeline = ml.pipeline.run_pipeline

        def recording(*a: Any, **kw: Any) -> PipelineResult:
            self.last = run_pipeline(*a, **kw)
            return self.last

        self.last = None
        runner = CliRunner()
        full_env = {"MLFLOW_TRACKING_URI": self.uri, **(env or {})}
        with patch.object(ml.pipeline, "run_pipeline", recording):  # the CLI looks it up when it runs
            return runner.invoke(main, ["train", *args], env=full_env, catch_exceptions=False)

    def pin_version(self, version: int | None) -> None:
        write_pin_text(self.pin, version)


@pytest.fixture
def trainer_factory(clean_env: Path) -> Callable[[str], Trainer]:
    return lambda uri: Trainer(uri=uri, pin=clean_env)
