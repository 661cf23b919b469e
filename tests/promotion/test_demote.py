"""The demotion pull request (issue 13): real git (bare remote + clones), the real MLflow server
of the promotion tests, the forge stand-in. LiveReports and targets are built here directly
(the monitor that writes them is tested with it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from contract import registry
from contract.demotion import DemotionTarget
from contract.live_report import DriftStatus, LiveReport
from contract.names import MODEL_NAME, PromotionStatus, Tag, demotion_branch, demotion_title
from contract.settings import PromotionSettings
from promotion.demote import DemotionProposalError, evidence_digest, propose_demotion, withdraw_demotions
from promotion.propose import Promotion, load_promotion
from tests.promotion.conftest import Registry, Repos, git, use_forge
from tests.promotion.fakeforge import FakeForge
from tests.promotion.test_propose import pin_main, remote_branches
from tests.support import free_port

Versions = Callable[[], tuple[int, str]]


def report(version: int, *, days: int = 40, as_of: str = "2026-03-02", warranted: bool = True) -> LiveReport:
    model = {"log_loss": 0.7412, "brier": 0.2711, "accuracy": 0.45, "balanced_accuracy": 0.46}
    clim = {"log_loss": 0.6902, "brier": 0.2486, "accuracy": 0.55, "balanced_accuracy": 0.5}
    up = {"log_loss": 34.5, "brier": 0.45, "accuracy": 0.55, "balanced_accuracy": 0.5}
    window = {"model": model, "climatology": clim, "always_up": up}
    test = {"test": "diebold_mariano", "rows": days, "improvement": 0.0510, "std_error": 0.012, "lags": 3,
            "p_value": 0.0004, "level": 0.05, "bound": 0.0308, "ci_low": 0.0267, "ci_high": 0.0753, "mde": 0.03}
    drift = DriftStatus(window_days=60, psi={"ret_1": 0.31, "vol_10": 0.05}, up_rate_training=0.54,
                        up_rate_recent=0.47, up_rate_p_value=0.2, skew=0.0, skew_rows=12,
                        alerts={"features": True, "up_rate": False, "skew": False})
    return LiveReport(model_version=version, as_of=as_of, scored_days=days, rolling_days=20,
                      scores={"all": window, "rolling": window}, versus_climatology=test, demotion_warranted=warranted,
                      drift=drift, updated_at="2026-03-03T06:00:00+00:00", notes=["replay mode"])


def target(pinned: int, version: int, kind: str = "previous", days: int = 40) -> DemotionTarget:
    return DemotionTarget(pinned=pinned, version=version, kind=kind,  # type: ignore[arg-type]
                          reason=f"previously pinned v{version} lost less on the same {days} days",
                          days=days, first_day="2026-01-05", last_day="2026-03-02", pinned_log_loss=0.7412,
                          target_log_loss=0.6899, previous=version, previous_log_loss=0.6899,
                          previous_vs_climatology={"improvement": -0.0003, "p_value": 0.61})  # as PairedTest.to_dict


def promotion(monkeypatch: pytest.MonkeyPatch, forge: FakeForge | None) -> Promotion:
    if forge is not None:
        use_forge(monkeypatch, forge)
    return load_promotion(PromotionSettings.load())


def pinned_after_previous(repos: Repos, reg: Registry, new_version: Versions, monkeypatch: pytest.MonkeyPatch,
                          forge: FakeForge | None) -> tuple[int, int, Promotion, Any]:
    """Two new versions, the second pinned on main: (previous, pinned, the promotion target, an MLflow client)."""
    previous, _ = new_version()
    pinned, _ = new_version()
    pin_main(repos, pinned)
    return previous, pinned, promotion(monkeypatch, forge), registry.client(reg.uri)


def tags(reg: Registry, v: int) -> dict[str, str]:
    return dict(MlflowClient(reg.uri).get_model_version(MODEL_NAME, str(v)).tags)


def writes(forge: FakeForge) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in forge.requests if r.method != "GET"]


def test_one_pr_reused_refreshed_then_superseded(promo_env: Repos, promo_mlflow: Registry, new_version: Versions,
                                                 fake_forge: FakeForge, monkeypatch: pytest.MonkeyPatch) -> None:
    previous, _ = new_version()
    pinned, _ = new_version()
    climatology, _ = new_version()
    pin_main(promo_env, pinned)
    p, c = promotion(monkeypatch, fake_forge), registry.client(promo_mlflow.uri)

    first = propose_demotion(report(pinned), target(pinned, previous), p, c)
    assert first.status == "proposed", first.message
    branch = demotion_branch(pinned, previous)
    [pr] = fake_forge.open_prs()
    assert pr["head"]["ref"] == branch and pr["base"]["ref"] == "main"
    assert pr["title"] == demotion_title(pinned, previous) and first.pr_url == pr["html_url"]
    body = pr["body"]
    for evidence in ("**40** scored live days", "+0.0510", "0.0267", "0.0753", "p = 4.0e-04 at level 0.05",
                     "0.7412", "0.6902", f"**v{previous}**, the previously pinned version", "features: ALERT",
                     "ret_1 0.310", f"/#/models/{MODEL_NAME}/versions/{pinned}?", "replay mode",
                     "nothing merges it automatically"):
        assert evidence in body, evidence
    assert promo_env.remote_pin(branch).endswith(f"version: {previous}")
    assert promo_env.remote_pin("main").endswith(f"version: {pinned}")  # never merged
    assert tags(promo_mlflow, pinned)[Tag.DEMOTION_PR] == first.pr_url
    assert tags(promo_mlflow, pinned)[Tag.DEMOTION_TARGET] == str(previous)

    # The same evidence again: the same PR, nothing written to the forge.
    before = len(writes(fake_forge))
    again = propose_demotion(report(pinned), target(pinned, previous), p, c)
    assert again.status == "reused" and again.pr_url == first.pr_url
    assert len(writes(fake_forge)) == before and len(fake_forge.open_prs()) == 1

    # One more scored day: the same PR, its evidence refreshed in place.
    newer = report(pinned, days=41, as_of="2026-03-03")
    updated = propose_demotion(newer, target(pinned, previous, days=41), p, c)
    assert updated.status == "updated" and updated.pr_url == first.pr_url
    assert writes(fake_forge)[-1] == ("PATCH", f"{fake_forge.prefix}/repos/{fake_forge.repo}/pulls/{pr['number']}")
    [pr] = fake_forge.open_prs()
    assert "**41** scored live days" in pr["body"] and evidence_digest(pr["body"]) != evidence_digest(body)
    assert pr["state"] == "open"  # an edit, not a close

    # Another target: a new branch and PR; the older demotion PR is closed with a pointer to it.
    moved = propose_demotion(newer, target(pinned, climatology, kind="climatology", days=41), p, c)
    assert moved.status == "proposed" and moved.superseded == [first.pr_url]
    [new_pr] = fake_forge.open_prs()
    assert new_pr["head"]["ref"] == demotion_branch(pinned, climatology)
    assert any(cm["number"] == pr["number"] and moved.pr_url in cm["body"] for cm in fake_forge.comments)
    assert tags(promo_mlflow, pinned)[Tag.DEMOTION_TARGET] == str(climatology)
    # Named by an open PR: proposed, so `primer registry prune` keeps it; the pinned version's status is kept.
    assert tags(promo_mlflow, climatology)[Tag.PROMOTION_STATUS] == PromotionStatus.PROPOSED
    assert tags(promo_mlflow, pinned)[Tag.PROMOTION_STATUS] == PromotionStatus.CANDIDATE
    assert climatology not in registry.prunable_versions(c, keep=set(), keep_recent=0)
    assert promo_env.remote_pin("main").endswith(f"version: {pinned}")


def test_stale_or_empty_pin_pushes_nothing(promo_env: Repos, promo_mlflow: Registry, new_version: Versions,
                                           gitea: FakeForge, monkeypatch: pytest.MonkeyPatch) -> None:
    previous, _ = new_version()
    judged, _ = new_version()
    p, c = promotion(monkeypatch, gitea), registry.client(promo_mlflow.uri)
    nothing = propose_demotion(report(judged), target(judged, previous), p, c)
    assert nothing.status == "nothing_pinned", nothing.message
    pin_main(promo_env, previous)  # a human rolled back (or promoted) since the monitor read the pin
    stale = propose_demotion(report(judged), target(judged, previous), p, c)
    assert stale.status == "already_pinned", stale.message
    other, _ = new_version()
    pin_main(promo_env, other)
    stale = propose_demotion(report(judged), target(judged, previous), p, c)
    assert stale.status == "stale" and f"now pins v{other}, not the judged v{judged}" in stale.message
    assert remote_branches(promo_env) == ["main"] and writes(gitea) == []
    assert Tag.DEMOTION_PR not in tags(promo_mlflow, judged)


def test_no_demotion_when_not_warranted_or_pinned_is_climatology(
        promo_env: Repos, promo_mlflow: Registry, new_version: Versions, gitea: FakeForge,
        monkeypatch: pytest.MonkeyPatch) -> None:
    previous, pinned, p, c = pinned_after_previous(promo_env, promo_mlflow, new_version, monkeypatch, gitea)
    assert propose_demotion(report(pinned, warranted=False), target(pinned, previous), p, c).status == "not_warranted"
    assert propose_demotion(report(pinned), None, p, c).status == "pinned_is_climatology"
    recipe = json.dumps({"name": "climatology", "family": "climatology", "params": {}})
    MlflowClient(promo_mlflow.uri).set_model_version_tag(MODEL_NAME, str(pinned), Tag.RECIPE.value, recipe)
    out = propose_demotion(report(pinned), target(pinned, previous), p, c)
    assert out.status == "pinned_is_climatology" and "nothing simpler" in out.message
    assert remote_branches(promo_env) == ["main"] and gitea.requests == []


def test_target_must_exist_and_match(promo_env: Repos, promo_mlflow: Registry, new_version: Versions,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pinned, _ = new_version()
    pin_main(promo_env, pinned)
    p, c = promotion(monkeypatch, None), registry.client(promo_mlflow.uri)
    with pytest.raises(DemotionProposalError, match="not in the registry"):
        propose_demotion(report(pinned), target(pinned, 99999), p, c)
    with pytest.raises(DemotionProposalError, match="chosen for v"):
        propose_demotion(report(pinned), target(pinned + 1, pinned - 1), p, c)
    assert remote_branches(promo_env) == ["main"]


def test_forge_down_loses_nothing_and_the_rerun_opens_one_pr(
        promo_env: Repos, promo_mlflow: Registry, new_version: Versions, gitea: FakeForge,
        monkeypatch: pytest.MonkeyPatch) -> None:
    previous, pinned, p, c = pinned_after_previous(promo_env, promo_mlflow, new_version, monkeypatch, gitea)
    gitea.force_status = 500
    with pytest.raises(DemotionProposalError) as err:
        propose_demotion(report(pinned), target(pinned, previous), p, c)
    assert "\n" not in str(err.value) and "HTTP 500" in str(err.value) and "retries" in str(err.value)
    assert promo_env.remote_pin("main").endswith(f"version: {pinned}")
    assert Tag.DEMOTION_PR not in tags(promo_mlflow, pinned)
    gitea.force_status = None
    out = propose_demotion(report(pinned), target(pinned, previous), p, c)
    assert out.status == "proposed" and len(gitea.open_prs()) == 1  # the pushed branch was reused
    assert git("rev-list", "--count", f"main..{demotion_branch(pinned, previous)}", cwd=promo_env.remote) == "1"


def test_unreachable_remote_is_one_clear_error(promo_env: Repos, promo_mlflow: Registry, new_version: Versions,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    previous, _ = new_version()
    pinned, _ = new_version()
    pin_main(promo_env, pinned)
    p = replace(promotion(monkeypatch, None), remote=f"http://127.0.0.1:{free_port()}/primer.git")
    with pytest.raises(DemotionProposalError, match="failed: git clone") as err:
        propose_demotion(report(pinned), target(pinned, previous), p, registry.client(promo_mlflow.uri))
    assert "\n" not in str(err.value).strip()


def test_no_forge_pushes_the_branch_only(promo_env: Repos, promo_mlflow: Registry, new_version: Versions,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    previous, pinned, p, c = pinned_after_previous(promo_env, promo_mlflow, new_version, monkeypatch, None)
    out = propose_demotion(report(pinned), target(pinned, previous), p, c)
    branch = demotion_branch(pinned, previous)
    assert out.status == "branch_only" and branch in remote_branches(promo_env)
    assert tags(promo_mlflow, pinned)[Tag.DEMOTION_PR] == f"branch {branch}"
    assert propose_demotion(report(pinned), target(pinned, previous), p, c).status == "branch_only"
    assert promo_env.remote_pin("main").endswith(f"version: {pinned}")


def test_demotion_prs_that_no_longer_apply_are_withdrawn(promo_env: Repos, promo_mlflow: Registry,
                                                          new_version: Versions, gitea: FakeForge,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A demotion whose evidence went away (or whose version is no longer pinned) is closed, not left
    to be merged later; a demotion that still applies, and promotion PRs, are left alone."""
    previous, pinned, p, c = pinned_after_previous(promo_env, promo_mlflow, new_version, monkeypatch, gitea)
    first = propose_demotion(report(pinned), target(pinned, previous), p, c)
    assert first.status == "proposed"
    gitea.prs.append({"number": 99, "title": "Promote spy-direction to v99", "body": "", "state": "open",
                      "head": {"ref": "promote/spy-direction-v99"}, "base": {"ref": "main"},
                      "html_url": "http://forge/pulls/99"})

    assert withdraw_demotions(pinned, p, "no longer warranted") == [first.pr_url]
    assert [pr["number"] for pr in gitea.open_prs()] == [99]
    assert any("Withdrawn: no longer warranted" in cm["body"] for cm in gitea.comments)

    # The pin moved on: the old version's demotion is withdrawn whatever the new pin's evidence.
    again = propose_demotion(report(pinned, days=41, as_of="2026-03-03"), target(pinned, previous, days=41), p, c)
    assert again.status == "proposed"
    assert withdraw_demotions(previous, p, "unused") == [again.pr_url]
    assert any(f"v{pinned} is no longer pinned" in cm["body"] for cm in gitea.comments)
    assert promo_env.remote_pin("main").endswith(f"version: {pinned}")  # closing never touches the pin
