"""`primer registry prune`: a lab that trains every 5 minutes does not pile up model versions,
and nothing a rollback or an open pull request could need is ever deleted.

A real MLflow server of its own (pruning deletes versions: the shared promotion registry
must not see it), real tiny model versions, and the pin's history in a real bare git remote.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from contract.names import CHALLENGER_ALIAS, EXPERIMENT_NAME, MODEL_NAME, PIN_PATH, PromotionStatus, Tag
from contract.pin import render_pin
from primer.cli import PrimerGroup
from primer.promotion_commands import COMMANDS
from tests.promotion.conftest import Registry, Repos, git
from tests.support import register_tiny_version, running_mlflow, scrub_environ

CLI = PrimerGroup("primer", commands=list(COMMANDS))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_mlflow(tmp_path_factory.mktemp("prune-mlflow"), stop_timeout=3) as uri:
        yield Registry(uri, MlflowClient(uri).create_experiment(EXPERIMENT_NAME))


def _pin(repos: Repos, version: int) -> None:
    pin = repos.work / PIN_PATH
    pin.write_text(render_pin(pin.read_text(), version))
    git("commit", "-q", "-am", f"Promote {MODEL_NAME} to v{version}", cwd=repos.work)
    git("push", "-q", "origin", "main", cwd=repos.work)


def _versions(c: MlflowClient) -> list[int]:
    return sorted(int(mv.version) for mv in c.search_model_versions(f"name = '{MODEL_NAME}'"))


def test_prune_keeps_every_version_ever_pinned_proposed_aliased_or_recent(
        monkeypatch: pytest.MonkeyPatch, own_mlflow: Registry, repos: Repos, tmp_path: Path) -> None:
    c = MlflowClient(own_mlflow.uri)
    status = {2: PromotionStatus.PROPOSED}  # v2: an open pull request names it
    made = [register_tiny_version(own_mlflow.uri, own_mlflow.experiment_id, tags={
        Tag.PROMOTION_STATUS.value: status.get(n, PromotionStatus.CANDIDATE).value})[0] for n in range(1, 9)]
    assert made == list(range(1, 9))
    c.set_registered_model_alias(MODEL_NAME, CHALLENGER_ALIAS, "4")  # v4: an alias points at it
    _pin(repos, 1)  # v1 was pinned once (a rollback target), v3 is pinned now;
    _pin(repos, 3)  # neither carries a status tag here: git alone must keep them

    scrub_environ(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", own_mlflow.uri)
    monkeypatch.setenv("PRIMER_REPO_DIR", str(tmp_path / "no-repo"))  # the remote's history counts
    monkeypatch.setenv("PRIMER_GIT_REMOTE", str(repos.remote))
    monkeypatch.setenv("PRIMER_GIT_BRANCH", "main")
    runner = CliRunner()

    r = runner.invoke(CLI, ["registry", "prune", "--keep-recent", "2", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "would delete 2 version(s): v5, v6" in r.output and "ever pinned (kept): v1, v3" in r.output
    assert _versions(c) == list(range(1, 9))  # a dry run deletes nothing

    r = runner.invoke(CLI, ["registry", "prune", "--keep-recent", "2"])
    assert r.exit_code == 0, r.output
    assert _versions(c) == [1, 2, 3, 4, 7, 8]
    r = runner.invoke(CLI, ["registry", "prune", "--keep-recent", "2"])  # idempotent
    assert r.exit_code == 0 and "deleted 0 version(s): none" in r.output

    # Without the pin's history nothing is safe to delete: refuse, delete nothing.
    monkeypatch.setenv("PRIMER_GIT_REMOTE", str(tmp_path / "missing.git"))
    r = runner.invoke(CLI, ["registry", "prune", "--keep-recent", "0"])
    assert r.exit_code == 1 and "cannot read the pin's history, nothing deleted" in r.output
    assert _versions(c) == [1, 2, 3, 4, 7, 8]
