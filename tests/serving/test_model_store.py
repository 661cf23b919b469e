"""Serving reads a version over MLflow's REST API: the same model, metrics and stored row as
MLflow's own client gives, without importing MLflow; other artifact stores fall back to it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from bentos.model_store import NotProxied, StoreError, artifact_path, read_version
from bentos.runtime import _read_with_mlflow, load_served_model
from contract.names import LATEST_FEATURES_ARTIFACT
from ml.features import FEATURE_COLUMNS
from tests.support import REPO_ROOT, register_tiny_version, train_version, write_pin_text


@pytest.fixture(scope="module")
def trained(mlflow_server: Any, tmp_path_factory: pytest.TempPathFactory) -> int:
    pin = write_pin_text(tmp_path_factory.mktemp("store") / "model-version.yaml", None)
    return train_version(mlflow_server.uri, pin, "synthetic:5")


def test_rest_reader_gives_what_mlflows_client_gives(mlflow_server: Any, trained: int) -> None:
    ours = read_version(mlflow_server.uri, trained, LATEST_FEATURES_ARTIFACT)
    theirs = _read_with_mlflow(mlflow_server.uri, trained)
    assert ours.run_id == theirs.run_id
    assert ours.metrics == theirs.metrics and "balanced_accuracy" in ours.metrics
    assert ours.latest_features == theirs.latest_features and ours.latest_features is not None
    rows = pd.DataFrame([ours.latest_features["features"]], columns=list(FEATURE_COLUMNS))
    rows = pd.concat([rows, rows * 1.5], ignore_index=True)
    assert ours.estimator.predict_proba(rows).tolist() == theirs.estimator.predict_proba(rows).tolist()


def test_serving_loads_a_version_without_importing_mlflow(mlflow_server: Any, trained: int) -> None:
    code = ("import sys, json; from bentos.runtime import load_served_model; "
            f"m = load_served_model({mlflow_server.uri!r}, {trained}); "
            "print(json.dumps([m.version, m.stored_as_of is not None, 'mlflow' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [trained, True, False]


def test_a_format_the_reader_does_not_know_is_loaded_through_mlflow(mlflow_server: Any) -> None:
    from ml.tracking import Tracker

    version, run_id = register_tiny_version(mlflow_server.uri, Tracker(mlflow_server.uri).experiment_id("store"),
                                            skops=True)  # the format versions had before cloudpickle
    model = load_served_model(mlflow_server.uri, version)  # model_store declines, MLflow's client loads it
    assert model.run_id == run_id and model.stored_row is None
    assert 0 <= model.p_up_rows(pd.DataFrame([dict.fromkeys(FEATURE_COLUMNS, 0.1)]))[0] <= 1


def test_a_missing_version_names_mlflows_error(mlflow_server: Any) -> None:
    with pytest.raises(StoreError, match="RESOURCE_DOES_NOT_EXIST"):
        read_version(mlflow_server.uri, 987654, LATEST_FEATURES_ARTIFACT)


@pytest.mark.parametrize("uri", ["s3://bucket/1/models/m-1/artifacts", "file:///tmp/mlruns/1/x",
                                 "mlflow-artifacts://other-host:5000/1/x", "runs:/abc/model"])
def test_artifacts_not_proxied_by_the_tracking_server_are_left_to_mlflow(uri: str) -> None:
    with pytest.raises(NotProxied):
        artifact_path(uri)


def test_proxied_artifact_path() -> None:
    assert artifact_path("mlflow-artifacts:/1/models/m-abc/artifacts") == "1/models/m-abc/artifacts"
    assert Path(artifact_path("mlflow-artifacts:/1/x/")).name == "x"
