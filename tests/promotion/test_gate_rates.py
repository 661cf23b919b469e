"""Acceptance of the walk-forward gate: how often it promotes without and with a real advantage.

Real parts: the planted-signal synthetic source (``synthetic:SEED:SIGNAL``), the features,
walk-forward folds refitting real recipes (``ml.folds``), the evidence the pipeline builds
(``ml.walkforward.comparison``) and the gate's own decision (``promotion.policy.decide``
with the packaged policy). Cheap on purpose: yearly folds, 500 training rows, logistic
regressions and climatology, so hundreds of decisions take seconds, not minutes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import pytest
from scipy.stats import binomtest

from contract.evidence import Evaluation, Scores
from contract.names import POLICY_PATH
from ml.data import load_prices
from ml.evaluate import score
from ml.features import build_features, labeled
from ml.folds import FoldRunner, Forecast, plan_folds
from ml.train import Candidate, Grid
from ml.walkforward import CLIMATOLOGY, Evidence, Regions, baselines, comparison
from promotion.policy import decide, load_policy
from tests.support import REPO_ROOT

PACKAGED_POLICY = REPO_ROOT / POLICY_PATH
END = date(2012, 12, 31)
ROWS = 1000  # the default --eval-days
GRID = Grid(candidates=(CLIMATOLOGY,), fold_months=12)
LOGREG = Candidate("logreg_c1", "logistic_regression", {"C": 1.0})
LOGREG_STRONG = Candidate("logreg_c0.01", "logistic_regression", {"C": 0.01, "solver": "liblinear"})
# Each a challenger with no real advantage over its champion on labels that are coin flips.
PAIRS = ((LOGREG, CLIMATOLOGY), (LOGREG, LOGREG_STRONG), (LOGREG_STRONG, CLIMATOLOGY))
# What policy.yaml claims the default gate detects with 80 % power at 1,000 rows (its comments).
CLAIMED_DETECTABLE_EFFECT = 0.03


@dataclass
class Seed:
    """One seed's comparison rows and every recipe's forecasts on them (fitted once)."""

    regions: Regions
    forecasts: dict[str, Forecast]
    scores: dict[str, Scores] = field(default_factory=dict)
    baselines: dict[str, Scores] = field(default_factory=dict)

    @classmethod
    def run(cls, spec: str, *recipes: Candidate) -> Seed:
        rows = labeled(build_features(load_prices(spec, end=END)))
        regions = Regions(rows, [], plan_folds(rows, days=ROWS, months=12, train_rows=500))
        runner = FoldRunner(None)
        forecasts = {r.name: runner.forecast(r, rows, regions.compare) for r in (CLIMATOLOGY, *recipes)}
        seed = cls(regions, forecasts, {n: score(regions.y, f.p_up) for n, f in forecasts.items()})
        seed.baselines = baselines(Evidence(regions, forecasts[CLIMATOLOGY.name], forecasts[CLIMATOLOGY.name]))
        return seed

    def evaluation(self, challenger: Candidate, champion: Candidate) -> Evaluation:
        """The evidence exactly as the pipeline builds it, for a challenger against a pinned v1."""
        mine, theirs = self.forecasts[challenger.name], self.forecasts[champion.name]
        evidence = Evidence(self.regions, mine, self.forecasts[CLIMATOLOGY.name], champion_p=theirs.p_up,
                            champion_recipe=champion)
        y = self.regions.y
        return Evaluation(
            model_name="spy-direction", challenger_version=2, challenger_run_id="r",
            challenger_candidate=challenger.name, parent_run_id="p", experiment_id="1",
            tracking_uri="http://127.0.0.1:1", eval_start=y.index[0].date(), eval_end=y.index[-1].date(),
            eval_days=len(y), challenger=self.scores[challenger.name], data_source="synthetic",
            baselines=self.baselines, champion_version=1, champion=self.scores[champion.name],
            comparison=comparison(evidence, GRID))


@pytest.mark.slow
def test_no_signal_promotes_at_most_five_percent_of_500_decisions() -> None:
    """Labels independent of every feature: any promotion is a false one. Three decisions per
    seed (fitted models against a climatology champion and against each other), 510 in all.
    The one-sided 95 % upper Clopper-Pearson bound on the rate must stay <= 5 %."""
    policy = load_policy(PACKAGED_POLICY)
    promoted = decisions = 0
    for seed in range(170):
        run = Seed.run(f"synthetic:{seed}:0", LOGREG, LOGREG_STRONG)
        for challenger, champion in PAIRS:
            promoted += decide(run.evaluation(challenger, champion), policy).passed
            decisions += 1
    upper = binomtest(promoted, decisions).proportion_ci(confidence_level=0.90).high  # one-sided 95 %
    print(f"false promotions: {promoted} of {decisions} (95% upper bound {upper:.3f})")
    assert decisions >= 500
    assert upper <= 0.05, f"{promoted} of {decisions} promoted; upper bound {upper:.3f}"


@pytest.mark.slow
def test_power_at_the_claimed_effect_is_at_least_80_percent() -> None:
    """A planted momentum signal that a logistic regression can learn, against a climatology
    champion: at a strength where the measured improvement is no larger than the effect the
    policy claims to detect, the gate promotes it in >= 80 % of 80 trials."""
    policy, verdicts = load_policy(PACKAGED_POLICY), []
    for seed in range(80):
        run = Seed.run(f"synthetic:{1000 + seed}:0.65", LOGREG)
        verdicts.append(decide(run.evaluation(LOGREG, CLIMATOLOGY), policy))
    improvement = sum(v.tests["challenger_vs_champion"].improvement for v in verdicts) / len(verdicts)
    rate = sum(v.passed for v in verdicts) / len(verdicts)
    print(f"power: {rate:.2f} at a mean improvement of {improvement:.4f} nats/day")
    assert improvement <= CLAIMED_DETECTABLE_EFFECT, "the planted effect is larger than the claim: test a weaker one"
    assert rate >= 0.80, f"promoted {rate:.0%} at {improvement:.4f} nats/day"
