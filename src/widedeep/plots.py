"""PNG plots of a run: loss and AUC per epoch, and a reliability (calibration) curve.

matplotlib is an optional extra (``widedeep[plot]``); without it the run still completes and
says that no plots were drawn.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from widedeep.metrics import Calibration


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn(
            "matplotlib is not installed (pip install 'widedeep[plot]'): no plots drawn",
            stacklevel=3,
        )
        return None
    return plt


def plot_history(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Training loss and validation metrics per epoch, side by side."""
    plt = _pyplot()
    if plt is None or not history:
        return None
    epochs = [row["epoch"] for row in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train loss")
    for key, label in (
        ("validation_logloss", "validation logloss"),
        ("validation_rmse", "validation RMSE"),
    ):
        if key in history[0]:
            left.plot(epochs, [row[key] for row in history], marker="o", label=label)
    left.set_xlabel("epoch")
    left.set_title("Loss")
    left.legend()
    for key, label in (("validation_auc", "validation AUC"), ("validation_mae", "validation MAE")):
        if key in history[0]:
            right.plot(epochs, [row[key] for row in history], marker="o", label=label)
    right.set_xlabel("epoch")
    right.set_title("Validation metric")
    right.legend()
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_reliability(
    calibration: Calibration, path: Path, title: str = "Reliability"
) -> Path | None:
    """Observed positive rate against mean predicted probability, per probability bin."""
    plt = _pyplot()
    if plt is None:
        return None
    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axis.plot(
        calibration.bin_mean_predicted,
        calibration.bin_observed_rate,
        marker="o",
        label=f"model (ECE {calibration.ece:.3f})",
    )
    axis.set_xlabel("mean predicted probability")
    axis.set_ylabel("observed positive rate")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="upper left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
