"""Links into the MLflow UI, always in its machine-learning view: the one place that builds them.

MLflow 3's UI opens an experiment in its GenAI mode (traces, an assistant) unless the URL
asks for the classic view with ``workflowType=machine_learning``; a learner following a
link must land on the runs, the run or the model versions it names. The experiment also
carries ``mlflow.experimentKind`` for tools that read it (the UI alone does not).
tests/test_ui_links.py keeps every link the project prints or writes on these helpers.
"""

from __future__ import annotations

from contract.registry import public_uri

ML_VIEW = "workflowType=machine_learning"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def ui_base(tracking_uri: str) -> str | None:
    """The UI's address for an HTTP tracking server (credentials dropped), None for file/sqlite stores."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return public_uri(tracking_uri).rstrip("/")


def experiment_url(ui: str, experiment_id: str) -> str:
    """The experiment's runs."""
    return f"{ui}/#/experiments/{experiment_id}?{ML_VIEW}"


def run_url(ui: str, experiment_id: str, run_id: str) -> str:
    """One run: its metrics, parameters, artifacts and plots."""
    return f"{ui}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW}"


def model_url(ui: str, model_name: str) -> str:
    """A registered model's versions, with their aliases (``champion``, ``challenger``)."""
    return f"{ui}/#/models/{model_name}?{ML_VIEW}"


def model_version_url(ui: str, model_name: str, version: int | str) -> str:
    return f"{ui}/#/models/{model_name}/versions/{version}?{ML_VIEW}"
