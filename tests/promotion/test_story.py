"""The whole promotion story on real git (a bare remote + a human's clone) and a real MLflow:
bootstrap -> propose -> supersede -> merge -> registry sync -> rollback -> status."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from contract.names import (
    CHALLENGER_ALIAS,
    CHAMPION_ALIAS,
    MODEL_NAME,
    PIN_PATH,
    PromotionStatus,
    Tag,
    promotion_branch,
    promotion_title,
)
from contract.pin import parse_pin
from primer.cli import PrimerGroup
from primer.promotion_commands import COMMANDS
from tests.promotion.conftest import Registry, Repos, git, make_evaluation, propose, use_forge
from tests.promotion.fakeforge import FakeForge

CLI = PrimerGroup("primer", commands=list(COMMANDS))


def run(*args: str, code: int = 0) -> str:
    r = CliRunner().invoke(CLI, list(args))
    assert r.exit_code == code, r.output
    return r.output


def tags(c: MlflowClient, v: int) -> dict[str, str]:
    return c.get_model_version(MODEL_NAME, str(v)).tags


def alias(c: MlflowClient, name: str) -> int | None:
    rm = c.get_registered_model(MODEL_NAME)
    return int(rm.aliases[name]) if name in rm.aliases else None


def test_propose_merge_sync_rollback(promo_env: Repos, promo_mlflow: Registry, gitea: FakeForge,
                                     new_version: Callable[[], tuple[int, str]],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    repos, reg = promo_env, promo_mlflow
    use_forge(monkeypatch, gitea)
    c = MlflowClient(reg.uri)

    # 1. Bootstrap: nothing pinned -> policy.bootstrap=commit pins the first winner on main directly.
    a, run_a = new_version()
    out = propose(make_evaluation(reg, a, run_a, 0.55))
    assert out.status == "committed", out.message
    assert parse_pin(repos.remote_pin()).version == a
    assert git("log", "-1", "--format=%s", "main", cwd=repos.remote) == promotion_title(a)
    assert gitea.prs == []
    repos.pull()
    assert "already in sync" not in run("registry", "sync")
    assert alias(c, CHAMPION_ALIAS) == a and tags(c, a)[Tag.PROMOTION_STATUS] == PromotionStatus.PROMOTED
    assert "already in sync" in run("registry", "sync")  # idempotent

    # 2. A better challenger: branch + one commit changing only the pin + PR with the evidence.
    b, run_b = new_version()
    eval_b = make_evaluation(reg, b, run_b, 0.57, champion=(a, 0.55))
    out = propose(eval_b)
    assert out.status == "proposed" and out.branch == promotion_branch(b)
    branch = promotion_branch(b)
    assert parse_pin(repos.remote_pin(branch)).version == b
    assert parse_pin(repos.remote_pin("main")).version == a  # main untouched until a human merges
    assert git("diff", "--name-only", f"main...{branch}", cwd=repos.remote).split() == [PIN_PATH]
    assert git("rev-list", "--count", f"main..{branch}", cwd=repos.remote) == "1"
    msg = git("log", "-1", "--format=%B", branch, cwd=repos.remote)
    assert msg.startswith(promotion_title(b))
    assert f"balanced_accuracy (decides): 0.5700 vs champion v{a} 0.5500, delta +0.0200" in msg
    assert f"run id: {run_b}" in msg and "eval window: 2024-01-02..2024-03-27 (60 days" in msg
    [pr] = gitea.open_prs()
    assert pr["title"] == promotion_title(b) and pr["head"]["ref"] == branch and pr["base"]["ref"] == "main"
    body = pr["body"]
    assert "| **balanced_accuracy** (decides) | 0.5700 | 0.5500 | +0.0200 |" in body
    assert "| always_up |" in body and "verdict: **PASS**" in body and "min_improvement: 0.01" in body
    assert f"{reg.uri}/#/models/{MODEL_NAME}/versions/{b}" in body
    assert f"{reg.uri}/#/experiments/{reg.experiment_id}/runs/{run_b}" in body
    assert tags(c, b)[Tag.PROMOTION_STATUS] == PromotionStatus.PROPOSED
    assert tags(c, b)[Tag.PROMOTION_PR] == pr["html_url"]
    assert alias(c, CHALLENGER_ALIAS) == b

    # Re-running the same step is a no-op: same branch, same PR.
    again = propose(eval_b)
    assert again.status == "reused" and again.pr_url == pr["html_url"] and len(gitea.prs) == 1

    # 3. A newer winner supersedes the open PR for b.
    d, run_d = new_version()
    out = propose(make_evaluation(reg, d, run_d, 0.60, champion=(a, 0.55)))
    assert out.status == "proposed" and out.superseded == [b]
    assert [p["head"]["ref"] for p in gitea.open_prs()] == [promotion_branch(d)]
    assert gitea.comments and gitea.comments[0]["number"] == pr["number"]
    assert f"Superseded by v{d}" in gitea.comments[0]["body"]
    assert tags(c, b)[Tag.PROMOTION_STATUS] == PromotionStatus.SUPERSEDED
    assert alias(c, CHALLENGER_ALIAS) == d

    # `primer status` shows the open PR, and no drift yet.
    out_status = run("status")
    assert f"pin (git):            v{a}" in out_status and f"challenger (MLflow):  v{d} (proposed)" in out_status
    assert promotion_title(d) in out_status and "in sync" in out_status

    # 4. A human merges the PR in their clone and pushes; Argo CD's hook runs registry sync.
    git("fetch", "-q", "origin", promotion_branch(d), cwd=repos.work)
    git("merge", "-q", "--no-ff", "-m", f"Merge {promotion_branch(d)}", "FETCH_HEAD", cwd=repos.work)
    git("push", "-q", "origin", "main", cwd=repos.work)
    status = run("status", code=0)
    assert f"DRIFT: MLflow alias champion is v{a} but git pins v{d}" in status
    run("status", "--strict", code=1)
    assert f"v{a} -> v{d}" in run("registry", "sync")
    assert alias(c, CHAMPION_ALIAS) == d and tags(c, d)[Tag.PROMOTION_STATUS] == PromotionStatus.PROMOTED
    assert alias(c, CHALLENGER_ALIAS) is None  # promoted: no longer a challenger
    assert tags(c, a)[Tag.PROMOTION_STATUS] == PromotionStatus.PROMOTED  # history kept

    # 5. Roll back: the previously pinned version comes from the git history of the pin.
    out_rb = run("rollback", "--reason", "latency regression", "--push")
    assert f"Roll back {MODEL_NAME} from v{d} to v{a}" in out_rb
    assert parse_pin(repos.remote_pin()).version == a
    msg = git("log", "-1", "--format=%B", "main", cwd=repos.remote)
    assert msg.startswith(f"Roll back {MODEL_NAME} from v{d} to v{a}") and "Reason: latency regression" in msg
    assert git("show", "--name-only", "--format=", "main", cwd=repos.remote).split() == [PIN_PATH]
    assert tags(c, d)[Tag.PROMOTION_STATUS] == PromotionStatus.ROLLED_BACK
    run("registry", "sync")
    assert alias(c, CHAMPION_ALIAS) == a
    # A second rollback does not bounce back to the version just rolled back from.
    run("rollback", code=1)
    assert "in sync" in run("status", "--strict")

    # 6. Promote by hand with a reason; the pin file comment survives every rewrite.
    run("promote", str(b), "--reason", "reviewed offline", "--push")
    text = repos.remote_pin()
    assert text.startswith("# Which registered MLflow model version serves.") and parse_pin(text).version == b
    assert git("log", "-1", "--format=%B", "main", cwd=repos.remote).startswith(promotion_title(b))
