"""Numerical parity with the reference PyTorch code (float32, CPU), from shared/parity fixtures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from avcd import config_lib
from avcd.porting import weights
from avcd.training import losses
from tests import parity_utils

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
  fixture = parity_utils.load_fixture()
  student, asr, vsr = parity_utils.reference_models(str(fixture["seed"]))
  return fixture, student, asr, vsr


def _forward(student, asr, vsr, fixture, intermediates):
  num_frames = jnp.array([int(fixture["T"])])
  out = student(
    jnp.asarray(fixture["mfcc"]),
    jnp.asarray(fixture["faces"]),
    num_frames,
    train=False,
    intermediates=intermediates,
  )
  asr_probs = jax.nn.softmax(asr(jnp.asarray(fixture["stft"]), out["mask"]), axis=-1)
  vsr_probs = jax.nn.softmax(vsr(jnp.asarray(fixture["lip"]), out["mask"]), axis=-1)
  labels = jnp.array([int(fixture["label"])])
  total, parts = losses.detector_losses(out, asr_probs, vsr_probs, labels, config_lib.losses())
  return total, (out, asr_probs, vsr_probs, parts)


@pytest.fixture(scope="module")
def computed(reference):
  fixture, student, asr, vsr = reference
  graphdef, params, rest = nnx.split(student, nnx.Param, ...)

  @jax.jit
  def run(params):
    intermediates = {}
    model = nnx.merge(graphdef, params, rest)
    total, aux = _forward(model, asr, vsr, fixture, intermediates)
    return total, (aux, intermediates)

  (_, (aux, intermediates)), grads = jax.value_and_grad(run, has_aux=True)(params)
  return aux, intermediates, grads


def _assert_close(name, ours, ref):
  ref = np.asarray(ref, np.float64)
  ours = np.asarray(ours, np.float64).reshape(ref.shape)
  scale = max(np.max(np.abs(ref)), 1e-12)
  error = np.max(np.abs(ours - ref)) / scale
  assert error <= TOLERANCE, f"{name}: max error {error:.2e} of its max |value| > {TOLERANCE}"


def test_parity_frontends_and_attention(reference, computed):
  fixture = reference[0]
  (out, _, _, _), intermediates, _ = computed
  _assert_close(
    "visual_resnet_out", intermediates["visual_resnet_out"], fixture["visual_resnet_out"]
  )
  _assert_close(
    "visual_tcn_out", np.swapaxes(intermediates["visual_tcn_out"], 1, 2), fixture["visual_tcn_out"]
  )
  for name in ("visual_embed_frontend", "audio_embed_frontend", "av_backend"):
    _assert_close(name, intermediates[name], fixture[name])
  _assert_close("audio_embed_cross", out["audio_embed"], fixture["audio_embed_cross"])
  _assert_close("visual_embed_cross", out["visual_embed"], fixture["visual_embed_cross"])


def test_parity_logits_and_scores(reference, computed):
  fixture = reference[0]
  (out, _, _, _), _, _ = computed
  frame_logits = out["frame_logits"][0]
  _assert_close("frame_logits", frame_logits, fixture["frame_logits"])
  _assert_close("frame_probs", jax.nn.softmax(frame_logits, -1), fixture["frame_probs"])
  frame_pred = np.round(np.asarray(jax.nn.softmax(frame_logits, -1))[:, 1])
  np.testing.assert_array_equal(frame_pred, fixture["frame_pred"])
  assert int(np.sum(frame_pred == int(fixture["label"]))) == int(fixture["n_correct"])
  clip = out["clip_logits"][0]
  _assert_close("video_logits", clip, fixture["video_logits"])
  _assert_close("video_score", clip[1:], fixture["video_score"])
  _assert_close("video_fake_prob", jax.nn.softmax(clip)[1:], fixture["video_fake_prob"])
  assert int(jnp.argmax(clip)) == int(fixture["video_pred"])


def test_parity_teachers_and_losses(reference, computed):
  fixture = reference[0]
  (_, asr_probs, vsr_probs, parts), _, _ = computed
  _assert_close("asr_probs", np.swapaxes(asr_probs, 0, 1), fixture["asr_probs"])
  _assert_close("vsr_probs", np.swapaxes(vsr_probs, 0, 1), fixture["vsr_probs"])
  _assert_close("sym_kl", 1.0 - parts["soft_target"], fixture["sym_kl"])
  _assert_close("soft_label", parts["soft_target"], fixture["soft_label"])
  _assert_close("cos_sim", 2.0 * parts["scaled_cosine"] - 1.0, fixture["cos_sim"])
  _assert_close("cos_sim_scaled", parts["scaled_cosine"], fixture["cos_sim_scaled"])
  _assert_close("metric_distance", parts["clip_distance"], fixture["metric_distance"])
  _assert_close(
    "metric_distance_sigmoid",
    jax.nn.sigmoid(parts["clip_distance"]),
    fixture["metric_distance_sigmoid"],
  )
  for ours, ref in (
    ("loss_bce", "loss_bce"),
    ("loss_metric", "loss_metric"),
    ("loss_ce", "loss_ce"),
    ("loss", "loss_total"),
  ):
    _assert_close(ref, parts[ours], fixture[ref])


def _torch_layout_gradients(student, grads) -> dict[str, list[np.ndarray]]:
  """Our gradients keyed by the reference's parameter names (in_proj split in three parts)."""
  pure = nnx.to_pure_dict(grads)
  by_key = {}
  for key, path, _ in weights.student_entries(student):
    node = pure
    for part in path:
      node = node.get(part) if isinstance(node, dict) else None
      if node is None:
        break
    if node is not None:  # running statistics get no gradient
      by_key.setdefault(key, []).append(np.asarray(node))
  return by_key


def test_parity_gradients(reference, computed):
  fixture, student, _, _ = reference
  _, _, grads = computed
  by_key = _torch_layout_gradients(student, grads)
  conv = lambda g: np.transpose(g, (g.ndim - 1, g.ndim - 2, *range(g.ndim - 2)))
  expected = {
    "lossAV.FC.weight": by_key["lossAV.FC.weight"][0].T,
    "lossAV.FC.bias": by_key["lossAV.FC.bias"][0],
    "model.visualFrontend.frontend3D.0.weight": np.transpose(
      by_key["model.visualFrontend.frontend3D.0.weight"][0], (3, 2, 0, 1)
    )[:, None],
    "model.audioEncoder.conv1.weight": conv(by_key["model.audioEncoder.conv1.weight"][0]),
    "model.crossA2V.self_attn.in_proj_weight": np.concatenate(
      [g.T for g in by_key["model.crossA2V.self_attn.in_proj_weight"]], axis=0
    ),
  }
  for key, ours in expected.items():
    _assert_close(f"grad.{key}", ours, fixture[f"grad.{key}"])

  def norm(prefix=""):
    return np.sqrt(
      sum(
        np.sum(np.square(g.astype(np.float64)))
        for key, parts in by_key.items()
        if key.startswith(prefix)
        for g in parts
      )
    )

  _assert_close("grad_norm_student", norm(), fixture["grad_norm_student"])
  for name in [k for k in fixture if k.startswith("grad_norm.")]:
    _assert_close(name, norm(name[len("grad_norm.") :]), fixture[name])
