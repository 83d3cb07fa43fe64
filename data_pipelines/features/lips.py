"""Lip features: the reference's precomputed per-video VSR frontend outputs, (frames, 512) .npy."""

import pathlib

import numpy as np

from data_pipelines import schema


class LipsError(ValueError):
  """Lip features that cannot be used; the message names the source and the problem."""


def check_lips(lips: np.ndarray, num_frames: int, source: str) -> np.ndarray:
  """Checks (>= num_frames, 512) finite features and returns the first num_frames rows as float32.

  Args:
    lips: the features.
    num_frames: how many rows the clip needs.
    source: what to name in errors (a file, or the function that computed them).

  Raises:
    LipsError: wrong rank or width, fewer rows than needed, or non-finite values.
  """
  lips = np.asarray(lips)
  if lips.ndim != 2 or lips.shape[1] != schema.LIP_DIM:
    raise LipsError(
      f"{source}: lip features have shape {lips.shape}, expected (frames, {schema.LIP_DIM})"
    )
  if lips.shape[0] < num_frames:
    raise LipsError(f"{source}: {lips.shape[0]} rows of lip features, the clip needs {num_frames}")
  lips = lips[:num_frames].astype(np.float32)
  if not np.all(np.isfinite(lips)):
    raise LipsError(f"{source}: lip features hold non-finite values")
  return lips


def load_lips(path, num_frames: int) -> np.ndarray:
  """Reads a (frames, 512) .npy and returns its first `num_frames` rows, float32.

  Raises:
    FileNotFoundError: the file does not exist.
    LipsError: the file is not a plain numeric .npy, or fails `check_lips`.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: lip feature file not found")
  try:
    lips = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise LipsError(f"{path}: not a readable .npy array: {e}") from e
  if lips.dtype.kind not in "fiu":
    raise LipsError(f"{path}: lip features have dtype {lips.dtype}, expected numbers")
  return check_lips(lips, num_frames, str(path))
