"""Contracts of the service that need no server: the /predict schema matches the features."""

from __future__ import annotations

import subprocess
import sys

from tests.serving.conftest import REPO_ROOT


def test_feature_row_schema_matches_feature_columns() -> None:
    from bentos.service import FeatureRow
    from ml.features import FEATURE_COLUMNS

    assert tuple(FeatureRow.model_fields) == FEATURE_COLUMNS


def test_service_module_import_is_light() -> None:
    """`bentoml serve`'s supervisor imports the module too: no pandas, MLflow or sklearn there."""
    code = "import sys, bentos.service; print(sorted(m for m in ('pandas', 'mlflow', 'sklearn') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ml_serve_does_not_import_bentos() -> None:
    """Dependencies point bentos -> ml: `primer serve` only runs bentoml as a subprocess."""
    code = "import sys, ml.serve; print([m for m in sys.modules if m == 'bentos' or m.startswith('bentos.')])"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
