"""widedeep.metrics checked against scikit-learn on seeded random data and small hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    mean_absolute_error,
    mean_squared_error,
    roc_auc_score,
)
from sklearn.metrics import log_loss as sk_log_loss

from widedeep.errors import ConfigError
from widedeep.metrics import (
    Calibration,
    accuracy,
    auc,
    binary_report,
    calibration,
    log_loss,
    mae,
    regression_report,
    rmse,
)

SEEDS = [0, 1, 2, 3, 4]


def _binary_data(
    seed: int, n: int = 1000, decimals: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels with a skewed base rate and probabilities loosely tied to them."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    logits = rng.normal(size=n) + 1.5 * labels - 1.0
    probs = 1.0 / (1.0 + np.exp(-logits))
    if decimals is not None:
        probs = np.round(probs, decimals)
    return labels, probs


# --- auc ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_auc_matches_sklearn(seed: int) -> None:
    labels, probs = _binary_data(seed)
    assert auc(labels, probs) == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("decimals", [0, 1, 2])
def test_auc_matches_sklearn_with_heavy_ties(seed: int, decimals: int) -> None:
    labels, probs = _binary_data(seed, n=5000, decimals=decimals)
    assert len(np.unique(probs)) <= 10**decimals + 1
    assert auc(labels, probs) == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)


def test_auc_matches_sklearn_on_unbounded_scores_with_ties() -> None:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, size=20_000)
    scores = rng.integers(-5, 6, size=20_000) * 3.5 + labels
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_hand_cases() -> None:
    labels = [0, 0, 1, 1]
    assert auc(labels, [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert auc(labels, [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert auc(labels, [0.4, 0.4, 0.4, 0.4]) == 0.5
    # Positive 0.5 beats 0.1 and ties 0.5 (counts half); positive 0.9 beats both: 3.5 / 4.
    assert auc([0, 1, 0, 1], [0.1, 0.5, 0.5, 0.9]) == 0.875


def test_auc_accepts_booleans_and_a_single_column() -> None:
    labels, probs = _binary_data(11, n=200)
    expected = roc_auc_score(labels, probs)
    assert auc(labels.astype(bool), probs[:, None]) == pytest.approx(expected, abs=1e-12)


# --- log_loss, accuracy ------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_log_loss_matches_sklearn(seed: int) -> None:
    labels, probs = _binary_data(seed)
    expected = sk_log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1])
    assert log_loss(labels, probs) == pytest.approx(expected, rel=1e-12)


def test_log_loss_clips_certain_mistakes() -> None:
    eps = 1e-3
    got = log_loss([1, 0], [0.0, 1.0], eps=eps)
    assert got == pytest.approx(-math.log(eps), rel=1e-12)
    assert log_loss([1, 0], [1.0, 0.0], eps=eps) == pytest.approx(-math.log(1 - eps), rel=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_accuracy_matches_sklearn(seed: int, threshold: float) -> None:
    labels, probs = _binary_data(seed, decimals=1)
    expected = accuracy_score(labels, (probs >= threshold).astype(int))
    assert accuracy(labels, probs, threshold=threshold) == pytest.approx(expected, abs=1e-15)


def test_accuracy_counts_the_threshold_as_positive() -> None:
    assert accuracy([1, 0, 0, 1], [0.5, 0.49, 0.2, 0.51]) == 1.0


# --- calibration -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_bins", [1, 5, 10, 20])
@pytest.mark.parametrize("decimals", [None, 1])
def test_calibration_matches_sklearn(seed: int, n_bins: int, decimals: int | None) -> None:
    labels, probs = _binary_data(seed, decimals=decimals)
    probs[:3] = [0.0, 1.0, 0.5]  # the ends of [0, 1] and an interior bin edge
    prob_true, prob_pred = calibration_curve(labels, probs, n_bins=n_bins, strategy="uniform")
    got = calibration(labels, probs, n_bins=n_bins)
    np.testing.assert_allclose(got.bin_observed_rate, prob_true, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.bin_mean_predicted, prob_pred, rtol=0, atol=1e-12)
    assert got.bin_count.sum() == len(labels)
    assert np.all(got.bin_count > 0)
    expected_ece = np.sum(got.bin_count * np.abs(prob_pred - prob_true)) / len(labels)
    assert got.ece == pytest.approx(expected_ece, abs=1e-12)
    assert got.mean_predicted == pytest.approx(probs.mean(), abs=1e-12)
    assert got.observed_rate == pytest.approx(labels.mean(), abs=1e-12)


def test_calibration_hand_case() -> None:
    # Two bins: [0, 0.5] holds 0.2, 0.4 (mean 0.3, observed 0.5, gap 0.2);
    # (0.5, 1] holds 0.6, 0.9 (mean 0.75, observed 0.5, gap 0.25). ECE = (2*0.2 + 2*0.25) / 4.
    got = calibration([0, 1, 0, 1], [0.2, 0.4, 0.6, 0.9], n_bins=2)
    assert isinstance(got, Calibration)
    assert got.ece == pytest.approx(0.225, abs=1e-12)
    assert got.mean_predicted == pytest.approx(0.525, abs=1e-12)
    assert got.observed_rate == 0.5
    np.testing.assert_allclose(got.bin_mean_predicted, [0.3, 0.75], atol=1e-12)
    np.testing.assert_allclose(got.bin_observed_rate, [0.5, 0.5], atol=1e-12)
    np.testing.assert_array_equal(got.bin_count, [2, 2])


def test_calibration_skips_empty_bins_and_puts_one_in_the_last_bin() -> None:
    got = calibration([0, 1, 1], [0.05, 1.0, 1.0], n_bins=10)
    np.testing.assert_array_equal(got.bin_count, [1, 2])
    np.testing.assert_allclose(got.bin_mean_predicted, [0.05, 1.0])
    np.testing.assert_allclose(got.bin_observed_rate, [0.0, 1.0])
    assert got.ece == pytest.approx(0.05 / 3, abs=1e-12)


# --- regression --------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_rmse_and_mae_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.normal(3.0, 2.0, size=1000)
    predictions = targets + rng.standard_t(3, size=1000)
    expected_rmse = math.sqrt(mean_squared_error(targets, predictions))
    expected_mae = mean_absolute_error(targets, predictions)
    assert rmse(targets, predictions) == pytest.approx(expected_rmse, rel=1e-12)
    assert mae(targets, predictions) == pytest.approx(expected_mae, rel=1e-12)
    assert regression_report(targets, predictions) == pytest.approx(
        {"rmse": expected_rmse, "mae": expected_mae}, rel=1e-12
    )


def test_rmse_and_mae_hand_case() -> None:
    assert rmse([0.0, 0.0], [3.0, -4.0]) == pytest.approx(math.sqrt(12.5))
    assert mae([0.0, 0.0], [3.0, -4.0]) == 3.5


# --- reports -----------------------------------------------------------------------------------


def test_binary_report_agrees_with_the_single_metrics() -> None:
    labels, probs = _binary_data(5)
    report = binary_report(labels, probs)
    cal = calibration(labels, probs)
    assert report == {
        "auc": auc(labels, probs),
        "logloss": log_loss(labels, probs),
        "accuracy": accuracy(labels, probs),
        "ece": cal.ece,
        "mean_predicted": cal.mean_predicted,
        "observed_rate": cal.observed_rate,
    }


def test_binary_report_gives_nan_auc_for_a_single_class() -> None:
    report = binary_report([1, 1, 1], [0.9, 0.8, 0.4])
    assert math.isnan(report["auc"])
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["observed_rate"] == 1.0


# --- errors ------------------------------------------------------------------------------------


def test_length_mismatch_is_reported_with_both_lengths() -> None:
    with pytest.raises(
        ConfigError, match=r"^auc: labels and predictions differ in length \(10 vs 9\)$"
    ):
        auc([0, 1] * 5, [0.5] * 9)
    with pytest.raises(ConfigError, match=r"rmse: targets and predictions differ .*\(3 vs 2\)"):
        rmse([1.0, 2.0, 3.0], [1.0, 2.0])


def test_auc_needs_both_classes() -> None:
    with pytest.raises(ConfigError, match="auc needs both classes in the labels, got only 1"):
        auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match="got only 0"):
        auc([0, 0], [0.1, 0.2])


@pytest.mark.parametrize(
    ("metric", "bad"),
    [("auc", math.nan), ("log_loss", math.inf), ("accuracy", -math.inf), ("calibration", math.nan)],
)
def test_non_finite_predictions_name_the_metric_and_first_index(metric: str, bad: float) -> None:
    fn = {"auc": auc, "log_loss": log_loss, "accuracy": accuracy, "calibration": calibration}[
        metric
    ]
    probs = [0.1, 0.2, 0.3, bad, 0.5, bad]
    with pytest.raises(ConfigError, match=rf"^{metric}: predictions must be finite, .* at index 3"):
        fn([0, 1, 0, 1, 0, 1], probs)


def test_non_finite_regression_values_are_reported() -> None:
    with pytest.raises(ConfigError, match=r"mae: predictions must be finite, got nan at index 1"):
        mae([1.0, 2.0], [1.0, math.nan])
    with pytest.raises(ConfigError, match=r"rmse: targets must be finite, got inf at index 0"):
        rmse([math.inf, 2.0], [1.0, 2.0])


def test_labels_must_be_zero_or_one() -> None:
    with pytest.raises(ConfigError, match=r"log_loss: labels must be 0 or 1, got 2.0 at index 2"):
        log_loss([0, 1, 2], [0.1, 0.2, 0.3])


def test_probabilities_must_lie_in_the_unit_interval() -> None:
    with pytest.raises(ConfigError, match=r"calibration: predictions must be probabilities .*1.5"):
        calibration([0, 1], [0.2, 1.5])
    assert auc([0, 1], [-3.0, 7.0]) == 1.0  # auc takes any finite scores


def test_shapes_and_sizes_are_checked() -> None:
    with pytest.raises(ConfigError, match=r"auc: predictions must be 1-D .*\(2, 2\)"):
        auc([0, 1], [[0.1, 0.2], [0.3, 0.4]])
    with pytest.raises(ConfigError, match="needs at least one row"):
        mae([], [])
    with pytest.raises(ConfigError, match="must be numbers"):
        rmse(["a", "b"], [1.0, 2.0])


def test_arguments_are_checked() -> None:
    with pytest.raises(ConfigError, match="n_bins must be a positive integer, got 0"):
        calibration([0, 1], [0.2, 0.8], n_bins=0)
    with pytest.raises(ConfigError, match="eps must be in"):
        log_loss([0, 1], [0.2, 0.8], eps=0.0)
    with pytest.raises(ConfigError, match="threshold must be a finite number"):
        accuracy([0, 1], [0.2, 0.8], threshold=math.nan)
