"""The pipeline's last step: gate the evaluation, then branch + commit + pull request.

Failure handling: a failed push or forge call never touches the registered
version beyond tagging it ``promotion_status=proposal_failed``; the evaluation
that justified it (``evaluation.json``, logged once by the pipeline on its parent
run) is read back so that the next run retries it when its own challenger does not pass the gate
(and supersedes it when it does). Re-running for the same evaluation is safe:
the branch and the PR are reused, never duplicated. If the target branch no
longer pins the champion the evaluation was scored against (a merge landed
after this run read its pin), nothing is pushed: outcome ``stale``.
"""

from __future__ import annotations

import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tenacity import retry, stop_after_attempt, wait_exponential

from contract import registry
from contract import ui as ui_links
from contract.errors import PrimerError, one_line
from contract.evidence import METRICS, Evaluation, evaluation_from_dict, improvement, paired_tests
from contract.names import (
    CHALLENGER_ALIAS,
    EVALUATION_ARTIFACT,
    MODEL_NAME,
    PARENT_RUN_TAG,
    PIN_PATH,
    POLICY_PATH,
    PromotionStatus,
    Tag,
    promotion_branch,
    promotion_title,
)
from contract.pin import PinError
from contract.settings import PromotionSettings
from contract.ui import ui_base
from promotion import gitops
from promotion.forge import Forge, ForgeError, PullRequest, forge_from_settings
from promotion.gitops import GitError, PinMoved
from promotion.policy import Policy, PolicyError, Verdict, decide, load_policy

log = logging.getLogger(__name__)

PROMOTION_BRANCH_RE = re.compile("^" + re.escape(promotion_branch(0)[:-1]) + r"(\d+)$")


class ProposalError(PrimerError):
    """Pushing the branch or talking to the forge failed; the version is tagged for retry."""


class PromotionConfigError(ProposalError):
    """The promotion settings (policy file, forge variables) are unusable; nothing was attempted."""


@dataclass(frozen=True)
class Promotion:
    """What the promotion step works with, resolved once from the settings."""

    remote: str  # where branches are pushed: a URL, a path, or the local repository
    branch: str  # the branch the pin lives on
    token: str | None
    policy: Policy
    forge: Forge


def _target(settings: PromotionSettings) -> tuple[str, str]:
    """(remote, branch). Without PRIMER_GIT_REMOTE: the local repository itself (``primer up``),
    targeting the branch checked out there (a user on a feature branch sees the pin move)."""
    if settings.git_remote:
        return settings.git_remote, settings.git_branch or "main"
    remote = str(settings.repo_root())
    branch = settings.git_branch
    if not branch:
        try:
            branch = gitops.checked_out_branch(Path(remote))
        except GitError:  # not a repository: pushing says so, if the gate ever passes
            branch = None
    return remote, branch or "main"


def load_promotion(settings: PromotionSettings) -> Promotion:
    """Target, policy and forge from the settings. The pipeline calls this before it trains
    anything, so a typo in PRIMER_FORGE_* or the policy costs seconds, not a run."""
    try:
        remote, branch = _target(settings)
        return Promotion(remote, branch, settings.token(), load_policy(settings.policy_path()),
                         forge_from_settings(settings))
    except (PolicyError, ForgeError, PinError, GitError) as exc:
        raise PromotionConfigError(f"promotion settings: {exc}") from exc


@dataclass
class ProposalOutcome:
    # rejected | proposed | reused | branch_only | committed | already_pinned | stale
    status: str
    version: int
    verdict: Verdict
    branch: str | None = None
    pr_url: str | None = None
    commit: str | None = None
    superseded: list[int] = field(default_factory=list)
    retried: ProposalOutcome | None = None  # a failed earlier proposal this run completed
    detail: str = ""  # for "stale": how the pin moved

    def __str__(self) -> str:  # what the pipeline prints
        return self.message

    @property
    def message(self) -> str:
        v = f"v{self.version}"
        text = {
            "rejected": f"{v} not proposed: gate failed: " + "; ".join(self.verdict.reasons),
            "proposed": f"{v} proposed: {self.pr_url} (branch {self.branch})",
            "reused": f"{v} already proposed: {self.pr_url} (branch {self.branch})",
            "branch_only": f"{v} proposed on branch {self.branch} "
                           "(no forge configured: open the PR by hand or merge it)",
            "committed": f"{v} pinned directly on {self.branch} (bootstrap: nothing was pinned) "
                         f"at {(self.commit or '')[:8]}",
            "already_pinned": f"{v} is already pinned on {self.branch}; nothing to do",
            "stale": f"{v} not proposed: {self.detail}; the next run scores against the new pin",
        }[self.status]
        if self.superseded:
            text += f"; superseded v{', v'.join(map(str, self.superseded))}"
        if self.retried is not None:
            text += f"; retried earlier failed proposal: {self.retried.message}"
        return text


