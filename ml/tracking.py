"""MLflow tracking and registration for the pipeline, through one explicit client.

Contract (see docs/pipeline.md): one parent run per ``primer train`` holding the data
window (dataset input + ``data/prices.csv``), the baselines, the champion's scores and
``evaluation.json``; one nested run per candidate. The selected candidate's run also
holds the model (``model``: sklearn flavour saved with cloudpickle, pyfunc returns
probabilities), ``plots/`` and ``serving/latest_features.json``; it is registered as a
new version of ``spy-direction`` with tags and the alias ``challenger``.

Everything goes through :class:`Tracker`'s ``MlflowClient`` except logging a model and a
dataset input, which MLflow offers only in its fluent form (a process-global URI and an
active run): those run inside :meth:`Tracker._fluent`, which puts the global back.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import psutil
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import Metric, Param, RunTag
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from mlflow.tracking.context.registry import resolve_tags

from contract.errors import PrimerError
from contract.names import (
    CHALLENGER_ALIAS,
    EXPERIMENT_NAME,
    LATEST_FEATURES_ARTIFACT,
    MLFLOW_PORT,
    MODEL_NAME,
    PARENT_RUN_TAG,
    PromotionStatus,
    Tag,
)
from contract.registry import RegistryUnreachable, probe, public_uri
from contract.settings import TRACKING_URI_VAR, env_restored
from contract.ui import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from ml.features import FEATURE_COLUMNS

DATA_ARTIFACT_DIR = "data"
DATA_ARTIFACT_FILE = "prices.csv"
MODEL_ARTIFACT_NAME = "model"
# Who started a run: a later run marks it FAILED once that process is gone (fail_abandoned).
OWNER_HOST_TAG = "primer.host"
OWNER_PID_TAG = "primer.pid"
ABANDONED_AFTER_SECONDS = 3600.0  # a RUNNING run from another host (a CronJob pod) counts as abandoned after this


@contextmanager
def _scoped_uri(uri: str) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` for the duration, then put back as it was
    (MLflow's own scope also unsets MLFLOW_TRACKING_URI on the way out: restored too)."""
    with env_restored(TRACKING_URI_VAR), _use_tracking_uri(uri):
        yield


class RegistryError(PrimerError):
    """MLflow is unreachable or refused an operation; the message names the server."""


