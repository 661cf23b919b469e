"""MLflow tracking and registry helpers used by the pipeline (and readable on their own).

Contract (see README): the best candidate is logged in its nested candidate
run as ``model`` with signature, input example, ``pyfunc_predict_fn=
"predict_proba"`` and the skops trusted types it needs, then registered as a
version of ``spy-direction`` with tags and the alias ``challenger``. That run
also holds ``serving/latest_features.json`` and the evaluation metrics.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import warnings
from datetime import date
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from ml.features import FEATURE_COLUMNS
from contract.names import CHALLENGER_ALIAS, EXPERIMENT_NAME, MLFLOW_PORT, MODEL_NAME, PromotionStatus, Tag
from contract.registry import RegistryUnreachable, probe, public_uri, tracking_uri

log = logging.getLogger(__name__)

LATEST_FEATURES_ARTIFACT = "serving/latest_features.json"
DATA_ARTIFACT_DIR = "data"
DATA_ARTIFACT_FILE = "prices.csv"
MODEL_ARTIFACT_NAME = "model"


class RegistryError(RuntimeError):
    """MLflow is unreachable or refused an operation; the message names the server."""


def connect(uri: str | None = None, timeout: float = 10.0) -> str:
    """Point MLflow at ``uri`` (default MLFLOW_TRACKING_URI) and check an HTTP server answers."""
    uri = uri or tracking_uri()
    try:
        probe(uri, timeout)  # file: and sqlite: stores pass: nothing to reach
    except RegistryUnreachable as exc:
        raise RegistryError(
            f"MLflow tracking server {public_uri(uri)} is not reachable ({exc.reason}); "
            f"start one (e.g. `mlflow server --port {MLFLOW_PORT}`) or set MLFLOW_TRACKING_URI"
        ) from exc
    # The pipeline prints its own progress; MLflow would add two URL lines per nested run.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    mlflow.set_tracking_uri(uri)
    return uri


def ensure_experiment(name: str = EXPERIMENT_NAME) -> str:
    """The experiment id of ``name``, created if needed (and set as the active one)."""
    return mlflow.set_experiment(name).experiment_id


def git_sha(repo: Path | None = None) -> str:
    """The commit of the code that trains (``unknown`` outside a git checkout, e.g. in an image)."""
    from contract.pin import repo_root

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo or repo_root(), capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def log_data_window(prices: pd.DataFrame, source: str, anchor: date) -> None:
    """Log the raw window as an MLflow dataset input and as a CSV artifact (reproducible from MLflow alone)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / DATA_ARTIFACT_FILE
        out = prices.copy()
        out["date"] = out["date"].dt.strftime("%Y-%m-%d")
        out.to_csv(path, index=False)
        mlflow.log_artifact(str(path), artifact_path=DATA_ARTIFACT_DIR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "source can be interpreted in multiple ways"
        dataset = mlflow.data.from_pandas(prices, source=_dataset_source(source), name=f"spy-daily-{anchor}")
    mlflow.log_input(dataset, context="training", tags={"data_source": source, "anchor": anchor.isoformat()})


def _dataset_source(source: str) -> Any:
    """Where the dataset can be fetched again: the CSV artifact, served by the tracking server."""
    from urllib.parse import urlencode

    from mlflow.data.http_dataset_source import HTTPDatasetSource

    uri = mlflow.get_tracking_uri()
    run = mlflow.active_run()
    if uri.startswith(("http://", "https://")) and run is not None:
        query = urlencode({"path": f"{DATA_ARTIFACT_DIR}/{DATA_ARTIFACT_FILE}", "run_uuid": run.info.run_id})
        return HTTPDatasetSource(url=f"{uri.rstrip('/')}/get-artifact?{query}")
    return source


def skops_trusted_types(model: Any) -> list[str]:
    """The types skops refuses to load by default for this model (e.g. sklearn.tree._tree.Tree)."""
    import skops.io as sio

    return sorted(sio.get_untrusted_types(data=sio.dumps(model)))


def log_model(model: Any, example: pd.DataFrame) -> Any:
    """Log ``model`` as ``model`` in the active run; returns MLflow's ModelInfo."""
    X = example.loc[:, list(FEATURE_COLUMNS)].astype(float)
    signature = infer_signature(X, model.predict_proba(X))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return mlflow.sklearn.log_model(
            model,
            name=MODEL_ARTIFACT_NAME,
            signature=signature,
            input_example=X.head(3),
            pyfunc_predict_fn="predict_proba",
            serialization_format="skops",
            skops_trusted_types=skops_trusted_types(model),
            # Explicit requirements: inferring them runs a subprocess that costs seconds per run.
            pip_requirements=model_requirements(),
        )


def model_requirements() -> list[str]:
    """What loading the model needs, pinned to the versions that trained it."""
    from importlib.metadata import version

    return [f"{dist}=={version(dist)}" for dist in ("mlflow", "scikit-learn", "skops", "numpy", "pandas")]


def log_latest_features(row: pd.DataFrame, as_of: date) -> dict[str, Any]:
    """Store the feature row for the next trading day with the model (serving falls back to it)."""
    payload = {
        "as_of": as_of.isoformat(),
        "features": {col: float(row[col].iloc[-1]) for col in FEATURE_COLUMNS},
    }
    mlflow.log_dict(payload, LATEST_FEATURES_ARTIFACT)
    return payload


def register(model_uri: str, tags: dict[str, str], name: str = MODEL_NAME) -> int:
    """Register ``model_uri`` as a new version with ``tags`` and move the ``challenger`` alias to it."""
    all_tags = {Tag.PROMOTION_STATUS.value: PromotionStatus.CANDIDATE.value, **tags}
    # The tags are created with the version (one request), so no version ever lacks them.
    mv = mlflow.register_model(model_uri, name, tags=all_tags)
    version = int(mv.version)
    MlflowClient().set_registered_model_alias(name, CHALLENGER_ALIAS, str(version))
    return version


def version_tags(version: int, name: str = MODEL_NAME) -> dict[str, str]:
    """The tags of ``<name>/<version>`` in the active registry."""
    return dict(MlflowClient().get_model_version(name, str(version)).tags)


def load_version(version: int, name: str = MODEL_NAME) -> Any:
    """The sklearn model of ``models:/<name>/<version>`` (as serving loads it)."""
    return mlflow.sklearn.load_model(f"models:/{name}/{version}")


def latest_features(run_id: str) -> dict[str, Any]:
    """Read ``serving/latest_features.json`` back from a run (no download left behind in /tmp)."""
    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{LATEST_FEATURES_ARTIFACT}")
