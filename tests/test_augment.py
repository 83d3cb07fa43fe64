"""The in-graph face augmentation against OpenCV (what the reference ran) and its parameter draws.

Tolerance. Flips and the original are exact. OpenCV resizes and warps uint8 images in fixed
point, `apply` in float32; both round to uint8, so a pixel whose exact value lies near a rounding
boundary can land one level apart. `warpAffine` also snaps every source position to a 1/32-pixel
grid (INTER_BITS = 5: up to 1/64 pixel off on each axis), so a rotated pixel may differ by a
further 1/32 of the grey-level range of the 2x2 source neighbourhood it interpolates, which on
noise textures is several levels.
"""

import cv2
import jax
import numpy as np
import pytest

from data_pipelines.reading import augment

SIZE = 112


def opencv_reference(image: np.ndarray, params: dict, clip: int) -> np.ndarray:
  kind = params["kind"][clip]
  if kind == augment.ORIGINAL:
    return image
  if kind == augment.FLIP:
    return cv2.flip(image, 1)
  if kind == augment.CROP:
    x, y, side = (int(params[k][clip]) for k in ("crop_x", "crop_y", "crop_side"))
    return cv2.resize(
      image[y : y + side, x : x + side], (SIZE, SIZE), interpolation=cv2.INTER_LINEAR
    )
  rotation = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), float(params["angle"][clip]), 1)
  return cv2.warpAffine(
    image,
    rotation,
    (SIZE, SIZE),
    flags=cv2.INTER_LINEAR,
    borderMode=cv2.BORDER_CONSTANT,
    borderValue=0,
  )


def rotation_tolerance(image: np.ndarray, params: dict, clip: int) -> np.ndarray:
  """Per output pixel: 1 level of rounding plus OpenCV's 1/32-pixel position snapping."""
  rotation = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), float(params["angle"][clip]), 1)
  inverse = cv2.invertAffineTransform(rotation)
  v, u = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
  source_x = inverse[0, 0] * u + inverse[0, 1] * v + inverse[0, 2]
  source_y = inverse[1, 0] * u + inverse[1, 1] * v + inverse[1, 2]
  # Grey-level range of each 2x2 neighbourhood (zeros outside), indexed by its top-left pixel.
  padded = np.pad(image.astype(np.int32), 1)
  corners = [padded[dy : dy + SIZE + 1, dx : dx + SIZE + 1] for dy in (0, 1) for dx in (0, 1)]
  spread = np.max(corners, axis=0) - np.min(corners, axis=0)
  column = np.clip(np.floor(source_x).astype(int) + 1, 0, SIZE)
  row = np.clip(np.floor(source_y).astype(int) + 1, 0, SIZE)
  return 1 + spread[row, column] / 32


def smooth_faces(rng, clips, frames):
  base = [
    cv2.resize(
      rng.uniform(0, 255, (8, 8)).astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC
    )
    for _ in range(clips)
  ]
  noise = rng.normal(0, 3, (clips, frames, SIZE, SIZE))
  return np.clip(np.stack(base)[:, None] + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("texture", ["smooth", "noise"])
def test_apply_matches_opencv(texture):
  rng = np.random.default_rng(0)
  clips, frames = 48, 2
  faces = (
    smooth_faces(rng, clips, frames)
    if texture == "smooth"
    else rng.integers(0, 256, (clips, frames, SIZE, SIZE), dtype=np.uint8)
  )
  params = augment.sample_params(rng, clips)
  assert set(params["kind"]) == set(range(len(augment.KINDS)))
  warped = np.asarray(jax.jit(augment.apply)(faces, params))
  assert warped.dtype == np.uint8 and warped.shape == faces.shape
  for clip in range(clips):
    for frame in range(frames):
      expected = opencv_reference(faces[clip, frame], params, clip).astype(np.int32)
      difference = np.abs(warped[clip, frame].astype(np.int32) - expected)
      kind = augment.KINDS[params["kind"][clip]]
      if kind == "rotate":
        limit = rotation_tolerance(faces[clip, frame], params, clip)
      else:
        limit = 0 if kind in ("original", "flip") else 1
      assert np.all(difference <= limit), (kind, clip, difference.max())
      # Position snapping errs either way, half its bound on average.
      snapping = np.mean(limit - 1) / 2 if kind == "rotate" else 0
      assert difference.mean() < 0.2 + snapping, (kind, clip, difference.mean())


def test_float_faces_stay_float_and_identity_is_exact():
  faces = np.random.default_rng(1).uniform(0, 255, (3, 4, SIZE, SIZE)).astype(np.float32)
  out = augment.apply(faces, augment.identity_params(3))
  assert out.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(out), faces)


def test_parameter_distribution():
  draws = 40_000
  params = augment.sample_params(np.random.default_rng(2), draws)
  assert {k: v.dtype for k, v in params.items()} == {
    k: np.dtype(v) for k, v in augment.PARAM_DTYPES.items()
  }
  frequencies = np.bincount(params["kind"], minlength=4) / draws
  np.testing.assert_allclose(frequencies, 0.25, atol=0.01)  # 4.6 standard errors

  rotate = params["kind"] == augment.ROTATE
  angle = params["angle"][rotate]
  assert angle.min() >= -15 and angle.max() <= 15
  assert abs(angle.mean()) < 0.3 and abs(angle.std() - 30 / np.sqrt(12)) < 0.2
  assert np.all(params["angle"][~rotate] == 0)

  crop = params["kind"] == augment.CROP
  side, x, y = params["crop_side"][crop], params["crop_x"][crop], params["crop_y"][crop]
  assert side.min() == int(SIZE * 0.7) and side.max() == SIZE - 1  # int(112 U(0.7, 1))
  assert np.all((x >= 0) & (x < SIZE - side)) and np.all((y >= 0) & (y < SIZE - side))
  assert x.min() == 0 and y.min() == 0 and np.any(x == SIZE - side - 1)
  # The corner is uniform given the side: its mean is (SIZE - side - 1) / 2 on average.
  assert abs(np.mean(x - (SIZE - side - 1) / 2)) < 0.3
  assert np.all(params["crop_side"][~crop] == SIZE)
