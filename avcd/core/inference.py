"""The predict function of a student and what it reads: the one predict step of training-time
evaluation, `avcd eval`, `avcd predict`, `avcd serve` and (converted by jax2tf) `avcd export`."""

from typing import Any, NamedTuple

import jax
from flax import nnx

from avcd.core import sharding

# What the predict step reads of a loader batch.
MODEL_INPUTS = ("mfcc", "faces", "num_frames")


class ModelShardings(NamedTuple):
  """Where a student's parameters and batch statistics lie on a mesh (a TrainState's shardings
  have the same two fields)."""

  params: Any
  batch_stats: Any


def make_predict_fn(graphdef, calibration=None):
  """predict_fn(params, batch_stats, batch) -> per clip (eval mode):

  score            the fake-class clip logit (the reference's score)
  logit            fake-minus-real clip logit
  raw_probability  softmax of the clip logits, class 1 (fake)
  probability      P(fake): raw_probability, or `calibration` (an
                   avcd.evaluation.calibration.Calibration) applied to `logit`
  frame_logits     (B, T, 2) per-frame (real, fake) logits
  """

  def predict_fn(params, batch_stats, batch: dict) -> dict:
    student = nnx.merge(graphdef, params, batch_stats)
    out = student(batch["mfcc"], batch["faces"], batch["num_frames"], train=False)
    clip = out["clip_logits"]
    logit = clip[:, 1] - clip[:, 0]
    raw_probability = jax.nn.sigmoid(logit)  # = softmax(clip)[:, 1]
    return dict(
      score=clip[:, 1],
      logit=logit,
      raw_probability=raw_probability,
      probability=raw_probability
      if calibration is None
      else jax.nn.sigmoid(calibration.scale * logit + calibration.bias),
      frame_logits=out["frame_logits"],
    )

  return predict_fn


def make_predict_step(graphdef, shardings, mesh, calibration=None):
  """predict_fn(params, batch_stats, batch) jitted for `mesh`: the parameters and batch statistics
  where `shardings` (ModelShardings, or a TrainState's shardings) puts them, the batch split along
  the batch axes, the outputs replicated (every process sees every clip's score)."""
  return jax.jit(
    make_predict_fn(graphdef, calibration),
    in_shardings=(shardings.params, shardings.batch_stats, sharding.batch_sharding(mesh)),
    out_shardings=sharding.replicated(mesh),
  )
