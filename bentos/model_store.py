"""Read one registered version from MLflow over its REST API, without importing MLflow.

The service needs four GETs and one deserialisation from MLflow: the version's run,
its metrics, the model's files and the feature row stored at training time. MLflow's
client costs the serving process ~50 MB and ~1 s of imports for that (a quarter of
the cold-start budget). These are MLflow's documented REST routes, for the
artifact store this project's servers use: artifacts proxied by the tracking server
(``mlflow-artifacts:`` URIs, ``mlflow server --serve-artifacts``, the default).
Any other store raises :class:`NotProxied`, and the caller falls back to MLflow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import yaml

from contract.errors import PrimerError
from contract.names import MODEL_NAME

API = "/api/2.0/mlflow"
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
PROXIED_SCHEME = "mlflow-artifacts"
SKLEARN_FLAVOR = "sklearn"


class NotProxied(PrimerError):
    """The version's artifacts are not served by the tracking server; use MLflow's client."""


class StoreError(PrimerError, RuntimeError):
    """MLflow answered with an error (its error code and message) or unreadable content."""


@dataclass(frozen=True)
class StoredVersion:
    run_id: str
    metrics: dict[str, float]
    estimator: Any
    latest_features: dict[str, Any] | None  # the run's stored feature row, None when absent
    features_problem: str | None  # why latest_features is None


def _get(http: httpx.Client, path: str, **params: str) -> dict[str, Any]:
    response = http.get(path, params=params)
    if response.status_code != 200:
        try:
            body = response.json()
            reason = f"{body.get('error_code', response.status_code)}: {body.get('message', '')}"
        except ValueError:
            reason = f"HTTP {response.status_code}"
        raise StoreError(f"{path}: {reason}")
    return dict(response.json())


def artifact_path(uri: str) -> str:
    """The path the tracking server serves ``uri`` under; NotProxied for other stores."""
    parts = urlsplit(uri)
    if parts.scheme != PROXIED_SCHEME or parts.netloc:  # a host in the URI means another server
        raise NotProxied(uri)
    return parts.path.strip("/")


def _download(http: httpx.Client, path: str) -> bytes:
    response = http.get(f"{ARTIFACTS_API}/{quote(path)}")
    if response.status_code != 200:
        raise StoreError(f"artifact {path}: HTTP {response.status_code}")
    return response.content


def _load_sklearn(http: httpx.Client, model_dir: str) -> Any:
    """The estimator in an MLflow sklearn-flavour model, deserialised as MLflow's loader does.

    The registry is trusted, as by MLflow's loader: every format runs code from the artifact
    (skops included, whose trusted types come from the model's own MLmodel file).
    """
    mlmodel = yaml.safe_load(_download(http, f"{model_dir}/MLmodel"))
    flavor = (mlmodel or {}).get("flavors", {}).get(SKLEARN_FLAVOR)
    fmt = (flavor or {}).get("serialization_format", "pickle")
    if not flavor or fmt not in ("cloudpickle", "pickle"):  # e.g. skops, used before: MLflow's client loads it
        raise NotProxied(f"{model_dir}: not a sklearn model in a format this reader knows ({fmt})")
    data = _download(http, f"{model_dir}/{flavor['pickled_model']}")
    if fmt == "cloudpickle":
        import cloudpickle

        return cloudpickle.loads(data)
    import pickle

    return pickle.loads(data)  # noqa: S301 - a trusted registry, as above


def read_version(tracking_uri: str, version: int, features_artifact: str, timeout: float = 20) -> StoredVersion:
    with httpx.Client(base_url=tracking_uri.rstrip("/"), timeout=timeout) as http:
        ids = {"name": MODEL_NAME, "version": str(version)}
        model_version = _get(http, f"{API}/model-versions/get", **ids)["model_version"]
        run_id = model_version.get("run_id") or ""
        if not run_id:
            raise StoreError(f"models:/{MODEL_NAME}/{version} has no run id; cannot find its metrics and features")
        model_dir = artifact_path(_get(http, f"{API}/model-versions/get-download-uri", **ids)["artifact_uri"])
        run = _get(http, f"{API}/runs/get", run_id=run_id)["run"]
        metrics = {m["key"]: float(m["value"]) for m in run.get("data", {}).get("metrics", [])}
        estimator = _load_sklearn(http, model_dir)
        features: dict[str, Any] | None = None
        problem = None
        try:
            run_dir = artifact_path(run["info"]["artifact_uri"])
            features = dict(json.loads(_download(http, f"{run_dir}/{features_artifact}")))
        except (NotProxied, StoreError, ValueError, KeyError) as exc:
            problem = str(exc)
    return StoredVersion(run_id, metrics, estimator, features, problem)
