"""avcd.evaluation.metrics against scikit-learn, on scores with many ties."""

import math

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from avcd.evaluation import metrics

SEEDS = (0, 1, 2, 3)


def tied_split(seed: int, num_clips: int = 400, separation: float = 0.8):
  """Random labels; scores and probabilities rounded to one decimal, so many clips tie."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, num_clips)
  scores = np.round(rng.normal(size=num_clips) + separation * labels, 1)
  probabilities = np.round(1 / (1 + np.exp(-scores)), 1)  # some sit exactly on 0.5
  return labels, scores, probabilities


def reference_eer(labels, scores) -> float:
  """Where FNR - FPR reaches 0 on sklearn's ROC, linearly interpolated (it falls strictly)."""
  false_positive_rate, true_positive_rate, _ = sk_metrics.roc_curve(labels, scores)
  gap = 1 - true_positive_rate - false_positive_rate
  return float(np.interp(0.0, gap[::-1], false_positive_rate[::-1]))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("threshold", (0.5, 0.3))
def test_clip_metrics_equal_sklearn(seed, threshold):
  labels, scores, probabilities = tied_split(seed)
  assert np.unique(scores).size < labels.size / 4  # the ties are really there
  result = metrics.clip_metrics(labels, scores, probabilities, threshold=threshold)
  predicted = (probabilities >= threshold).astype(int)
  tn, fp, fn, tp = sk_metrics.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
  assert (result["tn"], result["fp"], result["fn"], result["tp"]) == (tn, fp, fn, tp)
  assert result["auc"] == sk_metrics.roc_auc_score(labels, scores)
  assert result["ap"] == sk_metrics.average_precision_score(labels, scores)
  assert result["acc"] == pytest.approx(sk_metrics.accuracy_score(labels, predicted), abs=1e-15)
  assert result["bacc"] == pytest.approx(
    sk_metrics.balanced_accuracy_score(labels, predicted), abs=1e-15
  )
  assert result["f1"] == pytest.approx(sk_metrics.f1_score(labels, predicted), abs=1e-15)
  assert result["fake_recall"] == pytest.approx(sk_metrics.recall_score(labels, predicted))
  assert result["real_recall"] == pytest.approx(
    sk_metrics.recall_score(labels, predicted, pos_label=0)
  )
  false_acceptance, false_rejection = fn / (fn + tp), fp / (fp + tn)
  assert result["hter"] == pytest.approx((false_acceptance + false_rejection) / 2)
  assert result["eer"] == pytest.approx(reference_eer(labels, scores), abs=1e-12)
  assert result["num_clips"] == labels.size
  assert result["threshold"] == threshold
  assert set(result) == set(metrics.METRIC_KEYS)


@pytest.mark.parametrize("seed", SEEDS)
def test_eer_lies_between_the_roc_points_that_bracket_it(seed):
  labels, scores, _ = tied_split(seed)
  false_positive_rate, true_positive_rate, _ = sk_metrics.roc_curve(labels, scores)
  false_negative_rate = 1 - true_positive_rate
  after = int(np.argmax(false_negative_rate <= false_positive_rate))
  eer = metrics.equal_error_rate(labels, scores)
  assert false_positive_rate[after - 1] <= eer <= false_positive_rate[after]
  assert false_negative_rate[after] <= eer <= false_negative_rate[after - 1]


def test_eer_of_separable_and_reversed_scores():
  labels = np.array([0, 0, 0, 1, 1, 1])
  assert metrics.equal_error_rate(labels, [0, 1, 2, 3, 4, 5]) == 0.0
  assert metrics.equal_error_rate(labels, [5, 4, 3, 2, 1, 0]) == 1.0
  assert metrics.equal_error_rate(labels, np.zeros(6)) == 0.5  # all tied: the diagonal


def test_probability_equal_to_threshold_is_fake():
  result = metrics.clip_metrics([0, 1], [0.0, 1.0], [0.5, 0.5], threshold=0.5)
  assert (result["tp"], result["fp"], result["tn"], result["fn"]) == (1, 1, 0, 0)


@pytest.mark.parametrize("present_label, missing_recall", ((0, "fake_recall"), (1, "real_recall")))
def test_single_class_warns_and_gives_nan(present_label, missing_recall):
  labels = np.full(6, present_label)
  scores = np.linspace(-1, 1, 6)
  with pytest.warns(metrics.SingleClassWarning, match="test/wav2lip"):
    result = metrics.clip_metrics(labels, scores, 1 / (1 + np.exp(-scores)), name="test/wav2lip")
  for key in ("auc", "eer", "ap", "bacc", "hter", missing_recall):
    assert math.isnan(result[key]), key
  assert result["acc"] == 0.5
  assert result["num_clips"] == 6


def test_empty_split_warns():
  with pytest.warns(metrics.SingleClassWarning, match="no clips"):
    result = metrics.clip_metrics([], [], [])
  assert result["num_clips"] == 0 and math.isnan(result["acc"])


def test_invalid_inputs_raise():
  with pytest.raises(ValueError, match="labels must be 0"):
    metrics.clip_metrics([0, 2], [0.0, 1.0], [0.0, 1.0])
  with pytest.raises(ValueError, match="non-finite"):
    metrics.clip_metrics([0, 1], [0.0, np.nan], [0.0, 1.0])
  with pytest.raises(ValueError, match="values for"):
    metrics.clip_metrics([0, 1], [0.0], [0.0, 1.0])


