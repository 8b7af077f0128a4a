"""Evaluation metrics: pure, vectorized numpy functions over labels and predictions.

Binary metrics take ``labels`` (0/1, or booleans) and ``probs`` (probabilities in [0, 1]; ``auc``
accepts any finite ``scores``). Regression metrics take ``targets`` and ``predictions``. Inputs
are 1-D array-likes (a single column is accepted too); a mismatch, a NaN or an out-of-range value
raises :class:`~widedeep.errors.ConfigError` naming the metric and the first bad index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from widedeep.errors import ConfigError

__all__ = [
    "Calibration",
    "accuracy",
    "auc",
    "binary_report",
    "calibration",
    "log_loss",
    "mae",
    "regression_report",
    "rmse",
]


@dataclass(frozen=True, eq=False)
class Calibration:
    """How well predicted probabilities match observed rates, overall and per probability bin.

    The ``bin_*`` arrays cover non-empty bins only, in increasing order: a reliability plot draws
    ``bin_observed_rate`` against ``bin_mean_predicted``.
    """

    mean_predicted: float
    observed_rate: float
    ece: float
    bin_mean_predicted: NDArray[np.float64]
    bin_observed_rate: NDArray[np.float64]
    bin_count: NDArray[np.int64]


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve, by the Mann–Whitney rank formula with average ranks for ties.

    Equals the probability that a random positive outscores a random negative (ties count half).
    """
    y, s = _binary_inputs("auc", labels, scores, probabilities=False)
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.size:
        raise ConfigError(
            f"auc needs both classes in the labels, got only {int(y[0])} ({y.size} rows)"
        )
    return _auc(y, s, n_pos)


