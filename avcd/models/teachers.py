"""Frozen ASR and VSR teachers (deep_avsr's AudioNet / VideoNet) giving per-frame posteriors.

Both are a post-norm transformer "encoder" and "decoder" (two stacks of self-attention layers with
separate weights) over sinusoidal positions, followed by a 1x1 output conv over the character
classes. The ASR teacher reads STFT magnitudes through a stride-4 conv (one step per video frame);
the VSR teacher reads lip features, either precomputed or computed by its own visual frontend from
mouth crops of the face frames.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from avcd.models import layers
from avcd.models.visual import VisualFrontend


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
  """pe[t, 2i] = sin(t / 10000^(2i/dim)), pe[t, 2i+1] = cos(...), as deep_avsr (not scaled)."""
  position = np.arange(length, dtype=np.float32)[:, None]
  inv_freq = np.exp(np.arange(0, dim, 2, dtype=np.float32) * (-math.log(10000.0) / dim))
  table = np.zeros((length, dim), np.float32)
  table[:, 0::2] = np.sin(position * inv_freq)
  table[:, 1::2] = np.cos(position * inv_freq)
  return table


def crop_mouths(faces: jax.Array, box: tuple[float, float, float, float], size: int) -> jax.Array:
  """Crops the mouth box (top, bottom, left, right as fractions of the face), resized to size².

  faces: (B, T, H, W) -> (B, T, size, size) float32 in [0, 255].
  """
  h, w = faces.shape[-2:]
  top, bottom, left, right = (int(round(f * n)) for f, n in zip(box, (h, h, w, w)))
  crop = faces[..., top:bottom, left:right].astype(jnp.float32)
  return jax.image.resize(crop, (*faces.shape[:-2], size, size), method="bilinear")


class TransformerTeacher(nnx.Module):
  """Positions + encoder and decoder stacks + output conv; the body shared by both teachers."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, dtype, rngs: nnx.Rngs):
    layer = lambda: layers.AttentionLayer(
      cfg.width, cfg.num_heads, cfg.ffn_dim, dropout=cfg.dropout, dtype=dtype, rngs=rngs
    )
    self.encoder = nnx.List([layer() for _ in range(cfg.encoder_layers)])
    self.decoder = nnx.List([layer() for _ in range(cfg.decoder_layers)])
    self.output = nnx.Linear(cfg.width, cfg.num_classes, dtype=dtype, rngs=rngs)
    self.max_len = cfg.max_len

  def body(self, x: jax.Array, mask: jax.Array, *, train: bool, rngs) -> jax.Array:
    """x: (B, T, D) -> class logits (B, T, K) in float32."""
    if x.shape[1] > self.max_len:
      raise ValueError(f"teacher input of {x.shape[1]} frames exceeds its {self.max_len} positions")
    x = x + jnp.asarray(sinusoidal_positions(x.shape[1], x.shape[-1]), x.dtype)
    for layer in (*self.encoder, *self.decoder):
      x = layer(x, x, mask, train=train, rngs=rngs)
    return self.output(x).astype(jnp.float32)


class ASRTeacher(TransformerTeacher):
  """STFT (B, 4T, bins) -> per-frame class logits (B, T, K)."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.compute_dtype)
    super().__init__(cfg, dtype=dtype, rngs=rngs)
    k = cfg.audio_frames_per_frame
    self.audio_conv = nnx.Conv(
      cfg.input_bins, cfg.width, (k,), (k,), padding="VALID", dtype=dtype, rngs=rngs
    )
    self.dtype = dtype

  def __call__(self, stft: jax.Array, mask: jax.Array, *, train: bool = False, rngs=None):
    x = self.audio_conv(stft.astype(self.dtype))
    return self.body(x, mask, train=train, rngs=rngs)


class VSRTeacher(TransformerTeacher):
  """Lip features (B, T, D), or mouth crops through its own visual frontend, -> logits (B, T, K)."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.compute_dtype)
    super().__init__(cfg, dtype=dtype, rngs=rngs)
    self.frontend = (
      VisualFrontend(cfg.frontend, dtype=dtype, rngs=rngs) if cfg.use_frontend else None
    )
    if self.frontend is not None and self.frontend.out_features != cfg.width:
      raise ValueError(
        f"VSR frontend gives {self.frontend.out_features} features, the teacher "
        f"width is {cfg.width}"
      )
    self.mouth_box = tuple(cfg.mouth_box)
    self.mouth_size = cfg.mouth_size
    self.dtype = dtype

  def lip_features(self, faces: jax.Array, mask: jax.Array, *, train: bool = False) -> jax.Array:
    """Face frames (B, T, H, W) -> lip features (B, T, D) from the configured mouth box."""
    if self.frontend is None:
      raise ValueError(
        "this VSR teacher has no visual frontend (teachers.vsr.use_frontend=False); "
        "it needs precomputed lip features"
      )
    mouths = crop_mouths(faces, self.mouth_box, self.mouth_size)
    return self.frontend(mouths, mask, train=train)

  def __call__(self, lips: jax.Array, mask: jax.Array, *, train: bool = False, rngs=None):
    return self.body(lips.astype(self.dtype), mask, train=train, rngs=rngs)


class Teachers(nnx.Module):
  """The frozen pair whose per-frame agreement is the student's correlation target."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    self.asr = ASRTeacher(cfg.asr, rngs=rngs)
    self.vsr = VSRTeacher(cfg.vsr, rngs=rngs)


def forward(
  graphdef,
  state: tuple,
  inputs: dict,
  mask: jax.Array,
  *,
  train: bool = False,
  frontend_train: bool = False,
  rngs=None,
  probabilities: bool = False,
  copy: bool = False,
):
  """The teachers' forward pass, a pure function of their (graphdef, (params, batch_stats)):
  (B, T, K) ASR and VSR logits (or, with `probabilities`, their softmax) and the batch statistics
  after the pass. The one teacher forward of the train step and the posterior cache (through
  `posteriors`) and of teacher training.

  inputs: `stft` (B, 4T, bins), `faces` (B, T, H, W) and, where precomputed, `lips` (B, T, D);
  without lips the VSR teacher's visual frontend computes them from the faces (its BatchNorm in
  train mode only with `frontend_train`). `train` switches the transformers' dropout (drawn from
  `rngs`). `copy`: merge into a copy of the state (where the batch statistics are read back
  inside a traced function that differentiates).
  """
  teachers = nnx.merge(graphdef, *state, copy=copy)
  lips = inputs.get("lips")
  if lips is None:
    lips = teachers.vsr.lip_features(inputs["faces"], mask, train=frontend_train)
  outputs = []
  for network, x in ((teachers.asr, inputs["stft"]), (teachers.vsr, lips)):
    logits = network(x, mask, train=train, rngs=rngs)
    outputs.append(jax.nn.softmax(logits, axis=-1) if probabilities else logits)
  return outputs[0], outputs[1], nnx.state(teachers, nnx.BatchStat)


def posteriors(graphdef, state: tuple, inputs: dict, mask: jax.Array, *, dropout: bool, rng):
  """(B, T, K) ASR and VSR probabilities of the frozen teachers (`forward`), no gradient flowing
  into them.

  `dropout` keeps the transformers' dropout on (the reference's frozen teachers do), drawn from
  `rng`; the VSR frontend's BatchNorm always uses its running statistics here.
  """
  asr, vsr, _ = forward(
    graphdef,
    state,
    inputs,
    mask,
    train=dropout,
    rngs=nnx.Rngs(dropout=rng) if dropout else None,
    probabilities=True,
  )
  return jax.lax.stop_gradient(asr), jax.lax.stop_gradient(vsr)
