"""Calibration: ECE against a brute-force count, Brier, and a fitted map that lowers ECE."""

import numpy as np
import pytest

from avcd.evaluation import calibration


def brute_force_ece(labels, probabilities, num_bins, scheme):
  """ECE clip by clip: each clip's bin from scratch, then the weighted gap of every bin."""
  n = len(labels)
  if scheme == "width":
    bin_of = [min(int(p * num_bins), num_bins - 1) for p in probabilities]
  else:
    order = sorted(range(n), key=lambda i: (probabilities[i], i))
    bin_of = [0] * n
    for rank, i in enumerate(order):
      bin_of[i] = rank * num_bins // n
  total = 0.0
  for b in range(num_bins):
    members = [i for i in range(n) if bin_of[i] == b]
    if members:
      gap = abs(sum(labels[i] for i in members) - sum(probabilities[i] for i in members))
      total += gap / n
  return total


@pytest.mark.parametrize("scheme", ["width", "mass"])
@pytest.mark.parametrize("num_bins", [1, 10, 15])
def test_ece_equals_a_brute_force_count(scheme, num_bins):
  rng = np.random.default_rng(num_bins)
  probabilities = rng.random(257)
  labels = (rng.random(257) < probabilities**2).astype(int)  # overconfident
  got = calibration.expected_calibration_error(
    labels, probabilities, num_bins=num_bins, scheme=scheme
  )
  assert got == pytest.approx(brute_force_ece(labels, probabilities, num_bins, scheme), abs=1e-12)


def test_perfect_and_worst_calibration():
  labels = np.array([0, 0, 1, 1])
  assert calibration.expected_calibration_error(labels, labels.astype(float)) == 0.0
  assert calibration.expected_calibration_error(labels, 1.0 - labels) == pytest.approx(1.0)
  assert calibration.brier_score(labels, np.full(4, 0.5)) == pytest.approx(0.25)


def _overconfident(rng, size):
  """Logits d of clips whose true fake probability is sigmoid(d / 3) (the model says sigmoid(d))."""
  d = rng.normal(0.0, 4.0, size)
  labels = (rng.random(size) < 1 / (1 + np.exp(-d / 3))).astype(int)
  return labels, d


def _sigmoid(d):
  return 1 / (1 + np.exp(-d))


@pytest.mark.parametrize("method", calibration.METHODS)
def test_a_map_fitted_on_validation_lowers_ece_and_keeps_the_ranking(method):
  rng = np.random.default_rng(0)
  val_labels, val_d = _overconfident(rng, 4000)
  test_labels, test_d = _overconfident(rng, 4000)
  fitted = calibration.fit(val_labels, val_d, method=method, fitted_on="validation")
  if method == "temperature":
    assert fitted.temperature == pytest.approx(3.0, rel=0.1) and fitted.bias == 0.0
  for labels, d in ((val_labels, val_d), (test_labels, test_d)):
    before = calibration.expected_calibration_error(labels, _sigmoid(d))
    after = calibration.expected_calibration_error(labels, fitted.apply(d))
    assert after < before / 3, (before, after)
  assert np.array_equal(np.argsort(fitted.apply(test_d)), np.argsort(test_d))
  with pytest.raises(ValueError, match="2 real and 0 fake"):
    calibration.fit(np.zeros(2), np.ones(2))


def test_a_map_is_found_only_for_the_checkpoint_it_was_fitted_for(tmp_path):
  run = tmp_path / "run"
  (run / "checkpoints").mkdir(parents=True)
  source = dict(checkpoint_dir=str(run / "checkpoints"), step=7)
  labels, d = _overconfident(np.random.default_rng(1), 500)
  fitted = calibration.fit(labels, d, fitted_on="validation", source=source)
  fitted.save(run)
  assert calibration.find(source) == fitted  # beside the checkpoints
  assert calibration.find(dict(source, step=8)) is None  # another step's weights
  elsewhere = dict(checkpoint_dir=str(tmp_path / "other" / "checkpoints"), step=7)
  assert calibration.find(elsewhere) is None
  assert calibration.find(elsewhere, run) is None  # found, but fitted for another checkpoint
  (run / calibration.CALIBRATION_FILE).write_text("{}")
  with pytest.raises(ValueError, match="calibration.json: not a calibration"):
    calibration.find(source)


def test_a_temperature_fit_that_ends_on_its_bound_says_so(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat([0, 1], 50)
  # Separated clips: a sharper temperature always lowers the loss, down to the bound T = 0.01.
  separated = calibration.fit(labels, np.where(labels == 1, 5.0, -5.0), fitted_on="validation")
  assert separated.temperature == pytest.approx(0.01, rel=1e-3)
  assert "stopped at its bound T = 0.01" in separated.not_optimal
  assert "not an optimum" in separated.describe()
  # Logits unrelated to the labels: the softest temperature wins, up to T = 100.
  noise = calibration.fit(labels, rng.standard_normal(100) * 3, fitted_on="validation")
  assert noise.temperature == pytest.approx(100, rel=1e-3)
  assert "softer temperature" in noise.not_optimal
  # An ordinary fit finds an optimum inside the bracket, and says nothing.
  logits = rng.standard_normal(100) + 2 * (labels - 0.5) * 2
  assert calibration.fit(labels, logits, fitted_on="validation").not_optimal is None
  # The reason is stored with the map and read back.
  separated.save(tmp_path)
  assert calibration.Calibration.load(tmp_path).not_optimal == separated.not_optimal
