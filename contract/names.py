"""Names every layer shares: MLflow names, tags, files, ports, env vars.

They live in ``contract``, the bottom of the dependency graph, so every layer can
import them.
Tests check that manifests, scripts and docs agree with these values.
"""

from __future__ import annotations

from enum import StrEnum

# The recipe family of the no-skill forecaster (the training window's up-rate): ml/candidates.yaml
CLIMATOLOGY_FAMILY = "climatology"

# MLflow
MODEL_NAME = "spy-direction"
EXPERIMENT_NAME = "spy-direction"
# `primer monitor`: one run per served version, its live metrics stepped by scored trading day.
MONITORING_EXPERIMENT_NAME = "spy-direction-live"
CHAMPION_ALIAS = "champion"
CHALLENGER_ALIAS = "challenger"

# MLflow run artifacts and tags the pipeline writes and the promotion step reads back
EVALUATION_ARTIFACT = "evaluation.json"  # on the training's parent run: the evidence, logged once
LATEST_FEATURES_ARTIFACT = "serving/latest_features.json"  # on the registered run: serving's stale fallback row
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own tag for nested runs

# Files, relative to the repository root
PIN_PATH = "promotion/model-version.yaml"
POLICY_PATH = "promotion/policy.yaml"
MONITORING_PATH = "promotion/monitoring.yaml"  # the monitor's thresholds, beside the gate policy

# Ports
SERVING_PORT = 3000
MLFLOW_PORT = 5000
SERVING_NODE_PORT = 30951
WORKER_IP = "192.168.56.21"
# The lab's monitoring (apps/monitoring): Grafana's dashboard and Prometheus, on the worker's IP.
GRAFANA_NODE_PORT = 30030
PROMETHEUS_NODE_PORT = 30090
GRAFANA_DASHBOARD_UID = "primer"  # apps/monitoring/grafana/dashboards/primer.json

# Where the CLI, the pipeline and the service look for MLflow when
# MLFLOW_TRACKING_URI is unset: the server `primer up` starts.
DEFAULT_TRACKING_URI = f"http://127.0.0.1:{MLFLOW_PORT}"


class Tag(StrEnum):
    """Tags on registered model versions (the promotion story)."""

    PROMOTION_STATUS = "promotion_status"
    PROMOTION_PR = "promotion_pr"
    EVAL_START = "eval_start"
    EVAL_END = "eval_end"
    DATA_SOURCE = "data_source"
    GIT_SHA = "git_sha"
    # The recipe (family + params, JSON) the version was fitted with, so the gate can refit it per fold.
    RECIPE = "recipe"
    # On a pinned version the monitor proposes to roll back: the open demotion PR (URL, or the
    # branch when no forge is configured) and the version it rolls back to.
    DEMOTION_PR = "demotion_pr"
    DEMOTION_TARGET = "demotion_target"
    # The run of `primer monitor` that records the version's live metrics (MLflow run id).
    LIVE_RUN = "live_run"


class PromotionStatus(StrEnum):
    CANDIDATE = "candidate"
    PROPOSED = "proposed"
    PROMOTED = "promoted"
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled_back"
    # A proposal whose push or PR failed: the next run retries it.
    PROPOSAL_FAILED = "proposal_failed"


def promotion_branch(version: int, model: str = MODEL_NAME) -> str:
    return f"promote/{model}-v{version}"


def promotion_title(version: int, model: str = MODEL_NAME) -> str:
    return f"Promote {model} to v{version}"


def demotion_branch(version: int, target: int, model: str = MODEL_NAME) -> str:
    """The branch of the pull request that rolls the pinned ``version`` back to ``target``.

    One branch per (pinned, target): when the evidence names another target the old PR is
    closed and a new branch opened, so a branch never has to be rewritten (no force-push).
    """
    return f"demote/{model}-v{version}-to-v{target}"


def demotion_title(version: int, target: int, model: str = MODEL_NAME) -> str:
    return f"Demote {model} v{version}: roll back to v{target}"
