"""Behaviour of the networks: padding invariance, train-mode statistics, dropout, bfloat16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avcd import config_lib
from avcd.models.student import Student
from avcd.models.teachers import ASRTeacher, VSRTeacher
from avcd.training import losses
from tests import parity_utils, tiny_models

LENGTHS = (5, 9, 7, 0)  # the last row is batch filler with no valid frame
PADDED = 12


def _clips(seed=0):
  rng = np.random.default_rng(seed)
  clips = []
  for length in LENGTHS:
    clips.append(
      dict(
        mfcc=rng.normal(size=(4 * length, 13)).astype(np.float32) * 5,
        faces=rng.integers(
          0, 256, size=(length, tiny_models.FACE, tiny_models.FACE), dtype=np.uint8
        ),
        stft=np.abs(rng.normal(size=(4 * length, 321))).astype(np.float32),
        label=length % 2,
      )
    )
  return clips


def _batch(clips, length, garbage_seed=None):
  """Pads clips to `length` frames; padding holds zeros or, with a seed, random garbage."""
  rng = np.random.default_rng(garbage_seed)
  fill = (
    (lambda shape, dtype: rng.integers(0, 255, shape).astype(dtype))
    if garbage_seed is not None
    else (lambda shape, dtype: np.zeros(shape, dtype))
  )
  out = {}
  for name, rows in (("mfcc", 4), ("faces", 1), ("stft", 4)):
    arrays = []
    for clip in clips:
      a = clip[name]
      pad = fill((rows * length - a.shape[0], *a.shape[1:]), a.dtype)
      arrays.append(np.concatenate([a, pad]))
    out[name] = jnp.asarray(np.stack(arrays))
  out["num_frames"] = jnp.array([c["faces"].shape[0] for c in clips], jnp.int32)
  out["label"] = jnp.array([c["label"] for c in clips], jnp.int32)
  return out


@pytest.fixture(scope="module")
def models():
  rngs = nnx.Rngs(0)
  teachers = tiny_models.teachers_config()
  return (
    Student(tiny_models.student_config(), rngs=rngs),
    ASRTeacher(teachers.asr, rngs=rngs),
    VSRTeacher(teachers.vsr, rngs=rngs),
  )


@nnx.jit
def _outputs(models, batch):
  student, asr, vsr = models
  out = student(batch["mfcc"], batch["faces"], batch["num_frames"], train=False)
  asr_probs = jax.nn.softmax(asr(batch["stft"], out["mask"]), -1)
  lips = vsr.lip_features(batch["faces"], out["mask"])
  vsr_probs = jax.nn.softmax(vsr(lips, out["mask"]), -1)
  _, parts = losses.detector_losses(out, asr_probs, vsr_probs, batch["label"], config_lib.losses())
  return dict(out, asr_probs=asr_probs, vsr_probs=vsr_probs, **parts)


PER_FRAME = (
  "audio_embed",
  "visual_embed",
  "frame_logits",
  "asr_probs",
  "vsr_probs",
  "soft_target",
  "scaled_cosine",
)
PER_CLIP = ("clip_logits", "clip_loss_ce", "clip_loss_bce", "clip_loss_metric", "clip_distance")


def test_padding_and_batch_invariance(models):
  clips = _clips()
  batched = _outputs(models, _batch(clips, PADDED, garbage_seed=1))
  for i, clip in enumerate(clips):
    length = clip["faces"].shape[0]
    if length == 0:
      continue
    alone = _outputs(models, _batch([clip], length))
    for name in PER_FRAME:
      np.testing.assert_allclose(
        batched[name][i, :length], alone[name][0], atol=1e-5, rtol=0, err_msg=f"{name} of clip {i}"
      )
    for name in PER_CLIP:
      np.testing.assert_allclose(
        batched[name][i], alone[name][0], atol=1e-5, rtol=0, err_msg=f"{name} of clip {i}"
      )


def test_filler_rows_are_finite_and_excluded(models):
  student = models[0]
  batch = _batch(_clips(), PADDED)
  graphdef, params, rest = nnx.split(student, nnx.Param, ...)

  def loss_fn(params, batch):
    out = nnx.merge(graphdef, params, rest)(
      batch["mfcc"], batch["faces"], batch["num_frames"], train=False
    )
    targets = jnp.full(out["mask"].shape + (6,), 1.0 / 6)
    return losses.detector_losses(out, targets, targets, batch["label"], config_lib.losses())

  (total, parts), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, batch)
  assert np.isfinite(total)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  without_filler = {k: v[:3] for k, v in batch.items()}
  total_without, _ = jax.jit(loss_fn)(params, without_filler)
  np.testing.assert_allclose(total, total_without, rtol=1e-6)


def _batch_stats(module):
  return [np.asarray(v) for v in jax.tree.leaves(nnx.state(module, nnx.BatchStat))]


@nnx.jit
def _train_forward(student, batch, dropout_seed=0):
  return student(
    batch["mfcc"],
    batch["faces"],
    batch["num_frames"],
    train=True,
    rngs=nnx.Rngs(dropout=jax.random.key(dropout_seed)),
  )


def test_train_mode_batch_statistics_use_valid_frames_only():
  clip = _clips()[1]
  length = clip["faces"].shape[0]
  results = []
  for batch in (_batch([clip], length), _batch([clip], PADDED, garbage_seed=3)):
    student = Student(tiny_models.student_config(dropout=0.0), rngs=nnx.Rngs(0))
    out = _train_forward(student, batch)
    results.append((out["frame_logits"][0, :length], _batch_stats(student)))
  np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-5)
  for a, b in zip(results[0][1], results[1][1]):
    np.testing.assert_allclose(a, b, atol=1e-5)
  initial = _batch_stats(Student(tiny_models.student_config(), rngs=nnx.Rngs(0)))
  assert any(not np.allclose(a, b) for a, b in zip(initial, results[0][1])), "stats not updated"


def test_student_dropout_only_in_train_mode(models):
  student = models[0]
  batch = _batch(_clips()[:3], PADDED)
  _, state = nnx.split(student)
  eval_logits = _outputs(models, batch)["frame_logits"]
  np.testing.assert_array_equal(eval_logits, _outputs(models, batch)["frame_logits"])
  first = _train_forward(student, batch, 0)["frame_logits"]
  second = _train_forward(student, batch, 1)["frame_logits"]
  nnx.update(student, state)  # train mode updated the running statistics; restore them
  assert not np.allclose(first, second)


def test_bfloat16_stays_close_to_float32():
  """bf16 compute with f32 parameters, on the paper-size student with the fixture's weights."""
  fixture = parity_utils.load_fixture()
  student, _, _ = parity_utils.reference_models(str(fixture["seed"]))
  graphdef, state = nnx.split(student)
  bf16 = nnx.eval_shape(
    lambda: Student(config_lib.student(compute_dtype="bfloat16"), rngs=nnx.Rngs(0))
  )
  nnx.update(bf16, state)
  inputs = (
    jnp.asarray(fixture["mfcc"]),
    jnp.asarray(fixture["faces"]),
    jnp.array([int(fixture["T"])]),
  )
  run = jax.jit(lambda m: m(*inputs, train=False))
  reference, reduced = run(student), run(bf16)
  assert reduced["audio_embed"].dtype == jnp.bfloat16
  for name, tolerance in (("frame_logits", BF16_TOLERANCE), ("clip_logits", BF16_TOLERANCE)):
    scale = np.max(np.abs(reference[name]))
    error = np.max(np.abs(np.asarray(reduced[name], np.float32) - reference[name])) / scale
    assert error < tolerance, f"{name}: bf16 error {error:.3f} of max |value|"