# ---------------------------------------------------------------- evidence text

def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _links(e: Evaluation) -> dict[str, str]:
    ui = ui_base(e.tracking_uri) or "<mlflow ui>"  # no credentials: the PR body is read by everyone with access
    links = {
        "challenger run": ui_links.run_url(ui, e.experiment_id, e.challenger_run_id),
        "training run": ui_links.run_url(ui, e.experiment_id, e.parent_run_id),
        f"model version v{e.challenger_version}": ui_links.model_version_url(ui, e.model_name, e.challenger_version),
        "all versions and aliases": ui_links.model_url(ui, e.model_name),
    }
    if e.champion_version is not None:
        links[f"champion v{e.champion_version}"] = ui_links.model_version_url(ui, e.model_name, e.champion_version)
    return links


def commit_message(e: Evaluation, v: Verdict) -> str:
    lines = [promotion_title(e.challenger_version, e.model_name), ""]
    if e.champion is not None and e.champion_version is not None:
        lines.append(f"Scores on the same window (delta > 0: v{e.challenger_version} is better):")
        for metric in METRICS:
            a, b = e.challenger.get(metric), e.champion.get(metric)
            if a is None or b is None:
                continue
            d = improvement(a, b, metric)
            mark = " (decides)" if metric == v.metric else ""
            lines.append(f"  {metric}{mark}: {a:.4f} vs champion v{e.champion_version} {b:.4f}, delta {d:+.4f}")
    else:
        lines.append(f"{v.metric}: {_fmt(v.challenger_score)} (nothing pinned before: bootstrap)")
    if v.baseline:
        lines.append(f"best naive baseline on {v.metric}: {v.baseline[0]} {v.baseline[1]:.4f}")
    if (t := v.tests.get("challenger_vs_champion") or v.tests.get("challenger_vs_climatology")) is not None:
        against = "champion" if "challenger_vs_champion" in v.tests else "climatology"
        lines.append(f"paired {t.test} on {t.rows} walk-forward rows vs {against}: log loss lower by "
                     f"{t.improvement:+.4f} nats/day (95% CI {t.ci_low:+.4f}..{t.ci_high:+.4f}, p = {t.p_value:.3f})")
    lines += [
        f"run id: {e.challenger_run_id} (candidate {e.challenger_candidate})",
        f"eval window: {e.eval_start}..{e.eval_end} ({e.eval_days} days, data {e.data_source})",
    ]
    return "\n".join(lines) + "\n"


def pr_body(e: Evaluation, v: Verdict, policy: Policy) -> str:
    n, c = e.challenger_version, e.champion_version
    out = [
        f"Challenger **v{n}** (candidate `{e.challenger_candidate}`) vs "
        + (f"champion **v{c}**" if c is not None else "no champion (nothing pinned yet)")
        + f", scored on the same window **{e.eval_start} → {e.eval_end}** "
        f"({e.eval_days} trading days, data `{e.data_source}`).",
        "",
        "Merging changes only `" + PIN_PATH + "`; Argo CD then rolls the service to the new version.",
        "",
        "### Scores on the evaluation window",
        "",
        f"| metric | challenger v{n} | champion {'v' + str(c) if c is not None else '—'} | Δ (better if > 0) |",
        "|---|---|---|---|",
    ]
    for metric in METRICS:
        a = e.challenger.get(metric)
        b = e.champion.get(metric) if e.champion is not None else None
        d = None if a is None or b is None else improvement(a, b, metric)
        name = f"**{metric}** (decides)" if metric == v.metric else metric
        out.append(f"| {name} | {_fmt(a)} | {_fmt(b)} | {'n/a' if d is None else f'{d:+.4f}'} |")
    if e.baselines:
        out += ["", "### Naive baselines (same window)", "", "| baseline | " + " | ".join(METRICS) + " |",
                "|---" * (len(METRICS) + 1) + "|"]
        for name, s in e.baselines.items():
            out.append(f"| {name} | " + " | ".join(_fmt(s.get(m)) for m in METRICS) + " |")
    out += evidence_section(e, v, policy)
    gate_rule = (f"- test: `{policy.test}`, one-sided level {policy.level}, min_effect {policy.min_effect} nats/day "
                 f"of log loss; min_eval_days: {policy.min_eval_days}; must_beat_baseline (climatology): "
                 f"{str(policy.must_beat_baseline).lower()}; bootstrap: {policy.bootstrap}") if v.tests else (
        f"- metric: `{policy.metric}`; min_improvement: {policy.min_improvement}; "
        f"min_eval_days: {policy.min_eval_days}; must_beat_baseline: {str(policy.must_beat_baseline).lower()}; "
        f"bootstrap: {policy.bootstrap} (must beat baseline: {str(policy.bootstrap_must_beat_baseline).lower()})")
    out += [
        "", f"### Gate (`{POLICY_PATH}`)", "",
        gate_rule,
        f"- verdict: **{'PASS' if v.passed else 'FAIL'}**",
        *[f"  - {r}" for r in v.reasons],
        "", "### MLflow", "",
        *[f"- {k}: {url}" for k, url in _links(e).items()],
        "",
    ]
    return "\n".join(out)


