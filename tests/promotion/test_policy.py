"""The gate: policy.yaml parsing and decide()."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest

from contract.evidence import LOWER_IS_BETTER, Evaluation, Scores
from promotion.policy import METRICS, Policy, PolicyError, decide, load_policy, parse_policy

REPO = Path(__file__).resolve().parents[2]


def s(ba: float, *, log_loss: float = 0.69, auc: float | None = 0.5) -> Scores:
    return Scores(accuracy=ba, balanced_accuracy=ba, roc_auc=auc, log_loss=log_loss, brier=0.25)


def ev(chal: Scores, champ: Scores | None, *, champion_version: int | None = 3, days: int = 60,
       baselines: dict[str, Scores] | None = None) -> Evaluation:
    return Evaluation(
        model_name="spy-direction", challenger_version=4, challenger_run_id="r4", challenger_candidate="rf",
        parent_run_id="p", experiment_id="1", tracking_uri="http://127.0.0.1:5000",
        eval_start=date(2024, 1, 2), eval_end=date(2024, 3, 27), eval_days=days, challenger=chal,
        data_source="synthetic", baselines={"always_up": s(0.5)} if baselines is None else baselines,
        champion_version=champion_version if champ is not None or champion_version is not None else None,
        champion=champ,
    )


POLICY = Policy()


def test_repository_policy_loads_with_documented_defaults() -> None:
    p = load_policy(REPO / "promotion" / "policy.yaml")
    assert p == Policy(metric="balanced_accuracy", min_improvement=0.01, min_eval_days=60,
                       must_beat_baseline=True, bootstrap_must_beat_baseline=False, bootstrap="commit")


@pytest.mark.parametrize("text,words", [
    ("metric: accuracy\nmin_improvement: -0.1\n", "min_improvement must be a number >= 0"),
    ("metric: f1\n", "metric 'f1' is not one of"),
    ("min_eval_days: 0\n", "min_eval_days must be an integer >= 1"),
    ("bootstrap: merge\n", "bootstrap must be one of commit, propose"),
    ("must_beat_baseline: 'yes'\n", "must_beat_baseline must be true or false"),
    ("threshold: 3\n", "unknown key(s) threshold"),
    ("[1, 2]\n", "expected a mapping"),
    ("metric: [\n", "YAML syntax error"),
])
def test_bad_policies_are_rejected_with_the_field(text: str, words: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "policy.yaml")
    assert words in str(err.value)


def test_passes_with_enough_improvement_and_reports_numbers() -> None:
    v = decide(ev(s(0.56), s(0.53)), POLICY)
    assert v.passed and not v.bootstrap
    assert v.improvement == pytest.approx(0.03)
    text = " | ".join(v.reasons)
    assert "0.5600" in text and "0.5300" in text and "+0.0300" in text and "always_up 0.5000" in text


def test_threshold_is_inclusive_despite_float_noise() -> None:
    assert decide(ev(s(0.53), s(0.52)), POLICY).passed  # 0.53 - 0.52 = 0.00999999...


@pytest.mark.parametrize("chal,champ,days,baseline,why", [
    (0.555, 0.55, 60, 0.5, "< min_improvement"),
    (0.60, 0.50, 59, 0.5, "59 days < min_eval_days 60"),
    (0.56, 0.50, 60, 0.57, "does not beat best baseline always_up 0.5700"),
    (0.50, 0.52, 60, 0.4, "-0.0200"),
])
def test_fails_with_a_reason(chal: float, champ: float, days: int, baseline: float, why: str) -> None:
    v = decide(ev(s(chal), s(champ), days=days, baselines={"always_up": s(baseline)}), POLICY)
    assert not v.passed
    assert any(why in r for r in v.reasons), v.reasons


def test_champion_must_be_scored_on_the_same_window() -> None:
    v = decide(ev(s(0.9), None, champion_version=3), POLICY)
    assert not v.passed and any("no balanced_accuracy score on the same window" in r for r in v.reasons)


def test_already_champion_is_not_proposed_again() -> None:
    e = replace(ev(s(0.6), s(0.6)), champion_version=4)
    assert not decide(e, POLICY).passed


def test_bootstrap_when_nothing_pinned() -> None:
    v = decide(ev(s(0.55), None, champion_version=None), POLICY)
    assert v.passed and v.bootstrap
    # By default the first pin need not beat the baselines (something must serve), but it is reported.
    v = decide(ev(s(0.49), None, champion_version=None), POLICY)
    assert v.passed and any("does not beat best baseline always_up 0.5000" in r and "at bootstrap" in r
                            for r in v.reasons)
    strict = POLICY.model_copy(update={"bootstrap_must_beat_baseline": True})
    assert not decide(ev(s(0.49), None, champion_version=None), strict).passed
    assert not decide(ev(s(0.70), None, champion_version=None, days=30), POLICY).passed  # window rule holds


def test_must_beat_baseline_can_be_switched_off() -> None:
    loose = POLICY.model_copy(update={"must_beat_baseline": False})
    assert decide(ev(s(0.49), s(0.47)), loose).passed
    assert not decide(ev(s(0.49), s(0.47)), POLICY).passed


def test_missing_baselines_fail_when_required() -> None:
    v = decide(ev(s(0.6), s(0.5), baselines={}), POLICY)
    assert not v.passed and any("no naive baseline" in r for r in v.reasons)


def test_lower_is_better_metrics() -> None:
    p = Policy(metric="log_loss", min_improvement=0.005, must_beat_baseline=False)
    assert decide(ev(s(0.5, log_loss=0.680), s(0.5, log_loss=0.690)), p).passed
    assert not decide(ev(s(0.5, log_loss=0.695), s(0.5, log_loss=0.690)), p).passed


def test_never_promotes_a_model_worse_than_or_equal_to_the_champion() -> None:
    """Property over many random score pairs, metrics and thresholds (including 0)."""
    rng = random.Random(20240101)
    passed = 0
    for _ in range(3000):
        metric = rng.choice(METRICS)
        policy = Policy(metric=metric, min_improvement=rng.choice([0.0, 0.0, 0.001, 0.01, 0.05]),
                        must_beat_baseline=rng.random() < 0.5, min_eval_days=60)
        a, b = rng.uniform(0, 1), rng.uniform(0, 1)
        if rng.random() < 0.1:
            b = a  # ties
        base = {"always_up": Scores(0.5, 0.5, 0.5, 0.7, 0.25)}
        chal = Scores(a, a, a, a, a)
        champ = Scores(b, b, b, b, b)
        v = decide(ev(chal, champ, baselines=base), policy)
        if v.passed:
            passed += 1
            better = a < b if metric in LOWER_IS_BETTER else a > b
            assert better, (metric, a, b, policy, v.reasons)
            assert abs(a - b) >= policy.min_improvement - 1e-9
    assert passed > 300  # the property was really exercised, not vacuous
