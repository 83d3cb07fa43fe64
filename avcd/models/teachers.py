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

  def posteriors(
    self,
    stft: jax.Array,
    faces: jax.Array,
    lips: jax.Array | None,
    mask: jax.Array,
    *,
    train: bool = False,
    rngs=None,
  ):
    """(B, T, K) ASR and VSR probabilities; lips are computed from the faces when None.

    `train` switches dropout only (the reference's frozen teachers keep it on); the VSR frontend's
    BatchNorm always uses its running statistics here.
    """
    if lips is None:
      lips = self.vsr.lip_features(faces, mask, train=False)
    asr = jax.nn.softmax(self.asr(stft, mask, train=train, rngs=rngs), axis=-1)
    vsr = jax.nn.softmax(self.vsr(lips, mask, train=train, rngs=rngs), axis=-1)
    return asr, vsr
