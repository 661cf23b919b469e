"""Replay the promotion loop over history in one process: what would this policy have served?

At each anchor (every ``every`` trading days from ``start`` to ``end``) the run does what
``primer train`` does, without MLflow: choose a recipe on the selection folds, compare it
walk-forward with the champion's recipe and climatology, refit it up to the anchor. The
gate handed in (``decide``: the policy's own function) rules on that evidence, and a
reviewer merges every proposal, so a passing challenger serves from the anchor on.

The served track record is scored on the days each model actually served (from its
anchor to the next), against three other ways of running the loop:
``every_challenger`` (deploy every challenger unchecked), ``never_repromote`` (the first
pin forever) and ``climatology`` (the up-rate, refitted at each anchor).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from contract.evidence import Evaluation, Scores, paired_tests
from contract.names import MODEL_NAME
from contract.significance import GateSpec
from ml import walkforward
from ml.evaluate import score
from ml.features import FEATURE_COLUMNS, LABEL, build_features, labeled
from ml.folds import FoldRunner, log_losses
from ml.train import Candidate, Grid, predict_up

TRACKS = ("gate", "every_challenger", "never_repromote", "climatology")


@dataclass(frozen=True)
class Decision:
    anchor: date
    challenger: str
    champion: str | None
    promoted: bool
    reasons: list[str]
    tests: dict[str, dict[str, float]]
    disagreements: int | None
    rows: int


@dataclass
class Report:
    source: str
    start: date
    end: date
    every: int
    spec: GateSpec
    decisions: list[Decision] = field(default_factory=list)
    served: dict[str, Scores] = field(default_factory=dict)  # track -> scores on the served days
    served_days: int = 0
    timeline: list[tuple[date, str]] = field(default_factory=list)  # (anchor, what the gate serves from then)
    cumulative: dict[str, list[float]] = field(default_factory=dict)  # track -> cumulative log loss vs climatology
    served_dates: list[date] = field(default_factory=list)

    @property
    def promotions(self) -> int:
        return sum(d.promoted for d in self.decisions)


Decide = Callable[[Evaluation], Any]  # returns a Verdict-like object: .passed, .reasons


def anchors_between(dates: pd.Series, start: date, end: date, every: int) -> list[date]:
    """Every ``every``-th trading day in the data from ``start`` to ``end``."""
    days = [d.date() for d in pd.to_datetime(dates) if start <= d.date() <= end]
    return days[::every]


def _evaluation(evidence: walkforward.Evidence, grid: Grid, champion: int | None, version: int,
                source: str) -> Evaluation:
    y = evidence.regions.y
    return Evaluation(
        model_name=MODEL_NAME, challenger_version=version, challenger_run_id="", challenger_candidate=
        evidence.challenger.recipe.name, parent_run_id="", experiment_id="", tracking_uri="",
        eval_start=y.index[0].date(), eval_end=y.index[-1].date(), eval_days=len(y),
        challenger=score(y, evidence.challenger.p_up), data_source=source, baselines={},
        champion_version=champion, champion=None if evidence.champion_p is None else score(y, evidence.champion_p),
        comparison=walkforward.comparison(evidence, grid))


@dataclass
class _State:
    """What serves, per track, and the models' forecasts on their served days."""

    champion: Candidate | None = None
    champion_version: int | None = None
    models: dict[str, Any] = field(default_factory=dict)
    p_up: dict[str, list[np.ndarray]] = field(default_factory=lambda: {t: [] for t in TRACKS})


def _step(runner: FoldRunner, grid: Grid, rows: pd.DataFrame, state: _State, *, eval_days: int,
          train_rows: int, spec: GateSpec, decide: Decide, version: int, source: str) -> Decision:
    """One anchor: evidence, the gate's verdict, and what each track serves from here."""
    regions = walkforward.plan_regions(rows, eval_days=eval_days, grid=grid, train_rows=train_rows)
    evidence = walkforward.gather(runner, grid, regions, champion_recipe=state.champion,
                                  bootstrap=state.champion is None, spec=spec)
    evaluation = _evaluation(evidence, grid, state.champion_version, version, source)
    verdict = decide(evaluation)
    challenger = evidence.challenger.recipe
    model = walkforward.refit_to_anchor(challenger, rows, train_rows)
    if verdict.passed:  # the reviewer merges: it serves from this anchor on
        state.champion, state.champion_version, state.models["gate"] = challenger, version, model
    state.models["every_challenger"] = model
    state.models.setdefault("never_repromote", state.models.get("gate", model))
    state.models["climatology"] = walkforward.refit_to_anchor(walkforward.CLIMATOLOGY, rows, train_rows)
    state.models.setdefault("gate", state.models["never_repromote"])
    tests = {k: {"improvement": t.improvement, "ci_low": t.ci_low, "ci_high": t.ci_high, "p_value": t.p_value,
                 "mde": t.mde} for k, t in paired_tests(evaluation, spec).items()}
    return Decision(rows.index[-1].date(), challenger.name, None if evidence.champion_recipe is None else
                    evidence.champion_recipe.name, bool(verdict.passed), list(verdict.reasons), tests,
                    evaluation.comparison.disagreements if evaluation.comparison else None, evaluation.eval_days)


