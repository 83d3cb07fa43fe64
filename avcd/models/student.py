"""The student: a TalkNet-style audio-visual network that scores each frame real or fake."""

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from avcd.models import layers
from avcd.models.audio import AudioEncoder
from avcd.models.visual import VisualEncoder


def frame_mask(num_frames: jax.Array, max_frames: int) -> jax.Array:
  """(B,) valid lengths -> (B, T) boolean mask."""
  return jnp.arange(max_frames)[None, :] < num_frames[:, None]


def clip_logits(frame_logits: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of the frame logits over valid frames: the reference's clip logits (B, 2)."""
  return layers.masked_mean(frame_logits, mask, axis=1)


class Student(nnx.Module):
  """Audio SE-ResNet and visual 3D-conv/ResNet/TCN encoders, cross attention A->V and V->A,
  self attention over the concatenation, and a per-frame 2-way classifier (class 1 = fake).

  With `phoneme_classes` = (ASR classes, VSR classes) it also has two per-frame linear phoneme
  heads, on the audio and on the visual encoder's output, trained towards the ASR and VSR
  teachers' posteriors (losses.phoneme_loss). They are an addition to the paper (README,
  "Faithfulness"): each encoder learns the content of its own modality from the first step
  instead of waiting for the audio-visual cosine to become informative. They take no part in
  scoring.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
    dtype = jnp.dtype(cfg.compute_dtype)
    width = cfg.embed_dim
    if cfg.audio.stage_channels[-1] != width:
      raise ValueError(
        f"model.audio.stage_channels[-1]={cfg.audio.stage_channels[-1]} must equal "
        f"model.embed_dim={width}"
      )
    self.audio_encoder = AudioEncoder(cfg.audio, dtype=dtype, rngs=rngs)
    self.visual_encoder = VisualEncoder(cfg.visual, dtype=dtype, rngs=rngs)
    attention = lambda dim: layers.AttentionLayer(
      dim, cfg.num_heads, cfg.ffn_multiplier * dim, dropout=cfg.dropout, dtype=dtype, rngs=rngs
    )
    self.cross_a2v = attention(width)
    self.cross_v2a = attention(width)
    self.self_av = attention(2 * width)
    self.classifier = nnx.Linear(2 * width, 2, dtype=dtype, rngs=rngs)
    self.audio_frames_per_frame = cfg.audio_frames_per_frame
    # Configs stored before the heads existed have no field: no heads.
    audio_classes, visual_classes = cfg.get("phoneme_classes", (0, 0))
    self.has_phoneme_heads = audio_classes > 0
    if self.has_phoneme_heads:  # no attribute at all when off: the paper's student is unchanged
      self.audio_phoneme_head = nnx.Linear(width, audio_classes, dtype=dtype, rngs=rngs)
      self.visual_phoneme_head = nnx.Linear(
        cfg.visual.embed_dim, visual_classes, dtype=dtype, rngs=rngs
      )

  def encode(
    self,
    mfcc: jax.Array,
    faces: jax.Array,
    num_frames: jax.Array,
    *,
    train: bool,
    intermediates: dict | None = None,
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The audio and visual frontends: (audio (B, T, D), visual (B, T, D), mask (B, T))."""
    mask = frame_mask(num_frames, faces.shape[1])
    audio_mask = jnp.repeat(mask, self.audio_frames_per_frame, axis=1)
    audio, _ = self.audio_encoder(mfcc, audio_mask, train=train)
    visual = self.visual_encoder(faces, mask, train=train, intermediates=intermediates)
    if intermediates is not None:
      intermediates.update(audio_embed_frontend=audio, visual_embed_frontend=visual)
    return audio, visual, mask

  def cross_attend(
    self,
    audio: jax.Array,
    visual: jax.Array,
    mask: jax.Array,
    *,
    train: bool,
    rngs: nnx.Rngs | None = None,
  ) -> tuple[jax.Array, jax.Array]:
    """Audio attending to video and video to audio: the embeddings the correlation losses
    compare."""
    return (
      self.cross_a2v(audio, visual, mask, train=train, rngs=rngs),
      self.cross_v2a(visual, audio, mask, train=train, rngs=rngs),
    )

  def classify(
    self,
    audio_cross: jax.Array,
    visual_cross: jax.Array,
    mask: jax.Array,
    *,
    train: bool,
    rngs: nnx.Rngs | None = None,
    intermediates: dict | None = None,
  ) -> jax.Array:
    """Self attention over both streams and the per-frame classifier: (B, T, 2) float32 logits."""
    joint = jnp.concatenate([audio_cross, visual_cross], axis=-1)
    joint = self.self_av(joint, joint, mask, train=train, rngs=rngs)
    if intermediates is not None:
      intermediates["av_backend"] = joint
    return self.classifier(joint).astype(jnp.float32)

  def __call__(
    self,
    mfcc: jax.Array,
    faces: jax.Array,
    num_frames: jax.Array,
    *,
    train: bool,
    rngs: nnx.Rngs | None = None,
    intermediates: dict | None = None,
  ) -> dict:
    """mfcc (B, 4T, 13), faces (B, T, H, W), num_frames (B,) -> dict of (B, T, ...) outputs.

    Returns the frontends' `audio_frontend` and `visual_frontend`, `audio_embed` and
    `visual_embed` (after cross attention, what the correlation losses compare), `frame_logits`
    (float32) and `clip_logits` (masked mean over frames); with phoneme heads also their float32
    `audio_phoneme_logits` (B, T, ASR classes) and `visual_phoneme_logits` (B, T, VSR classes).
    """
    audio, visual, mask = self.encode(
      mfcc, faces, num_frames, train=train, intermediates=intermediates
    )
    audio_cross, visual_cross = self.cross_attend(audio, visual, mask, train=train, rngs=rngs)
    logits = self.classify(
      audio_cross, visual_cross, mask, train=train, rngs=rngs, intermediates=intermediates
    )
    out = dict(
      audio_frontend=audio,
      visual_frontend=visual,
      audio_embed=audio_cross,
      visual_embed=visual_cross,
      frame_logits=logits,
      clip_logits=clip_logits(logits, mask),
      mask=mask,
    )
    if self.has_phoneme_heads:
      out.update(
        audio_phoneme_logits=self.audio_phoneme_head(audio).astype(jnp.float32),
        visual_phoneme_logits=self.visual_phoneme_head(visual).astype(jnp.float32),
      )
    return out
