"""The walk-forward gate: the paired test, decide() on per-day losses, the evidence round trip and the PR body.

The invariants of the one-window gate, kept on the new evidence: the same rows for both
(the losses must line up), ties and worse challengers never promote, a champion that cannot
be scored is not a reason to promote.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import date

import numpy as np
import pytest

from contract.evidence import Comparison, Evaluation, Scores, evaluation_from_dict, evaluation_to_dict
from contract.significance import SignificanceError, long_run_variance, newey_west_lags, paired_test
from promotion.policy import Policy, decide, parse_policy
from promotion.propose import commit_message, pr_body

N = 1000
RNG = np.random.default_rng(11)
BASE = list(0.69 + 0.05 * RNG.standard_normal(N))


def _scores(loss: list[float]) -> Scores:
    return Scores(accuracy=0.5, balanced_accuracy=0.5, roc_auc=0.5, log_loss=float(np.mean(loss)), brier=0.25)


def evaluation(challenger: list[float], champion: list[float] | None, *, champion_version: int | None = 3,
               climatology: list[float] | None = None, family: str = "logistic_regression") -> Evaluation:
    climatology = BASE if climatology is None else climatology
    comparison = Comparison(
        folds=16, fold_months=3, challenger_recipe=json.dumps({"name": "c", "family": family, "params": {}}),
        challenger_loss=challenger, climatology_loss=climatology,
        champion_recipe=None if champion is None else json.dumps({"name": "k", "family": "logistic_regression"}),
        champion_loss=champion, disagreements=None if champion is None else 123, climatology=_scores(climatology),
        selection_days=250)
    return Evaluation(
        model_name="spy-direction", challenger_version=4, challenger_run_id="r4", challenger_candidate="c",
        parent_run_id="p", experiment_id="1", tracking_uri="http://127.0.0.1:5000", eval_start=date(2020, 7, 1),
        eval_end=date(2024, 6, 27), eval_days=len(challenger), challenger=_scores(challenger), data_source="synthetic",
        baselines={"climatology": _scores(climatology)}, champion_version=champion_version,
        champion=None if champion is None else _scores(champion), comparison=comparison)


def shifted(by: float) -> list[float]:
    """BASE improved by ``by`` nats/day on average, with day-to-day noise of its own."""
    noise = np.random.default_rng(5).standard_normal(N) * 0.02
    return list(np.asarray(BASE) - by + noise)


def test_paired_test_matches_the_textbook_formula_on_independent_days() -> None:
    d = np.random.default_rng(1).standard_normal(2000) * 0.1 + 0.01
    t = paired_test(np.zeros(2000), d)  # improvement = mean(other - challenger) = mean(d)
    assert t.improvement == pytest.approx(d.mean())
    assert t.lags == newey_west_lags(2000) == 7
    # Independent days: the HAC variance is close to the plain variance.
    assert t.std_error == pytest.approx(d.std() / np.sqrt(2000), rel=0.1)
    assert t.ci_low < t.improvement < t.ci_high and t.bound > t.ci_low
    assert 0 < t.p_value < 0.01


def test_hac_variance_grows_with_positive_autocorrelation() -> None:
    rng = np.random.default_rng(2)
    iid = rng.standard_normal(5000)
    clustered = np.repeat(rng.standard_normal(1000), 5)  # five identical days in a row
    assert long_run_variance(iid, 10) == pytest.approx(iid.var(), rel=0.1)
    assert long_run_variance(clustered, 10) > 3 * clustered.var()


def test_paired_test_refuses_rows_that_do_not_line_up() -> None:
    with pytest.raises(SignificanceError, match="same rows"):
        paired_test([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(SignificanceError, match="finite"):
        paired_test([0.1, float("nan"), 0.3], [0.1, 0.2, 0.3])


def test_a_clear_improvement_passes_and_says_why() -> None:
    v = decide(evaluation(shifted(0.01), BASE), Policy())
    assert v.passed, v.reasons
    assert any("bound" in r and "min_effect 0.002" in r for r in v.reasons)
    assert v.tests["challenger_vs_champion"].improvement == pytest.approx(0.01, abs=0.003)


@pytest.mark.parametrize("challenger,why", [
    (BASE, "does not exclude no improvement"),  # a tie (the same losses): never
    (shifted(-0.01), "does not exclude no improvement"),  # worse
    (shifted(0.0015), "below min_effect"),  # "significant" but negligible... or not significant
])
def test_ties_worse_and_negligible_never_promote(challenger: list[float], why: str) -> None:
    v = decide(evaluation(challenger, BASE), parse_policy("min_effect: 0.002\n"))
    assert not v.passed
    assert any("does not exclude" in r or "below min_effect" in r for r in v.reasons)


def test_min_effect_is_a_floor_even_when_the_test_is_sure() -> None:
    better = list(np.asarray(BASE) - 0.003)  # the same noise: a certain, tiny improvement
    assert decide(evaluation(better, BASE), parse_policy("min_effect: 0.001\n")).passed
    v = decide(evaluation(better, BASE), parse_policy("min_effect: 0.005\n"))
    assert not v.passed and any("below min_effect 0.005" in r for r in v.reasons)


def test_champion_without_losses_or_same_version_never_promotes() -> None:
    v = decide(evaluation(shifted(0.02), None, champion_version=3), Policy())
    assert not v.passed and any("no per-day losses" in r for r in v.reasons)
    same = replace(evaluation(shifted(0.02), BASE), challenger_version=3)
    assert not decide(same, Policy()).passed


def test_bootstrap_needs_a_challenger_that_beats_climatology_unless_it_is_climatology() -> None:
    assert decide(evaluation(shifted(0.02), None, champion_version=None), Policy()).passed
    v = decide(evaluation(BASE, None, champion_version=None), Policy())
    assert not v.passed and v.bootstrap
    assert decide(evaluation(BASE, None, champion_version=None, family="climatology"), Policy()).passed


def test_must_beat_climatology_after_bootstrap() -> None:
    worse_than_climatology = shifted(-0.01)
    champion = shifted(-0.03)
    v = decide(evaluation(worse_than_climatology, champion), Policy())
    assert not v.passed and any("not better than climatology" in r for r in v.reasons)
    assert decide(evaluation(worse_than_climatology, champion), Policy(must_beat_baseline=False)).passed


def test_policy_fields_are_checked() -> None:
    for text, message in (("level: 0.6\n", "level must be"), ("min_effect: -1\n", "min_effect must be"),
                          ("test: t_test\n", "test 't_test' is not one of diebold_mariano")):
        with pytest.raises(ValueError, match=message):
            parse_policy(text)


def test_evidence_round_trips_and_old_files_still_load() -> None:
    e = evaluation(shifted(0.01), BASE)
    assert evaluation_from_dict(json.loads(json.dumps(evaluation_to_dict(e)))) == e
    old = evaluation_to_dict(e)
    del old["comparison"]
    assert evaluation_from_dict(old).comparison is None


def test_pr_body_and_commit_message_state_the_evidence() -> None:
    e = evaluation(shifted(0.01), BASE)
    v = decide(e, Policy())
    body = pr_body(e, v, Policy())
    t = v.tests["challenger_vs_champion"]
    assert "### Evidence: paired test on per-day log loss" in body
    assert f"{N} out-of-sample rows" in body and "16 folds" in body and "**123 of 1000** rows" in body
    assert f"| challenger vs champion | {t.improvement:+.4f} | {t.ci_low:+.4f} … {t.ci_high:+.4f} |" in body
    assert f"{t.p_value:.3f} | {t.mde:.4f} |" in body
    assert "| challenger vs climatology |" in body and "| champion vs climatology |" in body
    assert "test: `diebold_mariano`, one-sided level 0.05, min_effect 0.002" in body
    assert f"log loss lower by {t.improvement:+.4f} nats/day" in commit_message(e, v)
