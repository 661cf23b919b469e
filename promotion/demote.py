"""The demotion pull request: roll the pin back when the live evidence says the champion is
worse than climatology (issue 13). Promotion's mechanism in reverse, and never merged here.

``primer monitor`` chooses the target (``ml.demotion.choose_target``) and calls
:func:`propose_demotion`, which

- does nothing unless the report warrants it, or when the pinned version is itself a
  climatology version (nothing simpler to roll back to);
- pushes ``demote/<model>-v<pinned>-to-v<target>`` from the pin branch with only the pin
  changed, and only while the branch still pins the judged version (else ``stale``: a merge
  landed since; nothing is pushed, the next run judges the new pin);
- opens the PR titled ``Demote <model> v<pinned>: roll back to v<target>`` with the live
  evidence as its body, or reuses the open one. Always a pull request (a branch only when no
  forge is configured): a demotion is never committed straight to the pin branch.

Idempotent: the body ends with a digest of the evidence. The same evidence reuses the PR
untouched; new numbers for the same target refresh its body in place (PATCH); another target
means another branch, and the older demotion PRs are closed with a comment pointing at the new
one. One branch per (pinned, target), so no branch is ever rewritten. A failed push or forge
call leaves the pin and any open PR as they were and raises :class:`DemotionProposalError`;
the next run (the evidence is still there) does it again. The pinned version is tagged in
MLflow with ``demotion_pr`` and ``demotion_target``; a target that was never pinned is tagged
``promotion_status=proposed`` (an open PR names it: never pruned).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from tenacity import retry, stop_after_attempt, wait_exponential

from contract import registry
from contract import ui as ui_links
from contract.demotion import DemotionTarget
from contract.errors import PrimerError, one_line
from contract.live_report import SCORE_METRICS, LiveReport
from contract.names import (
    MODEL_NAME,
    PIN_PATH,
    POLICY_PATH,
    PromotionStatus,
    Tag,
    demotion_branch,
    demotion_title,
)
from contract.pin import PinError
from promotion import gitops
from promotion.forge import Forge, ForgeError
from promotion.gitops import GitError, PinMoved
from promotion.policy import Policy
from promotion.propose import Promotion, require_registered

DEMOTION_BRANCH_RE = re.compile(
    "^" + re.escape(demotion_branch(111, 222)).replace("111", r"(\d+)").replace("222", r"(\d+)") + "$")
EVIDENCE_MARK = "<!-- primer-demotion-evidence: {} -->"
EVIDENCE_MARK_RE = re.compile(r"<!-- primer-demotion-evidence: ([0-9a-f]+) -->")


class DemotionProposalError(PrimerError):
    """Pushing the demotion branch, the forge or MLflow failed; nothing was merged, the next run retries."""


@dataclass
class DemotionOutcome:
    # not_warranted | pinned_is_climatology | proposed | reused | updated | branch_only
    # | already_pinned | stale | nothing_pinned
    status: str
    pinned: int
    target: int | None
    branch: str | None = None
    pr_url: str | None = None
    superseded: list[str] = field(default_factory=list)  # URLs of older demotion PRs closed
    detail: str = ""

    def __str__(self) -> str:
        return self.message

    @property
    def message(self) -> str:
        v, t = f"v{self.pinned}", f"v{self.target}"
        text = {
            "not_warranted": f"{v}: no demotion (the live evidence does not warrant one)",
            "pinned_is_climatology": f"{v}: no demotion: it is a climatology version, nothing simpler to roll back to",
            "proposed": f"{v}: demotion to {t} proposed: {self.pr_url} (branch {self.branch})",
            "reused": f"{v}: demotion to {t} already proposed, same evidence: {self.pr_url}",
            "updated": f"{v}: demotion to {t} already proposed; its evidence refreshed: {self.pr_url}",
            "branch_only": f"{v}: demotion to {t} pushed on branch {self.branch} "
                           "(no forge configured: open the PR by hand or merge it)",
            "already_pinned": f"{v}: {t} is already pinned; nothing to do",
            "stale": f"{v}: no demotion: {self.detail}; the next run judges the new pin",
            "nothing_pinned": f"{v}: no demotion: nothing is pinned ({self.detail})",
        }[self.status]
        if self.superseded:
            text += f"; closed older demotion PR(s) {', '.join(self.superseded)}"
        return text


# ---------------------------------------------------------------- evidence text

def _fmt(x: Any, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _p(p: float) -> str:
    return f"= {p:.3f}" if p >= 0.001 else f"= {p:.1e}"  # a tiny p-value keeps its magnitude


def _scores_table(report: LiveReport) -> list[str]:
    out = ["| window | scorer | " + " | ".join(SCORE_METRICS) + " |", "|---" * (len(SCORE_METRICS) + 2) + "|"]
    for window, scorers in report.scores.items():
        label = "all scored days" if window == "all" else f"rolling, last {report.rolling_days} days"
        for scorer, metrics in scorers.items():
            name = f"v{report.model_version}" if scorer == "model" else scorer
            out.append(f"| {label} | {name} | " + " | ".join(_fmt(metrics.get(m)) for m in SCORE_METRICS) + " |")
    return out


def _test_lines(report: LiveReport, policy: Policy) -> list[str]:
    t = report.versus_climatology
    if t is None:
        return ["- no paired test: too few scored days"]
    return [
        f"- `{t['test']}` on **{t['rows']}** scored days, climatology as the challenger: its log loss is lower by "
        f"**{t['improvement']:+.4f}** nats/day (95% CI {t['ci_low']:+.4f} … {t['ci_high']:+.4f}; one-sided bound "
        f"{t['bound']:+.4f}; p {_p(t['p_value'])} at level {t['level']})",
        f"- the gate's rule (`{POLICY_PATH}`): test `{policy.test}`, one-sided level {policy.level}, "
        f"min_effect {policy.min_effect} nats/day; positive = climatology's forecasts lost less",
    ]


def _target_lines(target: DemotionTarget) -> list[str]:
    kind = "the previously pinned version" if target.kind == "previous" else "climatology (no skill, honest)"
    out = [f"**v{target.version}**, {kind}: {target.reason}.", "",
           f"Mean log loss on the same {target.days} days ({target.first_day} → {target.last_day}):", "",
           f"- pinned v{target.pinned}: {_fmt(target.pinned_log_loss)}",
           f"- target v{target.version}: {_fmt(target.target_log_loss)}"]
    if target.previous is not None and target.previous != target.version:
        out.append(f"- previously pinned v{target.previous}: {_fmt(target.previous_log_loss)}")
    if (t := target.previous_vs_climatology) is not None:
        out.append(f"- v{target.previous} vs climatology (climatology as the challenger): lower by "
                   f"{t['improvement']:+.4f} nats/day, p {_p(t['p_value'])}")
    if target.registered_now:
        out.append(f"- v{target.version} was fitted and registered for this demotion (no climatology version existed)")
    return out


def _drift_lines(report: LiveReport) -> list[str]:
    d = report.drift
    if d is None:
        return ["- not computed"]
    alerts = ", ".join(f"{k}: {'ALERT' if on else 'ok'}" for k, on in d.alerts.items()) or "none"
    top = sorted(d.psi.items(), key=lambda kv: -kv[1])[:3]
    return [f"- last {d.window_days} trading days vs the training window: {alerts}",
            "- largest PSI: " + (", ".join(f"{k} {v:.3f}" for k, v in top) or "n/a"),
            f"- up-rate: training {d.up_rate_training:.3f}, recent {d.up_rate_recent:.3f} "
            f"(p = {d.up_rate_p_value:.3f})",
            f"- serving skew: {_fmt(d.skew, 6)} over {d.skew_rows} rebuilt row(s)"]


def _links(tracking_uri: str, report: LiveReport, target: DemotionTarget) -> list[str]:
    ui = ui_links.ui_base(tracking_uri) or "<mlflow ui>"  # no credentials in a PR body
    return [f"- pinned v{report.model_version}: {ui_links.model_version_url(ui, MODEL_NAME, report.model_version)}",
            f"- target v{target.version}: {ui_links.model_version_url(ui, MODEL_NAME, target.version)}",
            f"- all versions and aliases: {ui_links.model_url(ui, MODEL_NAME)}"]


def demotion_body(report: LiveReport, target: DemotionTarget, policy: Policy, tracking_uri: str) -> str:
    """The PR body: the live evidence, why this target, links; ends with the evidence digest."""
    v, t = report.model_version, target.version
    out = [
        f"The pinned version **v{v}** is worse than climatology on its **{report.scored_days}** scored live days "
        f"(through {report.as_of}), by the gate's own test and level. This PR rolls the pin back to **v{t}**.",
        "",
        f"Merging changes only `{PIN_PATH}` (v{v} → v{t}); Argo CD then rolls the service. Opened by "
        "`primer monitor`; nothing merges it automatically.",
        "", "### Scores on the live days (same days for every scorer)", "", *_scores_table(report),
        "", "### Paired test: is climatology better than the pinned version?", "", *_test_lines(report, policy),
        "", "### Rollback target", "", *_target_lines(target),
        "", "### Drift", "", *_drift_lines(report),
    ]
    if report.notes:
        out += ["", "### Notes", "", *[f"- {n}" for n in report.notes]]
    out += ["", "### MLflow", "", *_links(tracking_uri, report, target), ""]
    text = "\n".join(out)
    return text + "\n" + EVIDENCE_MARK.format(_digest(text)) + "\n"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def evidence_digest(body: str) -> str | None:
    """The digest a demotion body carries (None: not one of ours, or edited away)."""
    m = EVIDENCE_MARK_RE.search(body)
    return m.group(1) if m else None


def commit_message(report: LiveReport, target: DemotionTarget) -> str:
    lines = [demotion_title(report.model_version, target.version), ""]
    if (t := report.versus_climatology) is not None:
        lines.append(f"v{report.model_version} on {t['rows']} scored live days to {report.as_of}: climatology's log "
                     f"loss lower by {t['improvement']:+.4f} nats/day (95% CI {t['ci_low']:+.4f}..{t['ci_high']:+.4f}, "
                     f"p {_p(t['p_value'])})")
    lines.append(f"target v{target.version} ({target.kind}): {target.reason}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the step

def _open_or_refresh(forge: Forge, title: str, body: str, branch: str, base: str) -> tuple[str, str]:
    """(status, PR URL): reuse the open PR of ``branch`` (refreshing its body when the evidence
    changed), else open one."""
    existing = next((pr for pr in forge.list_open_prs() if pr.head == branch), None)
    if existing is None:
        existing, created = forge.create_pr(title, body, branch, base)
        if created:
            return "proposed", existing.url
    if evidence_digest(existing.body) == evidence_digest(body) and existing.title == title:
        return "reused", existing.url
    forge.update_pr(existing.number, title, body)
    return "updated", existing.url


def _close_older(forge: Forge, keep: str, pinned: int, by: str) -> list[str]:
    """Close the other open demotion PRs (another target, or a version git no longer pins)."""
    closed = []
    for pr in forge.list_open_prs():
        m = DEMOTION_BRANCH_RE.match(pr.head)
        if not m or pr.head == keep:
            continue
        why = (f"the live evidence now points to another target: {by}" if int(m.group(1)) == pinned else
               f"v{m.group(1)} is no longer pinned; the current demotion PR is {by}")
        forge.comment(pr.number, f"Superseded: {why}. Closing.")
        forge.close_pr(pr.number)
        closed.append(pr.url)
    return closed


def _pinned_is_climatology(c: Any, version: int) -> bool:
    mv = registry.get_version(c, version)
    if mv is None:
        return False
    return registry.is_climatology_recipe(mv.tags.get(Tag.RECIPE.value))


def _check_registry(c: Any, report: LiveReport, target: DemotionTarget) -> bool:
    """True when the pinned version is a climatology version; raises when the target is not registered."""
    require_registered(c, target.version, DemotionProposalError)
    try:
        return _pinned_is_climatology(c, report.model_version)
    except Exception as exc:
        where = registry.public_uri(c.tracking_uri)
        raise DemotionProposalError(f"MLflow at {where} cannot say what {MODEL_NAME} v{report.model_version} is "
                                    f"({one_line(exc)}); nothing pushed") from exc


def _push_and_open(report: LiveReport, target: DemotionTarget, p: Promotion, body: str) -> DemotionOutcome:
    pinned, branch = report.model_version, demotion_branch(report.model_version, target.version)
    res = gitops.push_pin_branch(p.remote, p.branch, branch, target.version, commit_message(report, target),
                                 p.token, expected_base=pinned)
    if res.already_pinned:
        return DemotionOutcome("already_pinned", pinned, target.version, p.branch)
    if p.forge.kind == "none":
        return DemotionOutcome("branch_only", pinned, target.version, branch)
    status, url = _open_or_refresh(p.forge, demotion_title(pinned, target.version), body, branch, p.branch)
    outcome = DemotionOutcome(status, pinned, target.version, branch, url)
    outcome.superseded = _close_older(p.forge, branch, pinned, url)
    return outcome


# Two monitor runs racing write the same tags; a short retry settles a refused simultaneous write.
@retry(stop=stop_after_attempt(4), wait=wait_exponential(multiplier=0.2, max=2), reraise=True)
def _tag(c: Any, outcome: DemotionOutcome) -> None:
    where = outcome.pr_url or f"branch {outcome.branch}"
    c.set_model_version_tag(MODEL_NAME, str(outcome.pinned), Tag.DEMOTION_PR.value, where)
    c.set_model_version_tag(MODEL_NAME, str(outcome.pinned), Tag.DEMOTION_TARGET.value, str(outcome.target))
    # A target never pinned before (a climatology version registered for this) is now named by an
    # open PR: "proposed" keeps `primer registry prune` from deleting it before the PR is merged.
    if outcome.target is not None and registry.status_of(c, outcome.target) in (None, PromotionStatus.CANDIDATE):
        registry.set_status(c, outcome.target, PromotionStatus.PROPOSED)


def propose_demotion(report: LiveReport, target: DemotionTarget | None, promotion: Promotion,
                     client: Any) -> DemotionOutcome:
    """Open (or reuse, or refresh) the pull request that rolls ``report``'s version back to ``target``.

    ``target`` None: the chooser found nothing to roll back to (the pinned version is climatology).
    ``client``: an MlflowClient of the registry the report's versions live in.
    Raises :class:`DemotionProposalError` when git, the forge or MLflow fails (nothing merged; rerun).
    """
    pinned = report.model_version
    if not report.demotion_warranted:
        return DemotionOutcome("not_warranted", pinned, None)
    if target is None:
        return DemotionOutcome("pinned_is_climatology", pinned, None)
    if target.pinned != pinned or target.version == pinned:
        raise DemotionProposalError(f"demotion target v{target.version} was chosen for v{target.pinned}, "
                                    f"not as a rollback of v{pinned}")
    if _check_registry(client, report, target):
        return DemotionOutcome("pinned_is_climatology", pinned, target.version)
    body = demotion_body(report, target, promotion.policy, client.tracking_uri)
    try:
        outcome = _push_and_open(report, target, promotion, body)
    except PinMoved as exc:  # the evidence is about a version git no longer pins: nothing to do
        status = "nothing_pinned" if exc.found is None else "stale"
        found = "nothing" if exc.found is None else f"v{exc.found}"
        return DemotionOutcome(status, pinned, target.version, promotion.branch,
                               detail=f"{promotion.branch} now pins {found}, not the judged v{pinned}")
    except (GitError, ForgeError, PinError) as exc:
        said = " ".join(str(exc).split())  # git's stderr spans lines; the error is one
        raise DemotionProposalError(f"demotion of {MODEL_NAME} v{pinned} to v{target.version} failed: {said} "
                                    "(nothing merged; the next `primer monitor` retries)") from exc
    if outcome.status == "already_pinned":
        return outcome
    try:
        _tag(client, outcome)
    except Exception as exc:  # git and the forge are done; rerunning reuses them and tags again
        raise DemotionProposalError(f"{outcome.message}, but tagging {MODEL_NAME} v{pinned} in MLflow failed: "
                                    f"{one_line(exc)}") from exc
    return outcome


def withdraw_demotions(pinned: int | None, promotion: Promotion, why: str) -> list[str]:
    """Close the open demotion PRs that no longer apply, each with a comment; their URLs.

    Those of a version git no longer pins, and those of ``pinned`` itself when its live evidence
    (``why``) no longer warrants a demotion: a stale demotion must not wait to be merged.
    Raises :class:`DemotionProposalError` when the forge fails (nothing lost; the next run retries).
    """
    if promotion.forge.kind == "none":
        return []
    closed = []
    try:
        for pr in promotion.forge.list_open_prs():
            m = DEMOTION_BRANCH_RE.match(pr.head)
            if not m:
                continue
            judged = int(m.group(1))
            reason = why if judged == pinned else f"v{judged} is no longer pinned"
            promotion.forge.comment(pr.number, f"Withdrawn: {reason}. Closing.")
            promotion.forge.close_pr(pr.number)
            closed.append(pr.url)
    except ForgeError as exc:
        raise DemotionProposalError(f"withdrawing stale demotion PRs failed: {one_line(exc)} "
                                    "(the next `primer monitor` retries)") from exc
    return closed
