"""The claim study's statistics: weighted AUC, the hierarchical bootstrap, Holm, sample size."""

import numpy as np
import pytest
import sklearn.metrics

from avcd.evaluation import statistics


def test_weighted_auc_equals_sklearn_with_ties_and_weights():
  rng = np.random.default_rng(0)
  scores = np.round(rng.normal(size=300), 1)  # many ties
  labels = rng.random(300) < 0.3
  weights = rng.integers(0, 4, (5, 300)).astype(float)
  expected = [sklearn.metrics.roc_auc_score(labels, scores, sample_weight=w) for w in weights]
  np.testing.assert_allclose(statistics.weighted_auc(scores, labels, weights), expected)
  assert statistics.weighted_auc(scores, labels) == pytest.approx(
    sklearn.metrics.roc_auc_score(labels, scores)
  )
  assert np.isnan(statistics.weighted_auc(scores, np.zeros(300)))


def _test_set(rng, speakers=20, per_speaker=30):
  speaker = np.repeat(np.arange(speakers), per_speaker)
  labels = rng.random(speaker.size) < 0.4
  methods = np.where(labels, rng.choice(["a", "b"], speaker.size), "real")
  return statistics.TestSet(labels.astype(int), methods, speaker)


def test_identical_arms_give_a_zero_contrast_and_better_ones_a_positive_interval():
  rng = np.random.default_rng(1)
  test = _test_set(rng)
  endpoint = statistics.mean_method_auc(["a", "b"])
  control = [rng.normal(size=test.labels.size) + 0.5 * test.labels for _ in range(6)]
  same = statistics.paired_contrast(
    {0: test}, {0: [(c, c) for c in control]}, endpoint, num_resamples=200
  )
  assert same.mean == 0 and same.low == 0 and same.high == 0 and np.isnan(same.p)
  better = [c + 1.0 * test.labels for c in control]
  contrast = statistics.paired_contrast(
    {0: test}, {0: list(zip(control, better))}, endpoint, num_resamples=200
  )
  assert 0 < contrast.low < contrast.mean < contrast.high and contrast.p < 0.001
  assert contrast.per_corpus[0] == pytest.approx(contrast.mean)


def test_estimate_interval_widens_with_fewer_speakers_and_covers_the_mean():
  rng = np.random.default_rng(2)
  endpoint = statistics.mean_method_auc(["a"])
  widths = []
  for speakers in (6, 60):
    test = _test_set(rng, speakers=speakers, per_speaker=600 // speakers)
    runs = [rng.normal(size=test.labels.size) + 0.8 * test.labels for _ in range(5)]
    e = statistics.estimate({0: test}, {0: runs}, endpoint, num_resamples=300)
    assert e.low < e.mean < e.high and e.runs == 5
    widths.append(e.high - e.low)
  assert widths[0] > widths[1]


def test_holm_and_pairs_needed():
  np.testing.assert_allclose(statistics.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
  assert statistics.pairs_needed(0.05, 0.05) == 10  # ceil(2.8^2) + 2
  assert statistics.pairs_needed(1.0, 0.05) == 20  # capped
  assert statistics.pairs_needed(0.0, 0.05) == 2
