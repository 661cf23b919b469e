"""The promotion gate: ``policy.yaml`` and :func:`decide`.

An evaluation with walk-forward evidence (``Evaluation.comparison``) is decided by a paired
test on per-day log loss (``contract.significance``): the challenger passes only if the
one-sided bound at the policy's ``level`` says its loss is lower than the champion's and
the estimated improvement meets ``min_effect``. Older evaluations (one window, no per-day
losses) are decided by the score rule below them (``metric``, ``min_improvement``).

The one invariant this module guarantees: a challenger that scores worse than (or equal
to) the champion on the same rows never passes, whatever the policy file says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from contract.errors import SettingsError
from contract.evidence import METRICS, Evaluation, improvement, paired_tests
from contract.registry import is_climatology_recipe
from contract.significance import DEFAULT_LEVEL, DEFAULT_MIN_EFFECT, TESTS, GateSpec, PairedTest
from contract.yaml_files import load_model, non_negative, one_sided_level, parse_model, positive_int

BOOTSTRAP_MODES = ("commit", "propose")
# Float subtraction noise (0.53 - 0.52 = 0.00999...) must not flip a decision at the threshold.
_EPS = 1e-9


class PolicyError(SettingsError):
    """policy.yaml is missing or malformed; the message names the field."""


class Policy(BaseModel):
    """``promotion/policy.yaml``: every field optional, each checked with a message naming it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: str = "balanced_accuracy"
    min_improvement: float = 0.01
    min_eval_days: int = 60
    must_beat_baseline: bool = True
    bootstrap_must_beat_baseline: bool = False
    bootstrap: Literal["commit", "propose"] = "commit"
    test: str = TESTS[0]
    level: float = DEFAULT_LEVEL
    min_effect: float = DEFAULT_MIN_EFFECT

    @property
    def gate(self) -> GateSpec:
        return GateSpec(test=self.test, level=self.level, min_effect=self.min_effect)

    @field_validator("metric", "test", mode="before")
    @classmethod
    def _known_choice(cls, value: Any, info: ValidationInfo) -> Any:
        choices = {"metric": METRICS, "test": TESTS}[str(info.field_name)]
        if value not in choices:
            raise ValueError(f"{info.field_name} {value!r} is not one of {', '.join(choices)}")
        return value

    @field_validator("level", mode="before")
    @classmethod
    def _level_range(cls, value: Any) -> Any:
        return one_sided_level("level", value)

    @field_validator("min_improvement", "min_effect", mode="before")
    @classmethod
    def _non_negative(cls, value: Any, info: ValidationInfo) -> Any:
        return non_negative(str(info.field_name), value)

    @field_validator("min_eval_days", mode="before")
    @classmethod
    def _positive_days(cls, value: Any) -> Any:
        return positive_int("min_eval_days", value)

    @field_validator("must_beat_baseline", "bootstrap_must_beat_baseline", mode="before")
    @classmethod
    def _strict_bool(cls, value: Any, info: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"{info.field_name} must be true or false, got {value!r}")
        return value

    @field_validator("bootstrap", mode="before")
    @classmethod
    def _known_mode(cls, value: Any) -> Any:
        if value not in BOOTSTRAP_MODES:
            raise ValueError(f"bootstrap must be one of {', '.join(BOOTSTRAP_MODES)}, got {value!r}")
        return value


def parse_policy(text: str, source: str = "policy") -> Policy:
    return parse_model(Policy, text, source, PolicyError)


def load_policy(path: str | Path) -> Policy:
    """The policy in ``path`` (``PromotionSettings.policy_path()`` says which file applies)."""
    return load_model(Policy, path, PolicyError, "policy file")


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    bootstrap: bool = False  # nothing pinned yet: policy.bootstrap says how to promote
    metric: str = ""
    challenger_score: float | None = None
    champion_score: float | None = None
    baseline: tuple[str, float] | None = None
    tests: dict[str, PairedTest] = field(default_factory=dict)  # the paired tests decided on (walk-forward)

    @property
    def improvement(self) -> float | None:
        """Challenger minus champion, signed so that positive is better."""
        if self.challenger_score is None or self.champion_score is None:
            return None
        return improvement(self.challenger_score, self.champion_score, self.metric)


def decide(evaluation: Evaluation, policy: Policy) -> Verdict:
    """Apply the gate. Every reason carries the numbers it was decided on."""
    if evaluation.comparison is not None:
        return decide_on_evidence(evaluation, policy)
    return decide_on_scores(evaluation, policy)


def _describe(t: PairedTest, what: str) -> str:
    return (f"{what}: log loss lower by {t.improvement:+.4f} nats/day over {t.rows} rows "
            f"(one-sided {1 - t.level:.0%} bound {t.bound:+.4f}, 95% CI {t.ci_low:+.4f}..{t.ci_high:+.4f}, "
            f"p = {t.p_value:.3f})")


def _verdict_on_test(t: PairedTest, what: str, policy: Policy) -> tuple[bool, str]:
    text = _describe(t, what)
    if t.passes(policy.min_effect):
        return True, f"{text}: bound > 0 and improvement >= min_effect {policy.min_effect}"
    why = "the bound does not exclude no improvement" if t.bound <= 0 else \
        f"improvement below min_effect {policy.min_effect}"
    return False, f"{text}: {why}"