def run_backtest(prices: pd.DataFrame, grid: Grid, *, source: str, start: date, end: date, every: int,
                 eval_days: int, train_rows: int, spec: GateSpec, decide: Decide, cache_dir: Path | None,
                 echo: Callable[[str], None] = print) -> Report:
    """Replay the loop; see the module docstring. ``prices`` may run past ``end`` (labels of the last days)."""
    features = build_features(prices)
    anchors = anchors_between(prices["date"], start, end, every)
    if not anchors:
        raise ValueError(f"no trading day in the data between {start} and {end}")
    runner, state, report = FoldRunner(cache_dir), _State(), Report(source, start, end, every, spec)
    served_y: list[np.ndarray] = []
    for i, anchor in enumerate(anchors):
        visible = labeled(features.loc[:pd.Timestamp(anchor)])  # the anchor's own row has no label yet
        decision = _step(runner, grid, visible, state, eval_days=eval_days, train_rows=train_rows, spec=spec,
                         decide=decide, version=i + 1, source=source)
        report.decisions.append(decision)
        report.timeline.append((anchor, state.champion.name if state.champion else "?"))
        echo(f"[backtest] {anchor} challenger {decision.challenger:<16} champion "
             f"{decision.champion or 'none':<16} {'PROMOTED' if decision.promoted else 'kept'}")
        first = int(features.index.searchsorted(pd.Timestamp(anchor)))
        block = features.iloc[first:first + every].dropna(subset=[LABEL])  # served until the next anchor
        if len(block):
            served_y.append(block[LABEL].to_numpy(dtype=int))
            report.served_dates += [d.date() for d in block.index]
            for track in TRACKS:
                state.p_up[track].append(predict_up(state.models[track], block[list(FEATURE_COLUMNS)]).to_numpy())
    _score_tracks(report, state, served_y)
    return report


def _score_tracks(report: Report, state: _State, served_y: list[np.ndarray]) -> None:
    if not served_y:
        return
    y = np.concatenate(served_y)
    report.served_days = len(y)
    climatology = log_losses(y, np.concatenate(state.p_up["climatology"]))
    for track in TRACKS:
        p = np.concatenate(state.p_up[track])
        report.served[track] = score(y, p)
        report.cumulative[track] = np.cumsum(climatology - log_losses(y, p)).tolist()


def save_report(report: Report, out_dir: Path) -> list[Path]:
    """report.md, report.json and champion_timeline.png in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js, png = out_dir / "report.md", out_dir / "report.json", out_dir / "champion_timeline.png"
    md.write_text(report_markdown(report))
    js.write_text(json.dumps(asdict(report), default=str, indent=1))
    _timeline_png(report, png)
    return [md, js, png]


def report_markdown(r: Report) -> str:
    out = [f"# Backtest of the promotion gate: {r.source}, {r.start} → {r.end}, every {r.every} trading days", "",
           f"Gate: `{r.spec.test}`, one-sided level {r.spec.level}, min_effect {r.spec.min_effect} nats/day. "
           f"{len(r.decisions)} decisions, {r.promotions} promotions (a reviewer merged every proposal).", "",
           f"## Served track record ({r.served_days} days, each model scored on the days it served)", "",
           "| track | log loss | accuracy | balanced accuracy | log loss saved vs climatology (nats) |",
           "|---|---|---|---|---|"]
    for track, s in r.served.items():
        saved = r.cumulative[track][-1] if r.cumulative.get(track) else 0.0
        out.append(f"| {track} | {s.log_loss:.4f} | {s.accuracy:.3f} | {s.balanced_accuracy:.3f} | {saved:+.2f} |")
    out += ["", "## Decisions", "", "| anchor | challenger | champion | promoted | vs champion (nats/day, 95% CI, p) "
            "| vs climatology | disagree |", "|---|---|---|---|---|---|---|"]
    for d in r.decisions:
        cells = []
        for key in ("challenger_vs_champion", "challenger_vs_climatology"):
            t = d.tests.get(key)
            cells.append("—" if t is None else f"{t['improvement']:+.4f} ({t['ci_low']:+.4f}..{t['ci_high']:+.4f}), "
                                               f"p {t['p_value']:.3f}")
        out.append(f"| {d.anchor} | {d.challenger} | {d.champion or '—'} | {'**yes**' if d.promoted else 'no'} | "
                   f"{cells[0]} | {cells[1]} | {'—' if d.disagreements is None else d.disagreements}/{d.rows} |")
    return "\n".join(out) + "\n"


def _timeline_png(r: Report, path: Path) -> None:
    from ml.plots import _pyplot, _save

    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), dpi=80, sharex=True, height_ratios=[1, 2])
    names = sorted({name for _, name in r.timeline})
    top.step([a for a, _ in r.timeline], [names.index(n) for _, n in r.timeline], where="post")
    top.set_yticks(range(len(names)), names)
    top.set_title("What the gate serves (champion recipe at each anchor)")
    for track, values in r.cumulative.items():
        bottom.plot(r.served_dates, values, label=track)
    bottom.axhline(0, color="k", lw=1)
    bottom.set_ylabel("log loss saved vs climatology (nats)")
    bottom.legend(loc="upper left", fontsize=8)
    _save(plt, fig, path)