_TEST_NAMES = {"challenger_vs_champion": "challenger vs champion", "challenger_vs_climatology":
               "challenger vs climatology", "champion_vs_climatology": "champion vs climatology"}


def evidence_section(e: Evaluation, v: Verdict, policy: Policy) -> list[str]:
    """The walk-forward evidence: rows, folds, disagreements, each paired test with its interval."""
    c = e.comparison
    if c is None or not v.tests:
        return []
    out = ["", "### Evidence: paired test on per-day log loss (walk-forward)", "",
           f"- {e.eval_days} out-of-sample rows ({e.eval_start} → {e.eval_end}) in {c.folds} folds; every fold "
           f"refits each recipe on the rows before it (every {c.fold_months} month(s)); the challenger was chosen "
           f"on {c.selection_days} earlier rows, none of these"]
    if c.disagreements is not None:
        out.append(f"- the two call a different direction (UP/DOWN) on **{c.disagreements} of {e.eval_days}** rows")
    if not c.champion_refitted and c.champion_loss is not None:
        out.append("- the champion records no recipe: scored as registered (not refitted per fold; optimistic)")
    out += ["", f"Test: `{policy.test}` (Diebold–Mariano, Newey–West HAC variance), one-sided level {policy.level}; "
            f"promote only if the bound is > 0 and the improvement ≥ {policy.min_effect} nats/day.", "",
            "| comparison | log loss lower by (nats/day) | 95% CI | one-sided bound | p | detectable at 80% power |",
            "|---|---|---|---|---|---|"]
    for key, t in v.tests.items():
        out.append(f"| {_TEST_NAMES.get(key, key)} | {t.improvement:+.4f} | {t.ci_low:+.4f} … {t.ci_high:+.4f} | "
                   f"{t.bound:+.4f} | {t.p_value:.3f} | {t.mde:.4f} |")
    out += ["", "Positive = the first one's forecasts lost less. An interval that contains 0 means these rows do not "
            "show a difference; 'detectable' is the smallest true improvement this many rows would reveal "
            "4 times in 5 (see the README's section on the gate)."]
    return out


# ---------------------------------------------------------------- saved evidence (retry, status)

def champion_vs_climatology(c: Any, latest: int | None, champion: int | None, policy: Policy) -> str | None:
    """``primer status``'s line: the pinned champion against climatology, from the evidence of the
    latest training run (version ``latest``) that scored it; None when there is none to read (an
    evaluation from before the walk-forward gate, another champion then, no run yet)."""
    e = _load_evaluation(c, latest) if latest is not None and champion is not None else None
    if e is None or e.champion_version != champion:
        return None
    t = paired_tests(e, policy.gate).get("champion_vs_climatology")
    if t is None:
        return None
    verdict = "beats climatology" if t.passes(policy.min_effect) else \
        "does NOT beat climatology" if t.improvement <= 0 else "not shown to beat climatology"
    return (f"v{champion} {verdict}: log loss lower by {t.improvement:+.4f} nats/day (95% CI {t.ci_low:+.4f}.."
            f"{t.ci_high:+.4f}, p = {t.p_value:.3f}) over {t.rows} walk-forward rows to {e.eval_end} (v{latest}'s run)")


def _load_evaluation(c: Any, version: int) -> Evaluation | None:
    """The evaluation the pipeline logged for ``version`` (on its run's parent), None if there is none."""
    mv = registry.get_version(c, version)
    if mv is None or not mv.run_id:
        return None
    try:
        run_id = c.get_run(mv.run_id).data.tags.get(PARENT_RUN_TAG, mv.run_id)
        return evaluation_from_dict(_download_dict(c, run_id, EVALUATION_ARTIFACT))
    except Exception as exc:
        log.warning("no saved evaluation for v%s (%s); cannot retry it", version, exc)
        return None


