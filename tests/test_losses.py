"""Loss forms beyond the reference's (which tests/test_parity.py checks against its fixture)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avcd import config_lib
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
  labels = jnp.array([[0, 0, 0], [1, 1, 1]])
  agree, disagree = jnp.full((2, 3), 0.999), jnp.full((2, 3), 0.001)
  assert float(losses.sync_loss(agree, disagree, labels, mask)) < 0.01
  assert float(losses.sync_loss(disagree, agree, labels, mask)) > 5.0
  # The fake clip's frames count for nothing, whatever they hold.
  fake_changed = agree.at[1].set(0.001)
  np.testing.assert_allclose(
    losses.sync_loss(fake_changed, disagree, labels, mask),
    losses.sync_loss(agree, disagree, labels, mask),
  )


def _student_out(rng: np.random.Generator, mask: np.ndarray) -> dict:
  rows, frames = mask.shape
  return dict(
    audio_embed=jnp.asarray(rng.standard_normal((rows, frames, 8)), jnp.float32),
    visual_embed=jnp.asarray(rng.standard_normal((rows, frames, 8)), jnp.float32),
    frame_logits=jnp.asarray(rng.standard_normal((rows, frames, 2)), jnp.float32),
    mask=jnp.asarray(mask),
  )


def _posteriors(rng: np.random.Generator, shape: tuple[int, ...]) -> jax.Array:
  return jax.nn.softmax(jnp.asarray(rng.standard_normal(shape), jnp.float32), axis=-1)


@pytest.fixture
def three_clips():
  """Two valid clips of 6 and 4 frames and a filler row, with random outputs and posteriors."""
  rng = np.random.default_rng(0)
  mask = np.zeros((3, 6), bool)
  mask[0], mask[1, :4] = True, True
  return _student_out(rng, mask), _posteriors(rng, (3, 6, 5)), _posteriors(rng, (3, 6, 5))


def test_clip_labels_and_the_same_labels_on_every_frame_give_the_same_losses(three_clips):
  out, asr, vsr = three_clips
  clip_labels = jnp.array([1, 0, 0])
  _, by_clip = losses.detector_losses(out, asr, vsr, clip_labels, config_lib.losses())
  frame_labels = jnp.broadcast_to(clip_labels[:, None], (3, 6))
  _, by_frame = losses.detector_losses(out, asr, vsr, frame_labels, config_lib.losses())
  for name, value in by_clip.items():
    np.testing.assert_allclose(by_frame[name], value, rtol=1e-6, err_msg=name)


def test_frame_labels_set_each_frames_cross_entropy_and_split_the_metric_loss(three_clips):
  out, asr, vsr = three_clips
  cfg = config_lib.losses()
  frame_labels = np.zeros((3, 6), np.int32)
  frame_labels[0, 2:4] = 1  # a forged segment inside clip 0
  _, parts = losses.detector_losses(out, asr, vsr, jnp.asarray(frame_labels), cfg)

  log_probs = jax.nn.log_softmax(out["frame_logits"], axis=-1)
  mask = np.asarray(out["mask"])
  want_ce = -np.take_along_axis(np.asarray(log_probs), frame_labels[..., None], -1)[..., 0]
  np.testing.assert_allclose(parts["loss_ce"], want_ce[mask].mean(), rtol=1e-6)

  # Metric loss: clip 0 has a real part (frames 0, 1, 4, 5) and a fake part (2, 3), clip 1 one
  # real part; the filler row none. Each part's distance is taken over its own frames.
  target, cosine = np.asarray(parts["soft_target"]), np.asarray(parts["scaled_cosine"])

  def part_loss(clip, frames, label):
    distance = np.sqrt(np.sum(np.square(target[clip, frames] - cosine[clip, frames])))
    return float(
      losses.metric_loss(jnp.array([distance]), jnp.array([label]), cfg.metric_margin)[0]
    )

  terms = [part_loss(0, [0, 1, 4, 5], 0), part_loss(0, [2, 3], 1), part_loss(1, [0, 1, 2, 3], 0)]
  np.testing.assert_allclose(parts["loss_metric"], np.mean(terms), rtol=1e-5)
  np.testing.assert_allclose(parts["clip_loss_metric"][0], terms[0] + terms[1], rtol=1e-5)


def test_phoneme_heads_loss_is_each_heads_soft_cross_entropy_over_valid_frames(three_clips):
  out, asr, vsr = three_clips
  rng = np.random.default_rng(1)
  audio_logits = rng.standard_normal((3, 6, 5)).astype(np.float32)
  visual_logits = rng.standard_normal((3, 6, 5)).astype(np.float32)
  out = dict(
    out,
    audio_phoneme_logits=jnp.asarray(audio_logits),
    visual_phoneme_logits=jnp.asarray(visual_logits),
  )
  cfg = config_lib.losses()
  cfg.phoneme_weight = 0.5
  clip_labels = jnp.array([1, 0, 0])
  total, parts = losses.detector_losses(out, asr, vsr, clip_labels, cfg)

  mask = np.asarray(out["mask"])

  def soft_ce(logits, target):  # by hand: log-softmax with the max subtracted, valid frames only
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return -(np.asarray(target) * log_softmax).sum(axis=-1)[mask].mean()

  want_audio, want_visual = soft_ce(audio_logits, asr), soft_ce(visual_logits, vsr)
  np.testing.assert_allclose(parts["loss_phoneme_audio"], want_audio, rtol=1e-6)
  np.testing.assert_allclose(parts["loss_phoneme_visual"], want_visual, rtol=1e-6)
  np.testing.assert_allclose(parts["loss_phoneme"], want_audio + want_visual, rtol=1e-6)
  without, _ = losses.detector_losses(out, asr, vsr, clip_labels, config_lib.losses())
  np.testing.assert_allclose(total, without + 0.5 * (want_audio + want_visual), rtol=1e-6)

  # Targets, not inputs: no gradient reaches the posteriors; padded frames change nothing.
  grad = jax.grad(
    lambda p: losses.detector_losses(out, p, vsr, clip_labels, cfg)[1]["loss_phoneme"]
  )(asr)
  assert not np.any(np.asarray(grad))
  padded = dict(out, audio_phoneme_logits=out["audio_phoneme_logits"].at[1, 4:].set(1e4))
  np.testing.assert_allclose(
    losses.detector_losses(padded, asr, vsr, clip_labels, cfg)[1]["loss_phoneme"],
    parts["loss_phoneme"],
    rtol=1e-6,
  )


def test_without_phoneme_heads_the_losses_have_no_phoneme_term(three_clips):
  out, asr, vsr = three_clips
  _, parts = losses.detector_losses(out, asr, vsr, jnp.array([1, 0, 0]), config_lib.losses())
  assert sorted(k for k in parts if k.startswith("loss_")) == [
    "loss_bce",
    "loss_ce",
    "loss_metric",
    "loss_sync",
  ]
