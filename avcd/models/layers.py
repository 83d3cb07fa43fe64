"""Building blocks shared by the student and the teachers, all aware of frame masks.

Clips of different lengths share padded batches. A mask marks the valid time steps; every block here
that mixes time steps (normalisation statistics, temporal convolutions, attention keys, means) looks
at valid steps only, so a clip's outputs do not depend on its padding or on its batch-mates.

Convention: masks are boolean arrays broadcastable against the activations without their channel
axis, e.g. (B, T) for (B, T, C) activations or (B, T, 1, 1) for (B, T, H, W, C).
"""

import functools
import math

import einops
import jax
import jax.numpy as jnp
from flax import nnx

# Statistics, softmax and losses always run in float32, whatever the compute dtype.
STATS_DTYPE = jnp.float32


def zero_invalid(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Sets padded time steps to zero so a temporal conv sees the zero padding of a lone clip."""
  return jnp.where(mask[..., None], x, jnp.zeros((), x.dtype))


def masked_mean(x: jax.Array, mask: jax.Array, axis) -> jax.Array:
  """Mean of x over `axis`, counting only positions where `mask` (broadcast without channels)
  holds."""
  weights = jnp.broadcast_to(mask[..., None], x.shape).astype(STATS_DTYPE)
  total = jnp.sum(x.astype(STATS_DTYPE) * weights, axis=axis)
  count = jnp.sum(weights, axis=axis)
  return total / jnp.maximum(count, 1.0)


def _masked_sum(v: jax.Array, weights: jax.Array, inner: tuple[int, ...]) -> jax.Array:
  """Sum of v over every axis but the channels, counting positions whose weight is 1. The axes
  along which the mask is constant (`inner`, e.g. a frame's pixels) are summed first, so the mask
  multiplies per-frame sums instead of every pixel."""
  per_frame = jnp.sum(v, axis=inner, keepdims=True) if inner else v
  return jnp.sum(per_frame * weights, axis=tuple(range(v.ndim - 1)))


def _batch_stats(x32, weights, inner):
  """(mean, biased variance, count) over valid positions, two passes as torch takes them."""
  count = jnp.sum(weights) * math.prod(x32.shape[i] for i in inner)
  count = jnp.maximum(count, 1.0)
  mean = _masked_sum(x32, weights, inner) / count
  var = _masked_sum(jnp.square(x32 - mean), weights, inner) / count
  return mean, var, count


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _train_batch_norm(x, weights, scale, bias, epsilon, inner):
  return _train_batch_norm_fwd(x, weights, scale, bias, epsilon, inner)[0]


def _train_batch_norm_fwd(x, weights, scale, bias, epsilon, inner):
  x32 = x.astype(STATS_DTYPE)
  mean, var, count = _batch_stats(x32, weights, inner)
  rstd = jax.lax.rsqrt(var + epsilon)
  y = ((x32 - mean) * (rstd * scale) + bias).astype(x.dtype)
  return (y, mean, var, count), (x, weights, scale, mean, rstd, count)


def _train_batch_norm_bwd(epsilon, inner, residuals, cotangents):
  """The textbook BatchNorm gradient in two reductions (autodiff of the forward takes more passes
  over the activations; BatchNorm was 10% of the CPU train step). With g = dy * scale and
  x_hat = (x - mean) * rstd, summed over all positions (padded ones too: their outputs depend on
  the statistics of the valid ones):
    dx = rstd * (g - w * (sum(g) + x_hat * sum(g * x_hat)) / count), w = 1 on valid positions.
  The statistics' cotangents are ignored: callers take them through stop_gradient."""
  del epsilon, inner
  x, weights, scale, mean, rstd, count = residuals
  dy = cotangents[0].astype(STATS_DTYPE)
  x_hat = (x.astype(STATS_DTYPE) - mean) * rstd
  axes = tuple(range(x.ndim - 1))
  dbias = jnp.sum(dy, axis=axes)
  dscale = jnp.sum(dy * x_hat, axis=axes)
  correction = (scale * dbias + x_hat * (scale * dscale)) / count
  dx = rstd * (dy * scale - weights * correction)
  return dx.astype(x.dtype), jnp.zeros_like(weights), dscale, dbias


_train_batch_norm.defvjp(_train_batch_norm_fwd, _train_batch_norm_bwd)


def max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
  """3x3 max pooling with stride 2 and padding 1 over (N, H, W, C): the frontend's, as
  `nnx.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))` computes it (same values, same
  gradient, ties to the first window position in row-major order), with a hand-written gradient:
  XLA:CPU expands the select-and-scatter of autodiff's into index arithmetic and a scatter, 3.9x
  slower than this one at the paper stem's output (commit 21dbf71; docs/scaling.md)."""
  h, w = x.shape[1:3]
  # An odd side gets one -inf row or column: it never wins a window and leaves the output's size.
  padded = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
  return _max_pool_even(padded)


@jax.custom_vjp
def _max_pool_even(x):
  window, strides = (1, 3, 3, 1), (1, 2, 2, 1)
  return jax.lax.reduce_window(
    x, -jnp.inf, jax.lax.max, window, strides, ((0, 0), (1, 1), (1, 1), (0, 0))
  )


def _max_pool_even_fwd(x):
  y = _max_pool_even(x)
  return y, (x, y)


def _max_pool_even_bwd(residuals, g):
  """Each output's gradient goes to its window's first maximum. With stride 2 an even input row
  2i lies in window i only (its middle row) and an odd row 2i+1 in windows i (last row) and i+1
  (first row); so is it with columns. The gradient is therefore made at the output's resolution,
  one tap of the 3x3 window at a time, and the four (row, column) parities are interleaved."""
  x, y = residuals
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  taken = jnp.zeros(y.shape, bool)
  taps = {}
  for a in range(3):
    for b in range(3):
      hit = (padded[:, a : a + h : 2, b : b + w : 2] == y) & ~taken
      taken = taken | hit
      taps[a, b] = jnp.where(hit, g, jnp.zeros((), g.dtype))

  def next_window(v, axis):  # v[i + 1] at i, zero after the last window
    return jnp.pad(jax.lax.slice_in_dim(v, 1, v.shape[axis], axis=axis), _pad_end(axis))

  def by_parity(first, middle, last, axis):  # (even positions, odd positions) along `axis`
    return middle, last + next_window(first, axis)

  rows = {b: by_parity(taps[0, b], taps[1, b], taps[2, b], axis=1) for b in range(3)}
  quarters = [by_parity(rows[0][r], rows[1][r], rows[2][r], axis=2) for r in range(2)]
  grid = jnp.stack([jnp.stack(q, axis=3) for q in quarters], axis=2)  # (N, H/2, 2, W/2, 2, C)
  return (grid.reshape(x.shape),)


def _pad_end(axis: int) -> tuple:
  return tuple((0, 1) if i == axis else (0, 0) for i in range(4))


_max_pool_even.defvjp(_max_pool_even_fwd, _max_pool_even_bwd)


class MaskedBatchNorm(nnx.Module):
  """BatchNorm over the channel (last) axis whose batch statistics use valid positions only.

  `momentum` is PyTorch's (the weight of the new batch): running = (1 - m) running + m batch, and
  the running variance takes the unbiased batch variance, as torch.nn.BatchNorm does. In training
  the normalisation has a hand-written gradient (`_train_batch_norm_bwd`), the same function as
  autodiff's in fewer passes.
  """

  def __init__(self, num_features: int, *, epsilon: float, momentum: float, rngs: nnx.Rngs):
    del rngs  # Deterministic initialisation; the argument keeps the constructor uniform.
    self.epsilon = epsilon
    self.momentum = momentum
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool) -> jax.Array:
    """x: (..., C); mask: x's shape without C, or broadcastable to it with size-1 axes."""
    if not train:
      inv = jax.lax.rsqrt(self.var[...] + self.epsilon) * self.scale[...]
      return (x.astype(STATS_DTYPE) * inv + (self.bias[...] - self.mean[...] * inv)).astype(x.dtype)
    if mask.ndim != x.ndim - 1:
      raise ValueError(f"mask of shape {mask.shape} for activations of shape {x.shape}")
    inner = tuple(i for i in range(mask.ndim) if mask.shape[i] == 1 and x.shape[i] != 1)
    weights = mask[..., None].astype(STATS_DTYPE)
    y, mean, var, count = _train_batch_norm(
      x, weights, self.scale[...], self.bias[...], self.epsilon, inner
    )
    mean, var, count = jax.lax.stop_gradient((mean, var, count))
    unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
    self.mean[...] = (1.0 - self.momentum) * self.mean[...] + self.momentum * mean
    self.var[...] = (1.0 - self.momentum) * self.var[...] + self.momentum * unbiased
    return y


class GlobalLayerNorm(nnx.Module):
  """Normalises each clip over channels and its valid time steps (Conv-TasNet's gLN)."""

  def __init__(self, num_features: int, *, epsilon: float = 1e-8, rngs: nnx.Rngs):
    del rngs
    self.epsilon = epsilon
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    """x: (B, T, C); mask: (B, T)."""
    x32 = x.astype(STATS_DTYPE)
    weights = mask[..., None].astype(STATS_DTYPE)
    count = jnp.maximum(jnp.sum(weights, axis=(1, 2), keepdims=True) * x.shape[-1], 1.0)
    mean = jnp.sum(x32 * weights, axis=(1, 2), keepdims=True) / count
    var = jnp.sum(jnp.square(x32 - mean) * weights, axis=(1, 2), keepdims=True) / count
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
    return y.astype(x.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis with float32 statistics (PyTorch's eps default)."""

  def __init__(self, num_features: int, *, epsilon: float = 1e-5, rngs: nnx.Rngs):
    del rngs
    self.epsilon = epsilon
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(STATS_DTYPE)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]
    return y.astype(x.dtype)


class PReLU(nnx.Module):
  """PReLU with one slope shared by all channels."""

  def __init__(self, init: float = 0.25):
    self.slope = nnx.Param(jnp.full((1,), init, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return jnp.where(x >= 0, x, self.slope[...].astype(x.dtype) * x)


class MultiHeadAttention(nnx.Module):
  """Multi-head attention laid out like torch.nn.MultiheadAttention (contiguous head channels).

  Keys outside `key_mask` get no weight. Queries of padded steps still produce finite values, so
  fully padded rows (batch filler) never introduce NaNs.
  """

  def __init__(self, dim: int, num_heads: int, *, dropout: float, dtype, rngs: nnx.Rngs):
    if dim % num_heads:
      raise ValueError(f"attention width {dim} is not divisible by {num_heads} heads")
    self.num_heads = num_heads
    self.dropout_rate = dropout
    linear = lambda: nnx.Linear(dim, dim, dtype=dtype, rngs=rngs)
    self.query, self.key, self.value, self.out = linear(), linear(), linear(), linear()

  def __call__(
    self,
    query: jax.Array,
    key_value: jax.Array,
    key_mask: jax.Array,
    *,
    train: bool,
    rngs: nnx.Rngs | None,
  ) -> jax.Array:
    """query: (B, Tq, D); key_value: (B, Tk, D); key_mask: (B, Tk)."""
    split = lambda x: einops.rearrange(x, "b t (heads d) -> b t heads d", heads=self.num_heads)
    q, k, v = split(self.query(query)), split(self.key(key_value)), split(self.value(key_value))
    q = q * jnp.asarray(1.0 / math.sqrt(q.shape[-1]), q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=STATS_DTYPE)
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(STATS_DTYPE).min)
    weights = jax.nn.softmax(logits, axis=-1)
    if train and self.dropout_rate > 0:
      keep = jax.random.bernoulli(rngs.dropout(), 1.0 - self.dropout_rate, weights.shape)
      weights = jnp.where(keep, weights / (1.0 - self.dropout_rate), 0.0)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    return self.out(einops.rearrange(out, "b q heads d -> b q (heads d)"))


class AttentionLayer(nnx.Module):
  """Post-norm transformer layer: queries from `target`, keys, values and the residual from
  `source`.

  With source = target this is torch.nn.TransformerEncoderLayer (the teachers); with different
  inputs it is TalkNet's cross-attention layer.
  """

  def __init__(
    self, dim: int, num_heads: int, ffn_dim: int, *, dropout: float, dtype, rngs: nnx.Rngs
  ):
    self.dropout_rate = dropout
    self.self_attn = MultiHeadAttention(dim, num_heads, dropout=dropout, dtype=dtype, rngs=rngs)
    self.linear1 = nnx.Linear(dim, ffn_dim, dtype=dtype, rngs=rngs)
    self.linear2 = nnx.Linear(ffn_dim, dim, dtype=dtype, rngs=rngs)
    self.norm1 = LayerNorm(dim, rngs=rngs)
    self.norm2 = LayerNorm(dim, rngs=rngs)

  def _dropout(self, x, train, rngs):
    if not train or self.dropout_rate == 0:
      return x
    keep = jax.random.bernoulli(rngs.dropout(), 1.0 - self.dropout_rate, x.shape)
    return jnp.where(keep, x / (1.0 - self.dropout_rate), jnp.zeros((), x.dtype))

  def __call__(
    self,
    source: jax.Array,
    target: jax.Array,
    mask: jax.Array,
    *,
    train: bool,
    rngs: nnx.Rngs | None = None,
  ) -> jax.Array:
    attended = self.self_attn(target, source, mask, train=train, rngs=rngs)
    x = self.norm1(source + self._dropout(attended, train, rngs))
    hidden = self._dropout(jax.nn.relu(self.linear1(x)), train, rngs)
    return self.norm2(x + self._dropout(self.linear2(hidden), train, rngs))
