"""Loss forms beyond the reference's (which tests/test_parity.py checks against its fixture)."""

import jax.numpy as jnp
import numpy as np
import pytest

from avcd.training import losses


def test_reference_metric_loss_cannot_be_satisfied_and_the_centred_one_can():
  distances = jnp.array([0.0, 0.5, 2.0, 5.0])
  real, fake = jnp.zeros(4, jnp.int32), jnp.ones(4, jnp.int32)
  reference_real = losses.metric_loss(distances, real, 1.0)
  reference_fake = losses.metric_loss(distances, fake, 1.0)
  assert float(reference_real.min()) >= 0.25  # sigmoid(d) >= 1/2 for d >= 0
  assert float(reference_fake.min()) > 0.0  # sigmoid(d) < 1 = the margin (float32: d < 17)
  centred_real = losses.metric_loss(distances, real, 0.5, "centred")
  centred_fake = losses.metric_loss(distances, fake, 0.5, "centred")
  assert float(centred_real[0]) == 0.0 and float(centred_fake[-1]) == 0.0
  np.testing.assert_allclose(centred_real, np.tanh(np.asarray(distances) / 2) ** 2, rtol=1e-6)
  with pytest.raises(ValueError, match="metric loss form"):
    losses.metric_loss(distances, real, 1.0, "hinge")


def test_sync_loss_targets_one_on_real_frames_and_zero_on_rolled_ones():
  mask = jnp.array([[True, True, False], [True, True, True]])
  labels = jnp.array([0, 1])
  agree, disagree = jnp.full((2, 3), 0.999), jnp.full((2, 3), 0.001)
  assert float(losses.sync_loss(agree, disagree, labels, mask)) < 0.01
  assert float(losses.sync_loss(disagree, agree, labels, mask)) > 5.0
  # The fake clip's frames count for nothing, whatever they hold.
  fake_changed = agree.at[1].set(0.001)
  np.testing.assert_allclose(
    losses.sync_loss(fake_changed, disagree, labels, mask),
    losses.sync_loss(agree, disagree, labels, mask),
  )