class Tracker:
    """One MLflow server: runs, metrics, artifacts and the registry, through an explicit client."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.open_runs: list[str] = []  # started here and not ended yet
        self.runs_started = 0

    @classmethod
    def connect(cls, uri: str, timeout: float = 10.0) -> Tracker:
        """A tracker for ``uri`` once an HTTP server there answers its health check."""
        try:
            probe(uri, timeout)  # file: and sqlite: stores pass: nothing to reach
        except RegistryUnreachable as exc:
            raise RegistryError(
                f"MLflow tracking server {public_uri(uri)} is not reachable ({exc.reason}); "
                f"start one (e.g. `mlflow server --port {MLFLOW_PORT}`) or set MLFLOW_TRACKING_URI"
            ) from exc
        return cls(uri)

    def experiment_id(self, name: str = EXPERIMENT_NAME) -> str:
        """The experiment's id, created if needed and marked as model training (contract.ui)."""
        found = self.client.get_experiment_by_name(name)
        if found is None:
            return str(self.client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}))
        if found.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            self.client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return str(found.experiment_id)

    # -- runs ------------------------------------------------------------------------
    def start_run(self, experiment_id: str, name: str, tags: Mapping[str, str], parent: str | None = None) -> str:
        owner = {OWNER_HOST_TAG: socket.gethostname(), OWNER_PID_TAG: str(os.getpid())}
        # The context tags the fluent API adds (user, source): the UI's "User" and "Source" columns.
        all_tags = resolve_tags({**tags, **owner, **({PARENT_RUN_TAG: parent} if parent else {})})
        run_id = str(self.client.create_run(experiment_id, run_name=name, tags=all_tags).info.run_id)
        self.open_runs.append(run_id)
        self.runs_started += 1
        return run_id

    def end_run(self, run_id: str, ok: bool = True) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")
        if run_id in self.open_runs:
            self.open_runs.remove(run_id)

    def fail_open_runs(self) -> bool:
        """Mark every run this tracker left open FAILED (best effort: MLflow may be what failed)."""
        for run_id in list(self.open_runs):
            try:
                self.end_run(run_id, ok=False)
            except Exception:  # noqa: BLE001 - the next run marks it (fail_abandoned)
                return False
        return True

    def fail_abandoned(self, experiment_id: str) -> list[str]:
        """Mark FAILED the runs a crashed or cut-off `primer train` left RUNNING: on this host, those
        whose process is gone; from another host (an earlier CronJob pod), those older than
        ABANDONED_AFTER_SECONDS. Runs that `primer train` did not start are never touched."""
        found = self.client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=500)
        now_ms, failed = time.time() * 1000, []
        for run in found:
            host, pid = run.data.tags.get(OWNER_HOST_TAG), run.data.tags.get(OWNER_PID_TAG, "")
            if host is None:
                continue
            if host == socket.gethostname():
                abandoned = pid.isdigit() and not psutil.pid_exists(int(pid))
            else:
                abandoned = now_ms - run.info.start_time > ABANDONED_AFTER_SECONDS * 1000
            if abandoned:
                self.client.set_tag(run.info.run_id, "primer.abandoned", "true")
                self.client.set_terminated(run.info.run_id, "FAILED")
                failed.append(run.info.run_id)
        return failed

    def log(self, run_id: str, *, params: Mapping[str, Any] | None = None,
            metrics: Mapping[str, float] | None = None, tags: Mapping[str, str] | None = None) -> None:
        """Params, metrics and tags in one request."""
        now = int(time.time() * 1000)
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def log_dict(self, run_id: str, payload: dict[str, Any], artifact_file: str) -> None:
        self.client.log_dict(run_id, payload, artifact_file)

    def log_files(self, run_id: str, paths: list[Path], artifact_dir: str) -> None:
        for path in paths:
            self.client.log_artifact(run_id, str(path), artifact_path=artifact_dir)

    @contextmanager
    def _fluent(self, run_id: str) -> Iterator[None]:
        """MLflow's fluent API, pointed at this server and run for the duration only.

        Leaving ``mlflow.start_run`` ends the run (FINISHED); the run is still ours to finish,
        so it is put back to RUNNING: a run cut off later must not look complete.
        """
        run = self.client.get_run(run_id)  # its experiment, not whatever set_experiment left
        with _scoped_uri(self.uri), mlflow.start_run(run_id=run_id, experiment_id=run.info.experiment_id):
            yield
        if run.info.status == "RUNNING":
            self.client.update_run(run_id, status="RUNNING")

    # -- what a run holds ----------------------------------------------------------------
    def log_data_window(self, run_id: str, prices: pd.DataFrame, source: str, anchor: date) -> None:
        """The raw window as a CSV artifact and as a dataset input (reproducible from MLflow alone)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / DATA_ARTIFACT_FILE
            out = prices.copy()
            out["date"] = out["date"].dt.strftime("%Y-%m-%d")
            out.to_csv(path, index=False)
            self.client.log_artifact(run_id, str(path), artifact_path=DATA_ARTIFACT_DIR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "source can be interpreted in multiple ways"
            dataset = from_pandas(prices, source=self._dataset_source(run_id, source), name=f"spy-daily-{anchor}")
        with self._fluent(run_id):
            mlflow.log_input(dataset, context="training", tags={"data_source": source, "anchor": anchor.isoformat()})

    def _dataset_source(self, run_id: str, source: str) -> Any:
        """Where the dataset can be fetched again: the CSV artifact, served by the tracking server."""
        from urllib.parse import urlencode

        from mlflow.data.http_dataset_source import HTTPDatasetSource

        if not self.uri.startswith(("http://", "https://")):  # a database URI: the artifact store's own URI
            # (not the source spec: MLflow resolves a string source by its scheme, and `synthetic:7:1.0` has none)
            artifacts = self.client.get_run(run_id).info.artifact_uri.rstrip("/")
            return f"{artifacts}/{DATA_ARTIFACT_DIR}/{DATA_ARTIFACT_FILE}"
        query = urlencode({"path": f"{DATA_ARTIFACT_DIR}/{DATA_ARTIFACT_FILE}", "run_uuid": run_id})
        return HTTPDatasetSource(url=f"{self.uri.rstrip('/')}/get-artifact?{query}")

    def log_model(self, run_id: str, model: Any, example: pd.DataFrame) -> str:
        """Log ``model`` in run ``run_id``; returns its model URI."""
        with self._fluent(run_id):
            return str(log_model(model, example).model_uri)

    def log_latest_features(self, run_id: str, row: pd.DataFrame, as_of: date) -> dict[str, Any]:
        """Store the feature row for the next trading day with the model (serving falls back to it)."""
        payload = {"as_of": as_of.isoformat(), "features": {c: float(row[c].iloc[-1]) for c in FEATURE_COLUMNS}}
        self.client.log_dict(run_id, payload, LATEST_FEATURES_ARTIFACT)
        return payload

    def latest_features(self, run_id: str) -> dict[str, Any]:
        """``serving/latest_features.json`` of a run (no download left behind in /tmp)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = self.client.download_artifacts(run_id, LATEST_FEATURES_ARTIFACT, tmp)
            import json

            return dict(json.loads(Path(path).read_text()))

    # -- the registry --------------------------------------------------------------------
    def register(self, model_uri: str, run_id: str, tags: Mapping[str, str], name: str = MODEL_NAME) -> int:
        """A new version of ``name`` with ``tags`` (created with it), and the ``challenger`` alias on it."""
        all_tags = {Tag.PROMOTION_STATUS.value: PromotionStatus.CANDIDATE.value, **tags}
        with _scoped_uri(self.uri), warnings.catch_warnings():  # registering needs no active run
            warnings.simplefilter("ignore", FutureWarning)
            mv = mlflow.register_model(model_uri, name, tags=all_tags)
        version = int(mv.version)
        self.client.set_registered_model_alias(name, CHALLENGER_ALIAS, str(version))
        return version

    def version_tags(self, version: int, name: str = MODEL_NAME) -> dict[str, str]:
        return dict(self.client.get_model_version(name, str(version)).tags)

    def load_version(self, version: int, name: str = MODEL_NAME) -> Any:
        """The sklearn model of ``models:/<name>/<version>`` (as serving loads it)."""
        return self.load_model(f"models:/{name}/{version}")

    def load_model(self, model_uri: str) -> Any:
        """The sklearn model at ``model_uri``. Scoped like :meth:`_fluent`: MLflow resolves
        ``models:/`` URIs through its global tracking URI, whatever URI is passed in."""
        import mlflow.sklearn

        with _scoped_uri(self.uri):
            return mlflow.sklearn.load_model(model_uri)