def decide_on_evidence(evaluation: Evaluation, policy: Policy) -> Verdict:
    """The walk-forward gate: a paired test on per-day log loss (see the module docstring)."""
    c = evaluation.comparison
    assert c is not None
    m, bootstrap, reasons = "log_loss", evaluation.champion_version is None, []
    ok = evaluation.eval_days >= policy.min_eval_days
    reasons.append(f"{evaluation.eval_days} out-of-sample rows in {c.folds} walk-forward folds "
                   f"{'>=' if ok else '<'} min_eval_days {policy.min_eval_days}")
    tests = paired_tests(evaluation, policy.gate)
    challenger = evaluation.challenger.get(m)
    champion = evaluation.champion.get(m) if evaluation.champion is not None else None
    baseline = ("climatology", c.climatology.log_loss) if c.climatology is not None else None
    is_climatology = is_climatology_recipe(c.challenger_recipe)
    vs_clim = tests["challenger_vs_climatology"]
    if is_climatology:
        reasons.append("the challenger is climatology itself (the training window's up-rate): honest by definition")
    elif bootstrap or policy.must_beat_baseline:
        passed, text = _verdict_on_test(vs_clim, "challenger vs climatology", policy) if bootstrap else \
            (vs_clim.improvement > 0, _describe(vs_clim, "challenger vs climatology"))
        ok &= passed
        reasons.append(text if passed or bootstrap else f"{text}: not better than climatology")
    if bootstrap:
        reasons.append(f"nothing pinned yet: bootstrap ({policy.bootstrap})")
    elif evaluation.champion_version == evaluation.challenger_version:
        ok = False
        reasons.append(f"v{evaluation.challenger_version} is already the champion")
    elif "challenger_vs_champion" not in tests:
        ok = False
        reasons.append(f"champion v{evaluation.champion_version} has no per-day losses on the same rows; "
                       "refusing to compare")
    else:
        passed, text = _verdict_on_test(tests["challenger_vs_champion"],
                                        f"challenger vs champion v{evaluation.champion_version}", policy)
        ok &= passed
        reasons.append(text)
        if not c.champion_refitted:
            reasons.append("the champion records no recipe: scored as registered, not refitted per fold")
    return Verdict(ok, reasons, bootstrap, m, challenger, champion, baseline, tests)


def decide_on_scores(evaluation: Evaluation, policy: Policy) -> Verdict:
    """The score rule for evaluations without per-day losses (before the walk-forward gate)."""
    m = policy.metric
    reasons: list[str] = []
    ok = True
    bootstrap = evaluation.champion_version is None
    challenger = evaluation.challenger.get(m)
    champion = evaluation.champion.get(m) if evaluation.champion is not None else None
    baseline = evaluation.best_baseline(m)

    if evaluation.eval_days < policy.min_eval_days:
        ok = False
        reasons.append(f"evaluation window has {evaluation.eval_days} days < min_eval_days {policy.min_eval_days}")
    else:
        reasons.append(f"evaluation window has {evaluation.eval_days} days >= min_eval_days {policy.min_eval_days}")

    if challenger is None or not math.isfinite(challenger):
        reasons.append(f"challenger has no {m} score on this window")
        return Verdict(False, reasons, bootstrap, m, None, champion, baseline)

    required = policy.bootstrap_must_beat_baseline if bootstrap else policy.must_beat_baseline
    if baseline is None:
        if required:
            ok = False
            reasons.append(f"no naive baseline scored on {m}; cannot show the challenger beats one")
    else:
        name, value = baseline
        margin = improvement(challenger, value, m)
        if margin > _EPS:
            reasons.append(f"challenger {m} {challenger:.4f} beats best baseline {name} {value:.4f} ({margin:+.4f})")
        elif required:
            ok = False
            reasons.append(f"challenger {m} {challenger:.4f} does not beat best baseline {name} {value:.4f} "
                           f"({margin:+.4f})")
        else:  # reported, never hidden
            reasons.append(f"challenger {m} {challenger:.4f} does not beat best baseline {name} {value:.4f} "
                           f"({margin:+.4f}); not required {'at bootstrap' if bootstrap else 'by this policy'}")

    if bootstrap:
        reasons.append(f"nothing pinned yet: bootstrap ({policy.bootstrap})")
    elif evaluation.champion_version == evaluation.challenger_version:
        ok = False
        reasons.append(f"v{evaluation.challenger_version} is already the champion")
    elif champion is None or not math.isfinite(champion):
        ok = False
        reasons.append(f"champion v{evaluation.champion_version} has no {m} score on the same window; "
                       "refusing to compare")
    else:
        delta = improvement(challenger, champion, m)
        # delta > 0 is checked on its own so that min_improvement 0 still never promotes a tie.
        if delta > 0 and delta >= policy.min_improvement - _EPS:
            reasons.append(f"challenger {m} {challenger:.4f} vs champion v{evaluation.champion_version} "
                           f"{champion:.4f}: {delta:+.4f} >= min_improvement {policy.min_improvement}")
        else:
            ok = False
            reasons.append(f"challenger {m} {challenger:.4f} vs champion v{evaluation.champion_version} "
                           f"{champion:.4f}: {delta:+.4f} < min_improvement {policy.min_improvement} (or not better)")
    return Verdict(ok, reasons, bootstrap, m, challenger, champion, baseline)
