"""Visual networks: the 3D-conv + ResNet18 frontend (student and VSR teacher) and the student's
temporal conv net.

Layouts: faces (B, T, H, W) uint8; activations channels-last (B, T, H, W, C) and (B, T, C).

Unlike the reference, which folds the batch into one long frame sequence so that its temporal
Conv3d reads the neighbouring clip's frames, every clip here is convolved on its own with zero
padding at its ends (the reference's behaviour at batch size 1), so scores do not depend on
batch composition.
"""

import einops
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from avcd.models import layers

FACE_MEAN, FACE_STD = 0.4161, 0.1688
# BatchNorm constants of the reference (see shared/parity/README.md, "Normalization constants").
FRONTEND_BN = dict(epsilon=1e-3, momentum=0.01)
TCN_BN = dict(epsilon=1e-5, momentum=0.1)


def _conv(in_ch, out_ch, kernel, stride=1, padding=None, *, bias=False, groups=1, dtype, rngs):
  kernel = (kernel,) if isinstance(kernel, int) else tuple(kernel)
  stride = (stride,) * len(kernel) if isinstance(stride, int) else tuple(stride)
  padding = tuple((k // 2, k // 2) for k in kernel) if padding is None else padding
  return nnx.Conv(
    in_ch,
    out_ch,
    kernel,
    stride,
    padding=padding,
    use_bias=bias,
    feature_group_count=groups,
    dtype=dtype,
    rngs=rngs,
  )


class ResNetLayer(nnx.Module):
  """One stage of the reference's ResNet: two basic blocks with its particular residual wiring.

  h = relu(bn1a(conv1a(x))); h = conv2a(h) + shortcut(x); m = h; h = relu(outbna(h));
  h = relu(bn1b(conv1b(h))); h = conv2b(h) + m; out = relu(outbnb(h)).
  The shortcut is the identity at stride 1, else a bare strided 1x1 conv (no BatchNorm), computed
  as a 1x1 conv of every stride-th pixel: the same numbers, but XLA:CPU runs a strided conv's
  gradients as dilated convolutions (forward and backward at the second stage, 100 frames: 13.2
  ms strided, 8.3 ms sliced; commit 60cea55).
  """

  def __init__(self, in_ch: int, out_ch: int, stride: int, *, dtype, rngs: nnx.Rngs):
    conv3 = lambda i, s: _conv(i, out_ch, (3, 3), s, dtype=dtype, rngs=rngs)
    bn = lambda: layers.MaskedBatchNorm(out_ch, **FRONTEND_BN, rngs=rngs)
    self.conv1a, self.bn1a, self.conv2a = conv3(in_ch, stride), bn(), conv3(out_ch, 1)
    self.downsample = (
      _conv(in_ch, out_ch, (1, 1), 1, dtype=dtype, rngs=rngs)
      if stride != 1 or in_ch != out_ch
      else None
    )
    self.stride = stride
    self.outbna = bn()
    self.conv1b, self.bn1b, self.conv2b, self.outbnb = (
      conv3(out_ch, 1),
      bn(),
      conv3(out_ch, 1),
      bn(),
    )

  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    """x: (N, H, W, C) frames; mask: (N, 1, 1) valid frames (for BatchNorm statistics)."""
    h = jax.nn.relu(self.bn1a(self.conv1a(x), mask, train=train))
    shortcut = (
      x if self.downsample is None else self.downsample(x[:, :: self.stride, :: self.stride])
    )
    h = self.conv2a(h) + shortcut
    m = h
    h = jax.nn.relu(self.outbna(h, mask, train=train))
    h = jax.nn.relu(self.bn1b(self.conv1b(h), mask, train=train))
    h = self.conv2b(h) + m
    return jax.nn.relu(self.outbnb(h, mask, train=train))


STEM_FRAMES = 5  # temporal extent of the stem's space-time kernel (5 x 7 x 7)


class VisualFrontend(nnx.Module):
  """Conv3d(k 5x7x7) + BN + ReLU + max pool, then a 4-stage ResNet per frame, global average pool.

  The space-time stem is computed as a 7x7 conv over each frame's 5 neighbours stacked as input
  channels: the same numbers as the reference's single-channel Conv3d, but XLA's CPU backend runs
  it ~30x faster (its 3D convolutions are slow) and GPUs run it at least as fast.
  The reference's fixed 4x4 average pool equals the global mean at 112-pixel input; the global
  mean keeps narrow test variants and other input sizes valid.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, *, dtype, rngs: nnx.Rngs):
    stem = cfg.stem_channels
    self.stem = _conv(STEM_FRAMES, stem, (7, 7), (2, 2), ((3, 3), (3, 3)), dtype=dtype, rngs=rngs)
    self.bn3d = layers.MaskedBatchNorm(stem, **FRONTEND_BN, rngs=rngs)
    channels = (stem, *cfg.stage_channels)
    self.resnet = nnx.List(
      [
        ResNetLayer(channels[i], channels[i + 1], 1 if i == 0 else 2, dtype=dtype, rngs=rngs)
        for i in range(len(cfg.stage_channels))
      ]
    )
    self.dtype = dtype
    self.out_features = channels[-1]
    self.input_size = cfg.input_size

  def __call__(self, faces: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    """faces: (B, T, H, W) uint8 (or float in [0, 255]); mask: (B, T). Returns (B, T, C)."""
    b, t = faces.shape[:2]
    x = faces.astype(jnp.float32)
    if self.input_size and x.shape[-2:] != (self.input_size,) * 2:
      # Narrow CPU variants look at smaller faces; the reference's frontend sees 112 px.
      x = jax.image.resize(x, (b, t, self.input_size, self.input_size), method="linear")
    x = (x / 255.0 - FACE_MEAN) / FACE_STD
    x = jnp.where(mask[:, :, None, None], x, 0.0).astype(self.dtype)
    half = STEM_FRAMES // 2
    padded = jnp.pad(x, ((0, 0), (half, half), (0, 0), (0, 0)))
    neighbours = jnp.stack([padded[:, k : k + t] for k in range(STEM_FRAMES)], axis=-1)
    x = self.stem(einops.rearrange(neighbours, "b t h w k -> (b t) h w k"))
    frame_mask = einops.rearrange(mask, "b t -> (b t) 1 1")
    x = jax.nn.relu(self.bn3d(x, frame_mask, train=train))
    x = layers.max_pool_3x3_stride2(x)
    for layer in self.resnet:
      x = layer(x, frame_mask, train=train)
    x = jnp.mean(x.astype(layers.STATS_DTYPE), axis=(1, 2)).astype(x.dtype)
    return einops.rearrange(x, "(b t) c -> b t c", b=b)


class TemporalBlock(nnx.Module):
  """y = x + Conv1x1(gLN(PReLU(DepthwiseConv(BN(ReLU(x))))))."""

  def __init__(self, channels: int, kernel: int, *, dtype, rngs: nnx.Rngs):
    self.bn = layers.MaskedBatchNorm(channels, **TCN_BN, rngs=rngs)
    self.depthwise = _conv(channels, channels, kernel, groups=channels, dtype=dtype, rngs=rngs)
    self.prelu = layers.PReLU()
    self.gln = layers.GlobalLayerNorm(channels, rngs=rngs)
    self.pointwise = _conv(channels, channels, 1, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    h = self.bn(jax.nn.relu(x), mask, train=train)
    h = self.prelu(self.depthwise(layers.zero_invalid(h, mask)))
    return x + self.pointwise(self.gln(h, mask))


class VisualEncoder(nnx.Module):
  """The student's visual path: frontend, temporal conv net, projection to the embedding width."""

  def __init__(self, cfg: ml_collections.ConfigDict, *, dtype, rngs: nnx.Rngs):
    self.frontend = VisualFrontend(cfg.frontend, dtype=dtype, rngs=rngs)
    width = self.frontend.out_features
    self.tcn = nnx.List(
      [TemporalBlock(width, cfg.tcn_kernel, dtype=dtype, rngs=rngs) for _ in range(cfg.tcn_blocks)]
    )
    self.proj_conv = _conv(
      width, cfg.proj_channels, cfg.proj_kernel, bias=True, dtype=dtype, rngs=rngs
    )
    self.proj_bn = layers.MaskedBatchNorm(cfg.proj_channels, **TCN_BN, rngs=rngs)
    self.out_conv = _conv(cfg.proj_channels, cfg.embed_dim, 1, bias=True, dtype=dtype, rngs=rngs)

  def __call__(
    self, faces: jax.Array, mask: jax.Array, *, train: bool, intermediates: dict | None = None
  ) -> jax.Array:
    x = self.frontend(faces, mask, train=train)
    if intermediates is not None:
      intermediates["visual_resnet_out"] = x
    for block in self.tcn:
      x = block(x, mask, train=train)
    if intermediates is not None:
      intermediates["visual_tcn_out"] = x
    x = self.proj_conv(layers.zero_invalid(x, mask))
    x = jax.nn.relu(self.proj_bn(x, mask, train=train))
    return self.out_conv(x)
