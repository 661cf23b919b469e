"""Proposal failure modes, idempotency and concurrency (real git + real MLflow + stand-in forge)."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from contract.evidence import Evaluation
from contract.names import MODEL_NAME, PIN_PATH, PromotionStatus, Tag, promotion_branch
from contract.pin import parse_pin, render_pin
from primer.cli import PrimerGroup
from primer.promotion_commands import COMMANDS
from promotion.propose import ProposalError
from tests.promotion.conftest import Registry, Repos, git, make_evaluation, propose, record_evaluation, use_forge
from tests.promotion.fakeforge import FakeForge
from tests.support import free_port

CLI = PrimerGroup("primer", commands=list(COMMANDS))
Versions = Callable[[], tuple[int, str]]


def status_of(reg: Registry, v: int) -> str:
    return MlflowClient(reg.uri).get_model_version(MODEL_NAME, str(v)).tags[Tag.PROMOTION_STATUS]


def pin_main(repos: Repos, version: int) -> None:
    """Commit a pin on the remote's main (as if v<version> had been promoted earlier)."""
    (repos.work / PIN_PATH).write_text(render_pin((repos.work / PIN_PATH).read_text(), version))
    git("commit", "-q", "-am", f"Promote spy-direction to v{version}", cwd=repos.work)
    git("push", "-q", "origin", "main", cwd=repos.work)


def challenge(repos: Repos, reg: Registry, new_version: Versions, score: float = 0.6,
              champion_score: float = 0.5) -> tuple[int, int, Evaluation]:
    """A pinned champion on the remote's main and a newer version's evaluation against it."""
    champ, _ = new_version()
    v, run_id = new_version()
    pin_main(repos, champ)
    return champ, v, make_evaluation(reg, v, run_id, score, champion=(champ, champion_score))


def remote_branches(repos: Repos) -> list[str]:
    return git("for-each-ref", "--format=%(refname:short)", "refs/heads", cwd=repos.remote).split()


def test_gate_failure_changes_nothing(promo_env: Repos, promo_mlflow: Registry, new_version: Versions) -> None:
    _, v, e = challenge(promo_env, promo_mlflow, new_version, 0.555, champion_score=0.55)
    out = propose(e)
    assert out.status == "rejected" and "< min_improvement 0.01" in out.message
    assert status_of(promo_mlflow, v) == PromotionStatus.CANDIDATE
    assert remote_branches(promo_env) == ["main"]


def test_no_forge_pushes_the_branch_only(promo_env: Repos, promo_mlflow: Registry, new_version: Versions) -> None:
    _, v, e = challenge(promo_env, promo_mlflow, new_version)
    out = propose(e)
    assert out.status == "branch_only" and out.pr_url is None
    assert promotion_branch(v) in remote_branches(promo_env)
    assert status_of(promo_mlflow, v) == PromotionStatus.PROPOSED
    assert propose(e).status == "branch_only"  # the existing branch is reused
    assert git("rev-list", "--count", f"main..{promotion_branch(v)}", cwd=promo_env.remote) == "1"