def log_loss(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, with ``probs`` clipped to [eps, 1 - eps] so it stays finite."""
    if not 0.0 < eps < 0.5:
        raise ConfigError(f"log_loss: eps must be in (0, 0.5), got {eps!r}")
    y, p = _binary_inputs("log_loss", labels, probs)
    return _log_loss(y, p, eps)


def accuracy(labels: ArrayLike, probs: ArrayLike, threshold: float = 0.5) -> float:
    """Fraction of rows whose thresholded prediction (prob >= threshold is 1) equals the label."""
    if not np.isfinite(threshold):
        raise ConfigError(f"accuracy: threshold must be a finite number, got {threshold!r}")
    y, p = _binary_inputs("accuracy", labels, probs)
    return _accuracy(y, p, threshold)


def calibration(labels: ArrayLike, probs: ArrayLike, n_bins: int = 10) -> Calibration:
    """Reliability of probabilities over ``n_bins`` equal-width bins on [0, 1], with the ECE.

    Bins follow scikit-learn's ``calibration_curve(strategy="uniform")``: bin k holds
    (k/n, (k+1)/n], the first also holds 0.0. ECE is the count-weighted mean |predicted - observed|.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ConfigError(f"calibration: n_bins must be a positive integer, got {n_bins!r}")
    y, p = _binary_inputs("calibration", labels, probs)
    return _calibration(y, p, int(n_bins))


def rmse(targets: ArrayLike, predictions: ArrayLike) -> float:
    """Root mean squared error: the typical error size, weighting large misses more."""
    t, p = _regression_inputs("rmse", targets, predictions)
    return float(np.sqrt(np.mean((t - p) ** 2)))


def mae(targets: ArrayLike, predictions: ArrayLike) -> float:
    """Mean absolute error: the average error size, robust to a few large misses."""
    t, p = _regression_inputs("mae", targets, predictions)
    return float(np.mean(np.abs(t - p)))


def binary_report(labels: ArrayLike, probs: ArrayLike) -> dict[str, float]:
    """The binary metrics a validation pass logs; ``auc`` is NaN when only one class is present."""
    y, p = _binary_inputs("binary_report", labels, probs)
    n_pos = int(np.count_nonzero(y))
    cal = _calibration(y, p, 10)
    return {
        "auc": _auc(y, p, n_pos) if 0 < n_pos < y.size else float("nan"),
        "logloss": _log_loss(y, p, 1e-7),
        "accuracy": _accuracy(y, p, 0.5),
        "ece": cal.ece,
        "mean_predicted": cal.mean_predicted,
        "observed_rate": cal.observed_rate,
    }


def regression_report(targets: ArrayLike, predictions: ArrayLike) -> dict[str, float]:
    """The regression metrics a validation pass logs."""
    return {"rmse": rmse(targets, predictions), "mae": mae(targets, predictions)}


# --- implementations on validated float64 arrays ---------------------------------------------


def _auc(y: NDArray[np.float64], s: NDArray[np.float64], n_pos: int) -> float:
    """Mann–Whitney U / (n_pos * n_neg), with ranks doubled so every sum is an exact integer."""
    n = s.size
    order = np.argsort(s, kind="mergesort")
    sorted_scores = s[order]
    is_start = np.empty(n, dtype=bool)
    is_start[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=is_start[1:])
    starts = np.flatnonzero(is_start)
    ends = np.append(starts[1:], n) - 1
    # A tie group at sorted positions i..j shares the rank (i + j) / 2 + 1; keep 2 * rank.
    twice_rank = (starts + ends + 2)[np.cumsum(is_start) - 1]
    twice_rank_sum = int(twice_rank[y[order] == 1.0].sum())
    twice_u = twice_rank_sum - n_pos * (n_pos + 1)
    return twice_u / (2 * n_pos * (n - n_pos))


def _log_loss(y: NDArray[np.float64], p: NDArray[np.float64], eps: float) -> float:
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def _accuracy(y: NDArray[np.float64], p: NDArray[np.float64], threshold: float) -> float:
    return float(np.mean((p >= threshold) == (y == 1.0)))


def _calibration(y: NDArray[np.float64], p: NDArray[np.float64], n_bins: int) -> Calibration:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_ids = np.searchsorted(edges[1:-1], p)
    count = np.bincount(bin_ids, minlength=n_bins)
    prob_sum = np.bincount(bin_ids, weights=p, minlength=n_bins)
    pos_sum = np.bincount(bin_ids, weights=y, minlength=n_bins)
    nonzero = count != 0
    bin_count = count[nonzero].astype(np.int64)
    bin_mean_predicted = prob_sum[nonzero] / bin_count
    bin_observed_rate = pos_sum[nonzero] / bin_count
    gaps = np.abs(bin_mean_predicted - bin_observed_rate)
    return Calibration(
        mean_predicted=float(np.mean(p)),
        observed_rate=float(np.mean(y)),
        ece=float(np.sum(bin_count * gaps) / y.size),
        bin_mean_predicted=bin_mean_predicted,
        bin_observed_rate=bin_observed_rate,
        bin_count=bin_count,
    )


# --- input validation ------------------------------------------------------------------------


def _as_vector(metric: str, what: str, values: ArrayLike) -> NDArray[np.float64]:
    """``values`` as a 1-D float64 array (a single column is flattened), or a ConfigError."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{metric}: {what} must be numbers, could not convert them ({exc})"
        ) from exc
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ConfigError(
            f"{metric}: {what} must be 1-D (or a single column), got shape {array.shape}"
        )
    return array


def _paired(
    metric: str, first: str, a: ArrayLike, second: str, b: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Both inputs as vectors of one non-zero length, each checked finite."""
    x = _as_vector(metric, first, a)
    z = _as_vector(metric, second, b)
    if x.size != z.size:
        raise ConfigError(f"{metric}: {first} and {second} differ in length ({x.size} vs {z.size})")
    if x.size == 0:
        raise ConfigError(f"{metric}: needs at least one row, got empty {first} and {second}")
    for name, array in ((first, x), (second, z)):
        bad = np.flatnonzero(~np.isfinite(array))
        if bad.size:
            i = int(bad[0])
            raise ConfigError(
                f"{metric}: {name} must be finite, got {array[i]} at index {i}"
                f" ({bad.size} bad values)"
            )
    return x, z


def _binary_inputs(
    metric: str, labels: ArrayLike, probs: ArrayLike, *, probabilities: bool = True
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Labels checked to be 0/1; with ``probabilities``, predictions checked to lie in [0, 1]."""
    y, p = _paired(metric, "labels", labels, "predictions", probs)
    bad = np.flatnonzero((y != 0.0) & (y != 1.0))
    if bad.size:
        i = int(bad[0])
        raise ConfigError(f"{metric}: labels must be 0 or 1, got {y[i]} at index {i}")
    if probabilities:
        bad = np.flatnonzero((p < 0.0) | (p > 1.0))
        if bad.size:
            i = int(bad[0])
            raise ConfigError(
                f"{metric}: predictions must be probabilities in [0, 1], got {p[i]} at index {i}"
            )
    return y, p


def _regression_inputs(
    metric: str, targets: ArrayLike, predictions: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Targets and predictions as finite float64 vectors of one length."""
    return _paired(metric, "targets", targets, "predictions", predictions)
