"""The student's audio encoder: an SE-ResNet over MFCC, one embedding per video frame.

Layout: the MFCC image is (B, F, Ta, C) with F = 13 coefficients and Ta = 4T audio frames, the
reference's (height = frequency, width = time). Two stride-2 stages bring Ta down to T.
"""

import einops
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from avcd.models import layers

AUDIO_BN = dict(epsilon=1e-5, momentum=0.1)


def _conv(in_ch, out_ch, kernel, stride, *, dtype, rngs):
  pad = kernel // 2
  return nnx.Conv(
    in_ch,
    out_ch,
    (kernel, kernel),
    stride,
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    dtype=dtype,
    rngs=rngs,
  )


class SqueezeExcite(nnx.Module):
  """Channel gates from the (masked) mean over frequency and time."""

  def __init__(self, channels: int, reduction: int, *, dtype, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(channels, channels // reduction, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(channels // reduction, channels, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    pooled = layers.masked_mean(x, mask, axis=(1, 2)).astype(x.dtype)
    gates = jax.nn.sigmoid(self.fc2(jax.nn.relu(self.fc1(pooled))))
    return x * gates[:, None, None, :]


class SEBlock(nnx.Module):
  """h = BN1(ReLU(conv1(x))) (ReLU before BN, as the reference); h = SE(BN2(conv2(h)));
  out = ReLU(h + shortcut(x)) with a strided 1x1 conv + BN shortcut where the shape changes."""

  def __init__(
    self, in_ch: int, out_ch: int, stride: int, reduction: int, *, dtype, rngs: nnx.Rngs
  ):
    self.stride = stride
    self.conv1 = _conv(in_ch, out_ch, 3, stride, dtype=dtype, rngs=rngs)
    self.bn1 = layers.MaskedBatchNorm(out_ch, **AUDIO_BN, rngs=rngs)
    self.conv2 = _conv(out_ch, out_ch, 3, 1, dtype=dtype, rngs=rngs)
    self.bn2 = layers.MaskedBatchNorm(out_ch, **AUDIO_BN, rngs=rngs)
    self.se = SqueezeExcite(out_ch, reduction, dtype=dtype, rngs=rngs)
    if stride != 1 or in_ch != out_ch:
      self.downsample_conv = nnx.Conv(
        in_ch, out_ch, (1, 1), stride, padding="VALID", use_bias=False, dtype=dtype, rngs=rngs
      )
      self.downsample_bn = layers.MaskedBatchNorm(out_ch, **AUDIO_BN, rngs=rngs)
    else:
      self.downsample_conv = self.downsample_bn = None

  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool):
    """x: (B, F, Ta, C); mask: (B, 1, Ta). Returns the output and its (possibly strided) mask."""
    out_mask = mask[:, :, :: self.stride]
    h = self.conv1(layers.zero_invalid(x, mask))
    h = self.bn1(jax.nn.relu(h), out_mask, train=train)
    h = self.bn2(self.conv2(layers.zero_invalid(h, out_mask)), out_mask, train=train)
    h = self.se(h, out_mask)
    shortcut = x
    if self.downsample_conv is not None:
      shortcut = self.downsample_bn(self.downsample_conv(x), out_mask, train=train)
    return jax.nn.relu(h + shortcut), out_mask


class AudioEncoder(nnx.Module):
  """conv 7x7 (stride 2 in frequency) + BN + ReLU, SE-ResNet stages, mean over frequency."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, dtype, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(
      1,
      cfg.stem_channels,
      (7, 7),
      (2, 1),
      padding=((3, 3), (3, 3)),
      use_bias=False,
      dtype=dtype,
      rngs=rngs,
    )
    self.bn1 = layers.MaskedBatchNorm(cfg.stem_channels, **AUDIO_BN, rngs=rngs)
    blocks = []
    in_ch = cfg.stem_channels
    for depth, out_ch, stride in zip(cfg.stage_blocks, cfg.stage_channels, cfg.stage_strides):
      for i in range(depth):
        blocks.append(
          SEBlock(in_ch, out_ch, stride if i == 0 else 1, cfg.se_reduction, dtype=dtype, rngs=rngs)
        )
        in_ch = out_ch
    self.blocks = nnx.List(blocks)
    self.stage_blocks = tuple(cfg.stage_blocks)
    self.dtype = dtype
    self.out_features = in_ch

  def __call__(self, mfcc: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    """mfcc: (B, Ta, F); mask: (B, Ta) valid audio frames. Returns (B, T, C) and its mask."""
    x = einops.rearrange(mfcc, "b t f -> b f t 1").astype(self.dtype)
    m = mask[:, None, :]
    x = self.conv1(layers.zero_invalid(x, m))
    x = jax.nn.relu(self.bn1(x, m, train=train))
    for block in self.blocks:
      x, m = block(x, m, train=train)
    x = jnp.mean(x.astype(layers.STATS_DTYPE), axis=1).astype(x.dtype)
    return x, m[:, 0, :]