def git_sha(repo: Path) -> str:
    """The commit of the code that trains (``unknown`` outside a git checkout, e.g. in an image)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def _not_the_pickle_caution(record: logging.LogRecord) -> bool:
    # The format is chosen on purpose (see log_model); the caution would print on every run.
    return "pickle or cloudpickle format" not in record.getMessage()


def log_model(model: Any, example: pd.DataFrame) -> Any:
    """Log ``model`` as ``model`` in the active fluent run; returns MLflow's ModelInfo."""
    import mlflow.sklearn

    sklearn_log = logging.getLogger("mlflow.sklearn")
    if _not_the_pickle_caution not in sklearn_log.filters:
        sklearn_log.addFilter(_not_the_pickle_caution)

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
            # MLflow's default format. Loading any format MLflow offers runs code from the
            # artifact (skops too: its trusted types are read from the model's own MLmodel),
            # so the registry must be trusted either way; this one loads in a tenth of the
            # time and memory skops takes to import (serving's cold start).
            serialization_format="cloudpickle",
            # Explicit requirements: inferring them runs a subprocess that costs seconds per run.
            pip_requirements=model_requirements(),
        )


def model_requirements() -> list[str]:
    """What loading the model needs, pinned to the versions that trained it."""
    from importlib.metadata import version

    return [f"{dist}=={version(dist)}" for dist in ("mlflow", "scikit-learn", "cloudpickle", "numpy", "pandas")]
