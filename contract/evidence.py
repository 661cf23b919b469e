"""The evaluation result the pipeline hands to the promotion step.

Defined here (not in ``ml``) because ``promotion`` consumes it and must not
import ``ml``. Plain frozen dataclasses: easy to build, compare and render.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from datetime import date
from typing import Any

from contract.significance import GateSpec, PairedTest, paired_test


@dataclass(frozen=True)
class Scores:
    """Classification metrics on one evaluation window (higher is better except losses)."""

    accuracy: float
    balanced_accuracy: float
    roc_auc: float | None  # None when the window holds a single class
    log_loss: float
    brier: float

    def get(self, metric: str) -> float | None:
        return asdict(self)[metric]


# Every metric name, in Scores' order: what the pipeline logs, the gate and the
# candidate grid may select by, the PR tables list and /model reports.
METRICS: tuple[str, ...] = tuple(f.name for f in fields(Scores))
# Metrics where lower is better; everything else is higher-is-better.
LOWER_IS_BETTER = frozenset({"log_loss", "brier"})


def improvement(a: float, b: float, metric: str) -> float:
    """How much ``a`` beats ``b`` on ``metric``: positive when ``a`` is better, whatever the direction."""
    return (b - a) if metric in LOWER_IS_BETTER else (a - b)


@dataclass(frozen=True)
class Comparison:
    """The walk-forward evidence: per-day log losses of each recipe on the same out-of-sample rows.

    Every fold refits each recipe on the rows before it; the rows are the same for all three.
    ``champion_loss`` is None when nothing is pinned (or the champion could not be scored);
    ``champion_refitted`` says whether the champion's recipe was refitted per fold (else its
    registered model was scored as it is, which may have seen some of these rows: optimistic).
    """

    folds: int
    fold_months: int
    challenger_recipe: str  # JSON: name, family, params
    challenger_loss: list[float]
    climatology_loss: list[float]
    champion_recipe: str | None = None
    champion_loss: list[float] | None = None
    champion_refitted: bool = True
    disagreements: int | None = None  # rows where challenger and champion call a different direction
    climatology: Scores | None = None
    selection_days: int = 0  # rows before these, where the challenger was chosen among the grid


@dataclass(frozen=True)
class Evaluation:
    """Challenger vs champion vs naive baselines on one forward window."""

    model_name: str
    challenger_version: int
    challenger_run_id: str
    challenger_candidate: str  # e.g. "rf_depth5"
    parent_run_id: str
    experiment_id: str
    tracking_uri: str
    eval_start: date
    eval_end: date
    eval_days: int
    challenger: Scores
    data_source: str
    baselines: dict[str, Scores] = field(default_factory=dict)
    champion_version: int | None = None
    champion: Scores | None = None
    comparison: Comparison | None = None  # None in evaluation.json files older than the walk-forward gate

    def best_baseline(self, metric: str) -> tuple[str, float] | None:
        """The naive baseline that scores best on ``metric``."""
        scored: list[tuple[str, float]] = []
        for name, s in self.baselines.items():
            value = s.get(metric)
            if value is not None:
                scored.append((name, value))
        if not scored:
            return None
        pick = min if metric in LOWER_IS_BETTER else max
        return pick(scored, key=lambda nv: nv[1])


# The one serialisation of an Evaluation: logged as ``evaluation.json`` on the pipeline's
# parent run, read back by the promotion step to retry a failed proposal.
def evaluation_to_dict(e: Evaluation) -> dict[str, Any]:
    return dict(json.loads(json.dumps(asdict(e), default=str)))


def evaluation_from_dict(d: dict[str, Any]) -> Evaluation:
    d = dict(d)
    d["eval_start"], d["eval_end"] = date.fromisoformat(d["eval_start"]), date.fromisoformat(d["eval_end"])
    d["challenger"] = Scores(**d["challenger"])
    d["champion"] = Scores(**d["champion"]) if d.get("champion") else None
    d["baselines"] = {k: Scores(**s) for k, s in (d.get("baselines") or {}).items()}
    if d.get("comparison"):
        c = dict(d["comparison"])
        c["climatology"] = Scores(**c["climatology"]) if c.get("climatology") else None
        d["comparison"] = Comparison(**c)
    return Evaluation(**d)


def paired_tests(e: Evaluation, spec: GateSpec) -> dict[str, PairedTest]:
    """The paired tests on the comparison rows, under ``spec``'s test and level.

    ``challenger_vs_champion``, ``challenger_vs_climatology`` and ``champion_vs_climatology``
    (each: the first one's improvement over the second); empty for an evaluation from before
    the walk-forward gate, and without the champion's entries when it was not scored.
    """
    c = e.comparison
    if c is None:
        return {}

    def run(a: list[float], b: list[float]) -> PairedTest:
        return paired_test(a, b, level=spec.level, test=spec.test)

    out = {"challenger_vs_climatology": run(c.challenger_loss, c.climatology_loss)}
    if c.champion_loss is not None:
        out["challenger_vs_champion"] = run(c.challenger_loss, c.champion_loss)
        out["champion_vs_climatology"] = run(c.champion_loss, c.climatology_loss)
    return out