def _download_dict(c: Any, run_id: str, path: str) -> dict[str, Any]:
    import json

    with tempfile.TemporaryDirectory() as tmp:
        return dict(json.loads(Path(c.download_artifacts(run_id, path, tmp)).read_text()))


# ---------------------------------------------------------------- the step

def _open_pr(forge: Forge, title: str, body: str, branch: str, base: str) -> tuple[PullRequest, bool]:
    for pr in forge.list_open_prs():
        if pr.head == branch or pr.title == title:
            return pr, False
    return forge.create_pr(title, body, branch, base)  # (the racing run's PR, False) on 409/422


def _supersede(c: Any, forge: Forge, version: int, pr_url: str | None, pinned: int | None) -> list[int]:
    """Close older open promotion PRs and tag older pending versions superseded."""
    done: set[int] = set()
    by = f"v{version}" + (f" ({pr_url})" if pr_url else "")
    for pr in forge.list_open_prs():
        m = PROMOTION_BRANCH_RE.match(pr.head)
        if not m or int(m.group(1)) >= version:
            continue
        forge.comment(pr.number, f"Superseded by {by}, which won the gate on a newer evaluation. Closing.")
        forge.close_pr(pr.number)
        done.add(int(m.group(1)))
    pending = registry.versions_with_status(c, PromotionStatus.PROPOSED, PromotionStatus.PROPOSAL_FAILED)
    done.update(n for n in pending if n < version)
    for n in sorted(done):
        if n != pinned and registry.get_version(c, n) is not None:
            registry.set_status(c, n, PromotionStatus.SUPERSEDED)
    return sorted(done - {pinned})


def _bootstrap_commit(verdict: Verdict, p: Promotion) -> bool:
    return verdict.bootstrap and p.policy.bootstrap == "commit"


def _push(e: Evaluation, verdict: Verdict, p: Promotion, msg: str) -> tuple[ProposalOutcome, int | None]:
    """Commit (bootstrap) or push a branch and open or reuse its PR; (outcome, version now pinned)."""
    n = e.challenger_version
    # The gate compared against e.champion_version (the pin this run read); git must still pin it.
    base = e.champion_version
    if _bootstrap_commit(verdict, p):
        res = gitops.commit_pin_direct(p.remote, p.branch, n, msg, p.token, expected_base=base)
        status = "already_pinned" if res.already_pinned else "committed"
        return ProposalOutcome(status, n, verdict, p.branch, None, res.commit), n
    branch = promotion_branch(n, e.model_name)
    res = gitops.push_pin_branch(p.remote, p.branch, branch, n, msg, p.token, expected_base=base)
    if res.already_pinned:
        return ProposalOutcome("already_pinned", n, verdict, p.branch, None, res.commit), n
    if p.forge.kind == "none":
        return ProposalOutcome("branch_only", n, verdict, branch, None, res.commit), res.base_version
    title = promotion_title(n, e.model_name)
    pr, created = _open_pr(p.forge, title, pr_body(e, verdict, p.policy), branch, p.branch)
    outcome = ProposalOutcome("proposed" if created else "reused", n, verdict, branch, pr.url, res.commit)
    return outcome, res.base_version


def _propose(e: Evaluation, verdict: Verdict, p: Promotion, c: Any) -> ProposalOutcome:
    n = e.challenger_version
    _require_registered(c, e)  # before touching git: never pin a version the registry does not have
    try:
        outcome, pinned = _push(e, verdict, p, commit_message(e, verdict))
        if outcome.status == "already_pinned" and not _bootstrap_commit(verdict, p):
            return outcome  # a proposal for what already serves: nothing to supersede or tag
        outcome.superseded = _supersede(c, p.forge, n, outcome.pr_url, pinned)
    except PinMoved as exc:  # not a failure: the evidence is stale, nothing was pushed, nothing to retry
        log.warning("v%s not proposed: %s", n, exc)
        return ProposalOutcome("stale", n, verdict, p.branch, detail=str(exc))
    except (GitError, ForgeError, PinError) as exc:
        try:
            registry.set_status(c, n, PromotionStatus.PROPOSAL_FAILED)
            failed = f"{Tag.PROMOTION_STATUS.value}={PromotionStatus.PROPOSAL_FAILED.value}"
            marked = f"tagged {failed}; the next run retries it"
        except Exception as tag_exc:  # MLflow down as well: say so, keep the original reason first
            marked = f"could not tag it for retry either ({tag_exc})"
        raise ProposalError(f"proposal of {e.model_name} v{n} failed: {exc} ({marked})") from exc
    # Even a direct bootstrap commit is only "proposed" until Argo CD (or `primer up`) runs
    # `primer registry sync`, which is what marks a version promoted and moves the champion alias.
    try:
        _tag_proposed(c, e.model_name, n, outcome.pr_url)
    except Exception as exc:  # git and the forge are done; re-running reuses them and tags again
        raise ProposalError(f"{outcome.message}, but tagging {e.model_name} v{n} in MLflow failed: {exc}") from exc
    return outcome