def test_forge_down_then_up(promo_env: Repos, promo_mlflow: Registry, new_version: Versions, gitea: FakeForge,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    _, v, e = challenge(promo_env, promo_mlflow, new_version)
    use_forge(monkeypatch, gitea)
    monkeypatch.setenv("PRIMER_FORGE_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    with pytest.raises(ProposalError, match="unreachable") as err:
        propose(e)
    assert "proposal_failed" in str(err.value)
    assert status_of(promo_mlflow, v) == PromotionStatus.PROPOSAL_FAILED
    assert MlflowClient(promo_mlflow.uri).get_model_version(MODEL_NAME, str(v)) is not None  # kept
    monkeypatch.setenv("PRIMER_FORGE_URL", gitea.url)
    out = propose(e)  # re-running the same step completes it
    assert out.status == "proposed" and len(gitea.prs) == 1
    assert status_of(promo_mlflow, v) == PromotionStatus.PROPOSED


def test_unauthorized(promo_env: Repos, promo_mlflow: Registry, new_version: Versions, fake_forge: FakeForge,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    _, v, e = challenge(promo_env, promo_mlflow, new_version)
    use_forge(monkeypatch, fake_forge, token="expired-token")
    with pytest.raises(ProposalError, match="HTTP 401") as err:
        propose(e)
    assert "expired-token" not in str(err.value)
    assert status_of(promo_mlflow, v) == PromotionStatus.PROPOSAL_FAILED
    assert fake_forge.prs == []


def test_pr_already_exists_answer_is_reused(promo_env: Repos, promo_mlflow: Registry, new_version: Versions,
                                            fake_forge: FakeForge, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another run's PR exists but our list did not see it yet: 409 (Gitea) / 422 (GitHub) -> reuse it."""
    _, _, e = challenge(promo_env, promo_mlflow, new_version)
    use_forge(monkeypatch, fake_forge)
    first = propose(e)
    fake_forge.stale_lists = 1
    second = propose(e)
    assert second.pr_url == first.pr_url and len(fake_forge.prs) == 1
    assert (first.status, second.status) == ("proposed", "reused")
    creates = [r for r in fake_forge.requests if r.method == "POST" and r.path.endswith("/pulls")]
    assert len(creates) == 2  # the second create got 409/422 and was resolved by listing


def test_push_rejected_then_retried_by_the_next_run(promo_env: Repos, promo_mlflow: Registry, new_version: Versions,
                                                    gitea: FakeForge, monkeypatch: pytest.MonkeyPatch) -> None:
    champ, v, e = challenge(promo_env, promo_mlflow, new_version)
    record_evaluation(promo_mlflow, e)  # the pipeline's evidence, which the retry reads back
    use_forge(monkeypatch, gitea)
    hook = promo_env.remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\necho 'pushes are frozen' >&2\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(ProposalError, match="pushes are frozen"):
        propose(e)
    assert status_of(promo_mlflow, v) == PromotionStatus.PROPOSAL_FAILED
    assert remote_branches(promo_env) == ["main"] and gitea.prs == []
    hook.unlink()
    # The next run's own challenger loses the gate, so the run retries the failed proposal instead.
    w, run_w = new_version()
    out = propose(make_evaluation(promo_mlflow, w, run_w, 0.50, champion=(champ, 0.5)))
    assert out.status == "rejected" and out.retried is not None
    assert out.retried.status == "proposed" and out.retried.version == v
    assert [p["head"]["ref"] for p in gitea.open_prs()] == [promotion_branch(v)]
    assert status_of(promo_mlflow, v) == PromotionStatus.PROPOSED
    assert status_of(promo_mlflow, w) == PromotionStatus.CANDIDATE


def _propose_when_released(evaluation: Evaluation, start: Any, results: Any) -> None:
    """One racing CronJob run, in its own process (module level so `spawn` can import it)."""
    start.wait(120)
    try:
        out = propose(evaluation)
        results.put((out.status, out.pr_url))
    except BaseException as exc:  # surfaced by the assertion in the test
        results.put(("error", repr(exc)))


def test_two_runs_racing_open_one_pr(promo_env: Repos, promo_mlflow: Registry, new_version: Versions,
                                     fake_forge: FakeForge, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes (two CronJob pods) propose the same version at the same moment."""
    _, v, e = challenge(promo_env, promo_mlflow, new_version)
    use_forge(monkeypatch, fake_forge)  # environment, inherited by the processes
    ctx = multiprocessing.get_context("spawn")  # no forked copies of this process's threads and clients
    start, results = ctx.Barrier(2), ctx.Queue()
    runs = [ctx.Process(target=_propose_when_released, args=(e, start, results)) for _ in range(2)]
    for r in runs:
        r.start()
    outcomes = [results.get(timeout=180) for _ in runs]
    for r in runs:
        r.join(30)
    assert sorted(status for status, _ in outcomes) == ["proposed", "reused"], outcomes
    assert len(fake_forge.prs) == 1
    assert {url for _, url in outcomes} == {fake_forge.prs[0]["html_url"]}
    assert remote_branches(promo_env).count(promotion_branch(v)) == 1
    assert git("rev-list", "--count", f"main..{promotion_branch(v)}", cwd=promo_env.remote) == "1"


def test_in_place_bootstrap_targets_the_checked_out_branch(promo_env: Repos, promo_mlflow: Registry,
                                                            new_version: Versions,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`primer up` on a feature branch: the pin moves where the user is, main is left alone."""
    monkeypatch.delenv("PRIMER_GIT_REMOTE")
    monkeypatch.delenv("PRIMER_GIT_BRANCH")
    work = promo_env.work
    git("checkout", "-q", "-b", "my-feature", cwd=work)
    main_before = git("rev-parse", "main", cwd=work)
    v, run_id = new_version()
    out = propose(make_evaluation(promo_mlflow, v, run_id, 0.55))
    assert out.status == "committed" and out.branch == "my-feature", out.message
    assert parse_pin((work / PIN_PATH).read_text()).version == v
    assert git("rev-parse", "main", cwd=work) == main_before


def test_bootstrap_commits_in_place_in_the_local_working_repo(promo_env: Repos, promo_mlflow: Registry,
                                                               new_version: Versions,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`primer up` case: no PRIMER_GIT_REMOTE, main checked out in the repo itself."""
    monkeypatch.delenv("PRIMER_GIT_REMOTE")
    work = promo_env.work
    (work / "notes.txt").write_text("someone's unrelated work\n")
    git("add", "notes.txt", cwd=work)  # staged, must stay staged and uncommitted
    v, run_id = new_version()
    out = propose(make_evaluation(promo_mlflow, v, run_id, 0.55))
    assert out.status == "committed"
    assert parse_pin((work / PIN_PATH).read_text()).version == v
    assert git("show", "--name-only", "--format=", "HEAD", cwd=work).split() == [PIN_PATH]
    assert git("diff", "--cached", "--name-only", cwd=work).split() == ["notes.txt"]
    # A failed in-place commit leaves the pin as it was (and the step retryable).
    w, run_w = new_version()
    git("reset", "-q", "--hard", "HEAD~1", cwd=work)  # back to nothing pinned
    pinned_before = (work / PIN_PATH).read_text()
    hook = work / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\nexit 1\n")
    hook.chmod(0o755)
    with pytest.raises(ProposalError, match="git commit"):
        propose(make_evaluation(promo_mlflow, w, run_w, 0.55))
    hook.unlink()
    assert (work / PIN_PATH).read_text() == pinned_before
    assert git("status", "--porcelain", "--", PIN_PATH, cwd=work) == ""
    # A dirty pin file is never committed over.
    (work / PIN_PATH).write_text((work / PIN_PATH).read_text() + "# edited\n")
    with pytest.raises(ProposalError, match="uncommitted changes"):
        propose(make_evaluation(promo_mlflow, w, run_w, 0.55))


def test_promote_refusals(promo_env: Repos, promo_mlflow: Registry, new_version: Versions) -> None:
    v, _ = new_version()
    runner = CliRunner()
    for bad, words in (("abc", "got str 'abc'"), ("1.5", "got float"), ("0", "must be >= 1"), ("true", "got bool")):
        r = runner.invoke(CLI, ["promote", bad])
        assert r.exit_code == 1 and words in r.output, r.output
    r = runner.invoke(CLI, ["promote", str(v + 1000)])
    assert r.exit_code == 1 and "does not exist in registered model" in r.output
    pin: Path = promo_env.work / PIN_PATH
    pin.write_text(pin.read_text() + "# local edit\n")
    r = runner.invoke(CLI, ["promote", str(v)])
    assert r.exit_code == 1 and "uncommitted changes" in r.output
    git("checkout", "--", PIN_PATH, cwd=promo_env.work)
    r = runner.invoke(CLI, ["promote", str(v)])
    assert r.exit_code == 0, r.output
    assert git("log", "-1", "--format=%s", cwd=promo_env.work) == f"Promote spy-direction to v{v}"
    assert parse_pin(promo_env.remote_pin()).version is None  # not pushed without --push
    r = runner.invoke(CLI, ["promote", str(v)])
    assert r.exit_code == 0 and "already pinned" in r.output
    r = runner.invoke(CLI, ["rollback"])
    assert r.exit_code == 1 and "no earlier pinned version" in r.output
    r = runner.invoke(CLI, ["registry", "sync"])
    assert r.exit_code == 0 and f"v{v}" in r.output


def test_rollback_to_a_named_version(promo_env: Repos, promo_mlflow: Registry, new_version: Versions) -> None:
    a, _ = new_version()
    b, _ = new_version()
    runner = CliRunner()
    for v in (a, b):
        assert runner.invoke(CLI, ["promote", str(v)]).exit_code == 0
    r = runner.invoke(CLI, ["rollback", "--to", str(b)])
    assert r.exit_code == 1 and f"v{b} is already pinned" in r.output
    r = runner.invoke(CLI, ["rollback", "--to", "-1"])
    assert r.exit_code == 1 and "must be >= 1" in r.output
    r = runner.invoke(CLI, ["rollback", "--to", str(a), "--reason", "bad canary"])
    assert r.exit_code == 0, r.output
    assert parse_pin((promo_env.work / PIN_PATH).read_text()).version == a
    assert git("log", "-1", "--format=%B", cwd=promo_env.work).startswith(
        f"Roll back {MODEL_NAME} from v{b} to v{a}\n\nReason: bad canary")
    assert status_of(promo_mlflow, b) == PromotionStatus.ROLLED_BACK


def test_refuses_a_version_the_registry_does_not_have(promo_env: Repos, promo_mlflow: Registry,
                                                       new_version: Versions) -> None:
    """Checked before git is touched: a bogus or unreachable registry pushes nothing."""
    v, run_id = new_version()
    with pytest.raises(ProposalError, match="is not in the registry"):
        propose(make_evaluation(promo_mlflow, v + 1000, run_id, 0.55))
    unreachable = Registry(f"http://127.0.0.1:{free_port()}", promo_mlflow.experiment_id)
    with pytest.raises(ProposalError, match="cannot confirm"):
        propose(make_evaluation(unreachable, v, run_id, 0.55))
    assert parse_pin(promo_env.remote_pin()).version is None
    assert remote_branches(promo_env) == ["main"]
    assert git("rev-list", "--count", "main", cwd=promo_env.remote) == "1"


def test_evidence_against_a_pin_that_moved_is_never_pushed(promo_env: Repos, promo_mlflow: Registry,
                                                           new_version: Versions) -> None:
    """The run read its pin (a ConfigMap in the cluster) before a merge reached it: the gate compared
    against the wrong champion. Nothing may be committed or pushed; the next run re-scores."""
    old, _ = new_version()
    champ, _ = new_version()
    v, run_id = new_version()
    pin_main(promo_env, champ)
    commits = git("rev-list", "--count", "main", cwd=promo_env.remote)
    # Bootstrap race: this run saw nothing pinned, git already pins a champion. A direct
    # bootstrap commit used to replace it without any comparison.
    out = propose(make_evaluation(promo_mlflow, v, run_id, 0.6))
    assert out.status == "stale", out.message
    assert f"main now pins v{champ}, but the evaluation compared against nothing" in out.message
    # Proposal race: this run scored the champion before the last merge.
    out = propose(make_evaluation(promo_mlflow, v, run_id, 0.6, champion=(old, 0.5)))
    assert out.status == "stale" and f"compared against v{old}" in out.message
    assert parse_pin(promo_env.remote_pin()).version == champ
    assert git("rev-list", "--count", "main", cwd=promo_env.remote) == commits
    assert remote_branches(promo_env) == ["main"]
    assert status_of(promo_mlflow, v) == PromotionStatus.CANDIDATE  # not failed: nothing to retry


def test_a_failed_promote_commit_leaves_the_pin_clean_and_retryable(promo_env: Repos, promo_mlflow: Registry,
                                                                    new_version: Versions) -> None:
    v, _ = new_version()
    pin = promo_env.work / PIN_PATH
    before = pin.read_text()
    hook = promo_env.work / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho 'commits are frozen' >&2\nexit 1\n")
    hook.chmod(0o755)
    r = CliRunner().invoke(CLI, ["promote", str(v)])
    assert r.exit_code == 1 and "commits are frozen" in r.output, r.output
    assert pin.read_text() == before and git("status", "--porcelain", cwd=promo_env.work) == ""
    hook.unlink()
    r = CliRunner().invoke(CLI, ["promote", str(v)])  # the retry is not refused as "uncommitted changes"
    assert r.exit_code == 0, r.output
    assert parse_pin(pin.read_text()).version == v


def test_uri_credentials_never_reach_the_pr_body() -> None:
    from contract.registry import public_uri
    from promotion.policy import Policy, decide
    from promotion.propose import pr_body

    e = make_evaluation(Registry("http://primer:s3cret@mlflow.example:5000", "1"), 5, "run5", 0.6, champion=(4, 0.5))
    body = pr_body(e, decide(e, Policy()), Policy())
    assert "s3cret" not in body and "http://mlflow.example:5000/#/models/spy-direction/versions/5" in body
    assert public_uri("https://u:p@[::1]:5000/x") == "https://[::1]:5000/x"
    assert public_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
