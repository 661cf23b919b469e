"""Fixtures for the promotion tests: a real MLflow server of their own, real
(tiny) sklearn model versions, a bare git remote with working clones, and
the local stand-in for the forge API.

Why a dedicated MLflow server and not the shared ``mlflow_server``: these tests
move the ``champion``/``challenger`` aliases and promotion tags of the one
model name (spy-direction) the pipeline tests also register; separate servers
keep the two suites from seeing each other's registry state.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from contract.evidence import Evaluation, Scores
from contract.names import EXPERIMENT_NAME, MODEL_NAME, PIN_PATH, POLICY_PATH, PromotionStatus, Tag
from contract.pin import PIN_TEMPLATE
from tests.promotion.fakeforge import FakeForge
from tests.support import register_tiny_version, running_mlflow, scrub_environ

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Registry:
    uri: str
    experiment_id: str


@pytest.fixture(scope="session")
def promo_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    # Short grace on stop: uvicorn waits for idle keep-alive connections of MlflowClient before exiting.
    with running_mlflow(tmp_path_factory.mktemp("promo-mlflow"), stop_timeout=3) as uri:
        from mlflow.tracking import MlflowClient

        yield Registry(uri, MlflowClient(uri).create_experiment(EXPERIMENT_NAME))


@pytest.fixture
def new_version(promo_mlflow: Registry) -> Callable[[], tuple[int, str]]:
    """Log a tiny real sklearn model in its own candidate run and register it as a new
    version of spy-direction; returns (version, run_id)."""
    return lambda: register_tiny_version(promo_mlflow.uri, promo_mlflow.experiment_id,
                                         tags={Tag.PROMOTION_STATUS.value: PromotionStatus.CANDIDATE.value})


def scores(x: float) -> Scores:
    return Scores(accuracy=x, balanced_accuracy=x, roc_auc=x, log_loss=0.69, brier=0.25)


def make_evaluation(reg: Registry, version: int, run_id: str, score: float, *,
                    champion: tuple[int, float] | None = None, days: int = 60, baseline: float = 0.5) -> Evaluation:
    return Evaluation(
        model_name=MODEL_NAME, challenger_version=version, challenger_run_id=run_id,
        challenger_candidate="logreg", parent_run_id=run_id, experiment_id=reg.experiment_id,
        tracking_uri=reg.uri, eval_start=date(2024, 1, 2), eval_end=date(2024, 3, 27), eval_days=days,
        challenger=scores(score), data_source="synthetic",
        baselines={"always_up": scores(baseline), "persistence": scores(baseline - 0.02)},
        champion_version=champion[0] if champion else None,
        champion=scores(champion[1]) if champion else None,
    )


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@dataclass
class Repos:
    remote: Path  # bare
    work: Path  # a human's clone

    def remote_pin(self, ref: str = "main") -> str:
        return git("show", f"{ref}:{PIN_PATH}", cwd=self.remote)

    def pull(self) -> None:
        git("pull", "-q", "--ff-only", "origin", "main", cwd=self.work)


@pytest.fixture
def repos(tmp_path: Path) -> Repos:
    remote = tmp_path / "remote.git"
    git("init", "-q", "--bare", "-b", "main", str(remote), cwd=tmp_path)
    seed = tmp_path / "seed"
    (seed / "promotion").mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=seed)
    (seed / PIN_PATH).write_text(PIN_TEMPLATE)
    shutil.copy(REPO_ROOT / POLICY_PATH, seed / POLICY_PATH)
    (seed / "README.md").write_text("seed\n")
    git("add", ".", cwd=seed)
    git("commit", "-q", "-m", "Seed", cwd=seed)
    git("push", "-q", str(remote), "main", cwd=seed)
    work = tmp_path / "work"
    git("clone", "-q", str(remote), str(work), cwd=tmp_path)
    return Repos(remote, work)


@pytest.fixture
def promo_env(monkeypatch: pytest.MonkeyPatch, promo_mlflow: Registry, repos: Repos) -> Repos:
    """Environment for CLI + propose: the clone is the repo, the bare repo the remote, no forge."""
    scrub_environ(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", promo_mlflow.uri)
    monkeypatch.setenv("PRIMER_REPO_DIR", str(repos.work))
    monkeypatch.setenv("PRIMER_GIT_REMOTE", str(repos.remote))
    monkeypatch.setenv("PRIMER_GIT_BRANCH", "main")
    monkeypatch.setenv("PRIMER_FORGE", "none")
    return repos


@pytest.fixture(params=["gitea", "github"])
def fake_forge(request: pytest.FixtureRequest) -> Iterator[FakeForge]:
    forge = FakeForge(request.param)
    try:
        yield forge
    finally:
        forge.stop()


@pytest.fixture
def gitea() -> Iterator[FakeForge]:
    forge = FakeForge("gitea")
    try:
        yield forge
    finally:
        forge.stop()


def use_forge(monkeypatch: pytest.MonkeyPatch, forge: FakeForge, token: str | None = None) -> None:
    monkeypatch.setenv("PRIMER_FORGE", forge.kind)
    monkeypatch.setenv("PRIMER_FORGE_URL", forge.url)
    monkeypatch.setenv("PRIMER_FORGE_REPO", forge.repo)
    monkeypatch.setenv("PRIMER_FORGE_TOKEN", token or forge.token)



def propose(evaluation: Evaluation) -> Any:
    """The promotion step as the pipeline runs it: settings read from the environment once, then passed."""
    from contract.settings import PromotionSettings
    from promotion.propose import propose_from_evaluation

    return propose_from_evaluation(evaluation, PromotionSettings.load())


def record_evaluation(reg: Registry, evaluation: Evaluation) -> None:
    """Log ``evaluation.json`` on the evaluation's parent run, as the pipeline does (its one copy)."""
    from mlflow.tracking import MlflowClient

    from contract.evidence import evaluation_to_dict

    MlflowClient(reg.uri).log_dict(evaluation.parent_run_id, evaluation_to_dict(evaluation), "evaluation.json")
