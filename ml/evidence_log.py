"""The gate's evidence as a run shows it: summary lines, MLflow metrics, calibration, plots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from contract.evidence import Evaluation, paired_tests
from contract.significance import GateSpec
from ml.plots import _pyplot, _save

if TYPE_CHECKING:
    from ml.walkforward import Evidence

CALIBRATION_BINS = 10


def calibration_metrics(y: pd.Series | np.ndarray, p_up: pd.Series | np.ndarray,
                        bins: int = CALIBRATION_BINS) -> dict[str, float]:
    """Expected calibration error and Murphy's Brier decomposition (reliability - resolution + uncertainty).

    Equal-count bins of predicted P(up): ``ece`` is the row-weighted gap between mean forecast
    and observed up-rate; ``brier_reliability`` (lower is better) the calibration part of the
    Brier score, ``brier_resolution`` (higher is better) how much the forecasts sort days,
    ``brier_uncertainty`` what the outcomes alone cost (climatology's Brier).
    """
    yv, p = np.asarray(y, dtype=float), np.asarray(p_up, dtype=float)
    order = np.argsort(p, kind="stable")
    base = yv.mean()
    ece = reliability = resolution = 0.0
    for idx in np.array_split(order, min(bins, len(p))):
        if len(idx) == 0:
            continue
        weight, mean_p, rate = len(idx) / len(p), p[idx].mean(), yv[idx].mean()
        ece += weight * abs(mean_p - rate)
        reliability += weight * (mean_p - rate) ** 2
        resolution += weight * (rate - base) ** 2
    return {"ece": float(ece), "brier_reliability": float(reliability), "brier_resolution": float(resolution),
            "brier_uncertainty": float(base * (1 - base))}


def summary_lines(e: Evaluation, spec: GateSpec) -> list[str]:
    """What the gate will read, in words (printed by primer train and backtest)."""
    c = e.comparison
    if c is None:
        return []
    tests = paired_tests(e, spec)
    lines = [f"{e.eval_days} out-of-sample rows in {c.folds} folds of {c.fold_months} month(s), "
             f"{e.eval_start}..{e.eval_end}; {spec.test}, one-sided level {spec.level}, "
             f"minimum effect {spec.min_effect} nats/day"]
    names = {"challenger_vs_champion": f"challenger vs champion v{e.champion_version}",
             "challenger_vs_climatology": "challenger vs climatology",
             "champion_vs_climatology": "champion vs climatology"}
    for key, t in tests.items():
        lines.append(f"{names[key]}: log loss lower by {t.improvement:+.4f} nats/day "
                     f"(95% CI {t.ci_low:+.4f}..{t.ci_high:+.4f}, p = {t.p_value:.3f}, "
                     f"detectable >= {t.mde:.4f} at 80% power)")
    if c.disagreements is not None:
        lines.append(f"challenger and champion call a different direction on {c.disagreements} of {e.eval_days} rows")
    return lines


def evidence_metrics(e: Evaluation, spec: GateSpec) -> dict[str, float]:
    """The paired tests as MLflow metrics (``<test>_improvement``, ``_p_value``, ``_ci_low`` ...)."""
    out: dict[str, float] = {"comparison_rows": float(e.eval_days)}
    if e.comparison is None:
        return out
    out["comparison_folds"] = float(e.comparison.folds)
    if e.comparison.disagreements is not None:
        out["disagreements"] = float(e.comparison.disagreements)
    for key, t in paired_tests(e, spec).items():
        for field in ("improvement", "p_value", "ci_low", "ci_high", "bound", "mde"):
            out[f"{key}_{field}"] = float(getattr(t, field))
    return out


def save_evidence_plots(e: Evaluation, evidence: Evidence, out_dir: Path) -> list[Path]:
    """reliability.png (every forecaster on the comparison rows) and cumulative_loss.png."""
    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    y = evidence.regions.y
    series = {f"challenger {evidence.challenger.recipe.name}": evidence.challenger.p_up,
              "climatology": evidence.climatology.p_up}
    if evidence.champion_p is not None:
        series[f"champion v{e.champion_version}"] = evidence.champion_p
    fig, ax = plt.subplots(figsize=(5, 5), dpi=80)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for name, p in series.items():
        order = np.argsort(p.to_numpy(), kind="stable")
        parts = [i for i in np.array_split(order, CALIBRATION_BINS) if len(i)]
        ax.plot([p.to_numpy()[i].mean() for i in parts], [y.to_numpy()[i].mean() for i in parts], "o-", label=name)
    ax.set(xlabel="predicted P(up)", ylabel="observed up-rate", title="Reliability, walk-forward rows")
    ax.legend(loc="upper left", fontsize=8)
    paths = [_save(plt, fig, out_dir / "reliability.png")]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=80)
    c = e.comparison
    if c is not None:
        challenger = np.asarray(c.challenger_loss)
        ax.plot(y.index, np.cumsum(np.asarray(c.climatology_loss) - challenger), label="vs climatology")
        if c.champion_loss is not None:
            ax.plot(y.index, np.cumsum(np.asarray(c.champion_loss) - challenger), label="vs champion")
    ax.axhline(0, color="k", lw=1)
    ax.set(ylabel="cumulative log loss saved (nats)", title="Challenger's advantage over the comparison rows")
    ax.legend(loc="upper left", fontsize=8)
    paths.append(_save(plt, fig, out_dir / "cumulative_loss.png"))
    return paths