# Two runs racing on the same version both write the same tags and alias; the
# registry's SQL store can refuse one of the simultaneous writes (a unique
# alias row). The writes are idempotent, so a short retry settles the race.
@retry(stop=stop_after_attempt(4), wait=wait_exponential(multiplier=0.2, max=2), reraise=True)
def _tag_proposed(c: Any, model: str, n: int, pr_url: str | None) -> None:
    registry.set_status(c, n, PromotionStatus.PROPOSED)
    if pr_url:
        c.set_model_version_tag(model, str(n), Tag.PROMOTION_PR.value, pr_url)
    c.set_registered_model_alias(model, CHALLENGER_ALIAS, str(n))


def _require_registered(c: Any, e: Evaluation) -> None:
    require_registered(c, e.challenger_version, ProposalError, e.model_name)


def require_registered(c: Any, version: int, error: type[PrimerError], model: str = MODEL_NAME) -> None:
    """Raise ``error`` unless MLflow confirms ``version`` exists: git never pins a version the registry lacks."""
    uri = registry.public_uri(c.tracking_uri)
    try:
        registry.probe(c.tracking_uri)
        found = registry.get_version(c, version, model)
    except Exception as exc:
        raise error(f"MLflow at {uri} cannot confirm {model} v{version} exists ({one_line(exc)}); "
                    "nothing pushed") from exc
    if found is None:
        raise error(f"{model} v{version} is not in the registry at {uri}; refusing to pin a version that does not "
                    "exist (nothing pushed)")


def _retry_failed(e: Evaluation, p: Promotion, c: Any) -> ProposalOutcome | None:
    """Retry the newest ``proposal_failed`` version whose saved evidence is against today's champion."""
    for n in reversed(registry.versions_with_status(c, PromotionStatus.PROPOSAL_FAILED)):
        if n == e.challenger_version:
            continue
        saved = _load_evaluation(c, n)
        if saved is None or saved.champion_version != e.champion_version:
            continue  # the champion changed since: its comparison is stale, a newer run must win again
        verdict = decide(saved, p.policy)
        if verdict.passed:
            log.info("retrying the failed proposal of v%s", n)
            return _propose(saved, verdict, p, c)
    return None


def propose_from_evaluation(evaluation: Evaluation, settings: PromotionSettings | None = None, *,
                            promotion: Promotion | None = None) -> ProposalOutcome:
    """Gate ``evaluation``; when it passes, push the pin branch and open (or reuse) the PR.

    ``promotion`` (else resolved from ``settings``) says where and under which policy.
    Raises :class:`ProposalError` when git or the forge fails (after tagging the version for retry).
    """
    if promotion is None:
        if settings is None:
            raise TypeError("propose_from_evaluation needs settings or promotion")
        promotion = load_promotion(settings)
    verdict = decide(evaluation, promotion.policy)
    c = registry.client(evaluation.tracking_uri)
    if not verdict.passed:
        outcome = ProposalOutcome("rejected", evaluation.challenger_version, verdict)
        try:
            outcome.retried = _retry_failed(evaluation, promotion, c)
        except ProposalError:
            raise  # the retry itself failed: exit non-zero with its reason, like a first attempt
        except Exception as exc:  # looking for failed proposals is best effort; the gate verdict stands
            log.warning("could not look for failed proposals to retry: %s", exc)
        return outcome
    return _propose(evaluation, verdict, promotion, c)



class GitProposer:
    """The promotion step as the pipeline's last stage (``ml.pipeline.Proposer``)."""

    def __init__(self, settings: PromotionSettings) -> None:
        self.settings = settings
        self._promotion: Promotion | None = None

    def check(self) -> None:
        self._promotion = load_promotion(self.settings)

    def propose(self, evaluation: Evaluation) -> ProposalOutcome:
        return propose_from_evaluation(evaluation, self.settings, promotion=self._promotion)
