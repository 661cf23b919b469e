"""Evaluation plots as PNG files: confusion matrix, ROC curve, calibration curve.

Uses matplotlib's Agg backend (no display needed: CronJobs and CI have none).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_plots(
    y_true: pd.Series | np.ndarray, p_up: pd.Series | np.ndarray, out_dir: Path, title: str = ""
) -> list[Path]:
    """Write confusion_matrix.png, roc_curve.png and calibration.png into ``out_dir``."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

    plt = _pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(p_up, dtype=float)
    paths: list[Path] = []

    fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
    ConfusionMatrixDisplay.from_predictions(
        y, (p >= 0.5).astype(int), labels=[0, 1], display_labels=["DOWN", "UP"], ax=ax, colorbar=False
    )
    ax.set_title(f"Confusion matrix {title}".strip())
    paths.append(_save(plt, fig, out_dir / "confusion_matrix.png"))

    fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
    if len(np.unique(y)) > 1:
        RocCurveDisplay.from_predictions(y, p, ax=ax, name="model")
    else:
        ax.text(0.5, 0.5, "one class only: no ROC", ha="center")
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set_title(f"ROC {title}".strip())
    paths.append(_save(plt, fig, out_dir / "roc_curve.png"))

    fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
    frac, mean_p = calibration_curve(y, p, n_bins=5, strategy="quantile") if len(np.unique(p)) > 1 else ([], [])
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    ax.plot(mean_p, frac, "o-", label="model")
    ax.set_xlabel("predicted P(up)")
    ax.set_ylabel("observed up-rate")
    ax.legend(loc="upper left")
    ax.set_title(f"Calibration {title}".strip())
    paths.append(_save(plt, fig, out_dir / "calibration.png"))
    return paths


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