def test_per_method_uses_all_reals_and_that_methods_fakes():
  labels, scores, probabilities = tied_split(0, num_clips=300)
  rng = np.random.default_rng(100)  # independent of the labels' generator
  methods = np.where(labels == 0, "real", rng.choice(["wav2lip", "makeittalk", "desync"], 300))
  per_method = metrics.per_method_metrics(labels, scores, probabilities, methods, name="test")
  assert list(per_method) == ["desync", "makeittalk", "wav2lip"]
  for method, result in per_method.items():
    mask = (labels == 0) | (methods == method)
    assert result == metrics.clip_metrics(labels[mask], scores[mask], probabilities[mask])
    assert result["tn"] + result["fp"] == np.count_nonzero(labels == 0)


def test_per_category_skips_fakes_without_category():
  labels = np.array([0, 0, 1, 1, 1, 1])
  scores = np.array([0.1, 0.4, 0.35, 0.8, 0.9, 0.2])
  categories = [
    "RealVideo-RealAudio",
    "RealVideo-RealAudio",
    "RealVideo-FakeAudio",
    "FakeVideo-FakeAudio",
    "FakeVideo-FakeAudio",
    "",
  ]
  per_category = metrics.per_category_metrics(labels, scores, scores, categories)
  assert list(per_category) == ["FakeVideo-FakeAudio", "RealVideo-FakeAudio"]
  assert per_category["FakeVideo-FakeAudio"]["auc"] == 1.0
  assert per_category["RealVideo-FakeAudio"]["auc"] == 0.5
  assert metrics.per_category_metrics(labels, scores, scores, [""] * 6) == {}


def test_per_method_with_a_method_without_reals_warns():
  with pytest.warns(metrics.SingleClassWarning, match="val/lipsync"):
    per_method = metrics.per_method_metrics(
      [1, 1], [0.2, 0.7], [0.2, 0.7], ["lipsync", "lipsync"], name="val"
    )
  assert math.isnan(per_method["lipsync"]["auc"])


@pytest.mark.parametrize("seed", SEEDS)
def test_resample_statistics_equal_sklearn_on_repeated_clips(seed):
  # A bootstrap resample is the split with each clip repeated by its draw count (0 included).
  labels, scores, _ = tied_split(seed, num_clips=200)
  counts = np.random.default_rng(seed).integers(0, 3, labels.size)
  distinct, rank = np.unique(-scores, return_inverse=True)
  fake_counts = np.bincount(rank, weights=counts * labels, minlength=distinct.size)
  real_counts = np.bincount(rank, weights=counts * (1 - labels), minlength=distinct.size)
  statistics = metrics._curve_statistics(fake_counts[None], real_counts[None])
  repeated_labels, repeated_scores = np.repeat(labels, counts), np.repeat(scores, counts)
  assert statistics["auc"][0] == pytest.approx(
    sk_metrics.roc_auc_score(repeated_labels, repeated_scores), abs=1e-12
  )
  assert statistics["ap"][0] == pytest.approx(
    sk_metrics.average_precision_score(repeated_labels, repeated_scores), abs=1e-12
  )
  assert statistics["eer"][0] == pytest.approx(
    reference_eer(repeated_labels, repeated_scores), abs=1e-12
  )


@pytest.mark.parametrize("seed", SEEDS)
def test_bootstrap_interval_contains_the_estimate(seed):
  labels, scores, probabilities = tied_split(seed)
  point = metrics.clip_metrics(labels, scores, probabilities)
  intervals = metrics.bootstrap_intervals(labels, scores, num_resamples=300, seed=seed)
  for key in metrics.RANKING_METRICS:
    assert intervals[key]["low"] < point[key] < intervals[key]["high"], key


def test_bootstrap_is_reproducible_and_stratified():
  labels, scores, _ = tied_split(0, num_clips=100)
  first = metrics.bootstrap_replicates(labels, scores, num_resamples=50, seed=7)
  again = metrics.bootstrap_replicates(labels, scores, num_resamples=50, seed=7)
  other = metrics.bootstrap_replicates(labels, scores, num_resamples=50, seed=8)
  for key in metrics.RANKING_METRICS:
    np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first[key], other[key])
    assert first[key].shape == (50,) and np.isfinite(first[key]).all()


def test_bootstrap_narrows_as_the_split_grows():
  widths = []
  for num_clips in (100, 3000):
    labels, scores, _ = tied_split(0, num_clips=num_clips)
    intervals = metrics.bootstrap_intervals(labels, scores, num_resamples=300)
    widths.append({key: value["high"] - value["low"] for key, value in intervals.items()})
  for key in metrics.RANKING_METRICS:
    assert widths[1][key] < 0.5 * widths[0][key], key


def test_bootstrap_of_single_class_warns_and_gives_nan():
  with pytest.warns(metrics.SingleClassWarning, match="test/fsgan"):
    intervals = metrics.bootstrap_intervals([1, 1, 1], [0.1, 0.2, 0.3], name="test/fsgan")
  assert all(math.isnan(bound) for value in intervals.values() for bound in value.values())


@pytest.mark.parametrize("seed", SEEDS)
def test_chosen_threshold_maximises_balanced_accuracy(seed):
  labels, _, probabilities = tied_split(seed)
  threshold = metrics.choose_threshold(labels, probabilities)
  candidates = np.unique(probabilities)
  best = max(
    sk_metrics.balanced_accuracy_score(labels, probabilities >= candidate)
    for candidate in candidates
  )
  at_threshold = sk_metrics.balanced_accuracy_score(labels, probabilities >= threshold)
  assert at_threshold == pytest.approx(best)
  # Strictly between two distinct validation probabilities, so it does not sit on a tie.
  assert threshold not in candidates


def test_choose_threshold_falls_back_to_half():
  with pytest.warns(metrics.SingleClassWarning, match="val"):
    assert metrics.choose_threshold([0, 0], [0.2, 0.9], name="val") == 0.5
  with pytest.warns(UserWarning, match="better than chance"):
    assert metrics.choose_threshold([0, 1], [0.9, 0.2]) == 0.5