BF16_TOLERANCE = 0.05


def _autodiff_batch_norm(x, mask, scale, bias, epsilon):
  """The masked BatchNorm written out plainly, differentiated by JAX."""
  weights = jnp.broadcast_to(mask[..., None], x.shape[:-1] + (1,)).astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  count = jnp.sum(weights)
  mean = jnp.sum(x * weights, axis=axes) / count
  var = jnp.sum(jnp.square(x - mean) * weights, axis=axes) / count
  return (x - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias


@pytest.mark.parametrize(
  "shape, mask_shape", [((6, 5, 4, 3), (6, 1, 1)), ((2, 7, 3), (2, 7)), ((2, 5, 4, 3), (2, 5, 1))]
)
def test_batch_norm_gradient_matches_autodiff(shape, mask_shape):
  from avcd.models import layers

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(1.5, 2.0, shape), jnp.float32)
  mask = jnp.asarray(rng.random(mask_shape) < 0.6).at[(0,) * len(mask_shape)].set(True)
  scale = jnp.asarray(rng.normal(1.0, 0.3, shape[-1]), jnp.float32)
  bias = jnp.asarray(rng.normal(0.0, 0.3, shape[-1]), jnp.float32)
  cotangent = jnp.asarray(rng.normal(size=shape), jnp.float32)

  def ours(x, scale, bias):
    bn = layers.MaskedBatchNorm(shape[-1], epsilon=1e-3, momentum=0.1, rngs=nnx.Rngs(0))
    bn.scale[...], bn.bias[...] = scale, bias
    return jnp.sum(bn(x, mask, train=True) * cotangent)

  def plain(x, scale, bias):
    return jnp.sum(_autodiff_batch_norm(x, mask, scale, bias, 1e-3) * cotangent)

  np.testing.assert_allclose(ours(x, scale, bias), plain(x, scale, bias), rtol=1e-5)
  for a, b in zip(
    jax.grad(ours, (0, 1, 2))(x, scale, bias), jax.grad(plain, (0, 1, 2))(x, scale, bias)
  ):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(3, 8, 8, 4), (2, 7, 10, 3), (2, 5, 5, 2)])
def test_max_pool_and_its_gradient_are_nnx_max_pools(shape):
  from avcd.models import layers

  rng = np.random.default_rng(0)
  # Few distinct values: many windows hold their maximum twice, so tie-breaking is tested too.
  x = jnp.asarray(rng.integers(0, 4, shape), jnp.float32)
  cotangent = jnp.asarray(
    rng.normal(size=(shape[0], -(-shape[1] // 2), -(-shape[2] // 2), shape[3]))
  )

  def plain(x):
    return nnx.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))

  np.testing.assert_array_equal(layers.max_pool_3x3_stride2(x), plain(x))
  ours = jax.grad(lambda x: jnp.sum(layers.max_pool_3x3_stride2(x) * cotangent))(x)
  np.testing.assert_allclose(ours, jax.grad(lambda x: jnp.sum(plain(x) * cotangent))(x), atol=1e-6)
