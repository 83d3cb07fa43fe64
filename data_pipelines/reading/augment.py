"""The reference's face augmentation: one kind per clip, the same warp for all its frames.

Kinds, drawn uniformly: original, horizontal flip, crop (square of side int(112 U(0.7, 1)), top-left
corner uniform in [0, 112 - side), resized back to 112x112 bilinearly) and rotation (angle
U(-15, 15) degrees about (56, 56), scale 1, bilinear, zero border).

The host only draws per-clip parameters (`sample_params`, in the loader's batch plan); the train
step warps on the accelerator with `apply`. Every kind is an affine map from output to source
pixel coordinates, so one bilinear sampler does all four. The maps follow OpenCV's conventions,
which the reference used: `cv2.flip`, `cv2.resize` (pixel centres at +0.5, source coordinates
clamped to the crop) and `cv2.warpAffine` with `cv2.getRotationMatrix2D` (zero outside the image).
"""

import jax
import jax.numpy as jnp
import numpy as np

from data_pipelines import schema

KINDS = ("original", "flip", "crop", "rotate")
ORIGINAL, FLIP, CROP, ROTATE = range(len(KINDS))
MAX_ROTATION_DEGREES = 15.0
MIN_CROP_FRACTION = 0.7
PARAM_DTYPES = {
  "kind": np.int32,
  "angle": np.float32,
  "crop_x": np.int32,
  "crop_y": np.int32,
  "crop_side": np.int32,
}


def identity_params(size: int) -> dict[str, np.ndarray]:
  """Parameters that leave `size` clips unchanged (kind original)."""
  params = {name: np.zeros(size, dtype) for name, dtype in PARAM_DTYPES.items()}
  params["crop_side"][:] = schema.FACE_SIZE
  return params


def sample_params(rng: np.random.Generator, size: int) -> dict[str, np.ndarray]:
  """Draws the parameters of `size` clips: (size,) arrays named as in PARAM_DTYPES.

  Every field is drawn for every clip (only the kind's own fields matter), so a clip's draws do
  not depend on the kinds of the clips before it.
  """
  kind = rng.integers(0, len(KINDS), size)
  angle = rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES, size)
  side = (schema.FACE_SIZE * rng.uniform(MIN_CROP_FRACTION, 1.0, size)).astype(np.int64)
  crop_x = rng.integers(0, schema.FACE_SIZE - side)
  crop_y = rng.integers(0, schema.FACE_SIZE - side)
  params = identity_params(size)
  params["kind"][:] = kind
  params["angle"][:] = np.where(kind == ROTATE, angle, 0.0)
  is_crop = kind == CROP
  params["crop_x"][:] = np.where(is_crop, crop_x, 0)
  params["crop_y"][:] = np.where(is_crop, crop_y, 0)
  params["crop_side"][:] = np.where(is_crop, side, schema.FACE_SIZE)
  return params


def _source_coordinates(params: dict, height: int, width: int):
  """(B, H, W) source x and y of every output pixel, and the (B,) box they are clamped to."""
  v, u = jnp.meshgrid(
    jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
  )
  u, v = u[None], v[None]
  kind = params["kind"][:, None, None]

  # Rotation: getRotationMatrix2D maps source to output by R(angle) about the centre; warpAffine
  # samples the inverse, a rotation by -angle.
  theta = jnp.deg2rad(params["angle"].astype(jnp.float32))[:, None, None]
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  centre_x, centre_y = width / 2, height / 2
  rotate_x = cos * (u - centre_x) - sin * (v - centre_y) + centre_x
  rotate_y = sin * (u - centre_x) + cos * (v - centre_y) + centre_y

  # Crop resized to full size: cv2.resize's source position of output pixel u is
  # (u + 0.5) * side / size - 0.5 within the crop, clamped to the crop.
  side = params["crop_side"].astype(jnp.float32)[:, None, None]
  crop_x = params["crop_x"].astype(jnp.float32)[:, None, None]
  crop_y = params["crop_y"].astype(jnp.float32)[:, None, None]
  resize_x = crop_x + (u + 0.5) * side / width - 0.5
  resize_y = crop_y + (v + 0.5) * side / height - 0.5

  source_x = jnp.select(
    [kind == FLIP, kind == CROP, kind == ROTATE],
    [jnp.broadcast_to(width - 1 - u, rotate_x.shape), resize_x, rotate_x],
    jnp.broadcast_to(u, rotate_x.shape),
  )
  source_y = jnp.select(
    [kind == CROP, kind == ROTATE], [resize_y, rotate_y], jnp.broadcast_to(v, rotate_y.shape)
  )
  # Only a crop clamps (to its own pixels); other kinds sample zeros outside the image.
  is_crop = params["kind"] == CROP
  low_x = jnp.where(is_crop, crop_x[:, 0, 0], -jnp.inf)
  high_x = jnp.where(is_crop, crop_x[:, 0, 0] + side[:, 0, 0] - 1, jnp.inf)
  low_y = jnp.where(is_crop, crop_y[:, 0, 0], -jnp.inf)
  high_y = jnp.where(is_crop, crop_y[:, 0, 0] + side[:, 0, 0] - 1, jnp.inf)
  source_x = jnp.clip(source_x, low_x[:, None, None], high_x[:, None, None])
  source_y = jnp.clip(source_y, low_y[:, None, None], high_y[:, None, None])
  return source_x, source_y


def apply(faces: jax.Array, params: dict) -> jax.Array:
  """Warps each clip of `faces` (B, T, H, W) by its parameters (a dict of (B,) arrays).

  Bilinear sampling with zeros outside the image; uint8 faces are rounded back to uint8 (as
  OpenCV returns them), float faces stay float. jit-compatible; cost: four gathers per pixel.
  """
  batch, frames, height, width = faces.shape
  source_x, source_y = _source_coordinates(params, height, width)
  x0, y0 = jnp.floor(source_x), jnp.floor(source_y)
  fx, fy = source_x - x0, source_y - y0
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  pixels = faces.reshape(batch, frames, height * width).astype(jnp.float32)

  def tap(x, y, weight):
    inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    flat = (jnp.clip(y, 0, height - 1) * width + jnp.clip(x, 0, width - 1)).reshape(batch, 1, -1)
    values = jnp.take_along_axis(pixels, flat, axis=2)
    return values * jnp.where(inside, weight, 0.0).reshape(batch, 1, -1)

  warped = (
    tap(x0, y0, (1 - fx) * (1 - fy))
    + tap(x0 + 1, y0, fx * (1 - fy))
    + tap(x0, y0 + 1, (1 - fx) * fy)
    + tap(x0 + 1, y0 + 1, fx * fy)
  )
  warped = warped.reshape(faces.shape)
  if faces.dtype == jnp.uint8:
    return jnp.clip(jnp.round(warped), 0, 255).astype(jnp.uint8)
  return warped.astype(faces.dtype)
