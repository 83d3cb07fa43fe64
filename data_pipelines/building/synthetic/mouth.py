"""Mouth shapes: per-frame viseme parameters, and drawing them onto the face, all frames at once.

The lips are a superellipse (round at roundness 1, boxy at 0) around an inner opening of the same
shape; upper and lower teeth fill bands of the opening from its top and bottom edges, the tongue
fills it from below.
"""

import numpy as np
import scipy.ndimage

from data_pipelines.building.synthetic import phonemes, shapes, speakers

_COARTICULATION = np.array([0.2, 0.6, 0.2], np.float32)  # the lips cannot jump between frames
_SEGMENT_JITTER = 0.04  # per-segment variation of width and roundness (std, relative)
_CAVITY, _TEETH, _TONGUE = 30.0, 215.0, 120.0
_MAX_TEETH_PX = 3.5
_PATCH_HALF_HEIGHT, _PATCH_HALF_WIDTH = 18, 26  # the drawn region around the mouth centre
MIDLINE = 55.5  # the face's vertical axis of symmetry in pixel coordinates


def viseme_track(
  rng: np.random.Generator,
  shapes: np.ndarray,
  utterance: phonemes.Utterance,
  *,
  smoothing_frames: float = 0.0,
) -> np.ndarray:
  """Per-frame viseme parameters (T, len(VISEME_FIELDS)) of the mouth shapes `shapes` (T, 6):
  `phonemes.VISEME_PARAMS[ids]` for a mouth saying phoneme ids, or a generator's own shapes.

  The opening is scaled by the utterance's per-segment emphasis, as the audio's loudness is; width
  and roundness vary a little from segment to segment.
  smoothing_frames: 0 for natural coarticulation; > 0 low-passes the track with a Gaussian of that
  standard deviation instead (a talking-head generator's over-smooth mouth).
  """
  num_segments = int(utterance.segments.max()) + 1
  jitter = 1.0 + _SEGMENT_JITTER * rng.standard_normal((num_segments, 2)).astype(np.float32)
  track = np.array(shapes, np.float32)
  track[:, phonemes.OPENING] *= utterance.emphasis
  track[:, [phonemes.WIDTH, phonemes.ROUNDNESS]] *= jitter[utterance.segments]
  track[:, phonemes.ROUNDNESS] = np.clip(track[:, phonemes.ROUNDNESS], 0.0, 1.0)
  if smoothing_frames > 0:
    return scipy.ndimage.gaussian_filter1d(track, smoothing_frames, axis=0, mode="nearest")
  return scipy.ndimage.convolve1d(track, _COARTICULATION, axis=0, mode="nearest")


def outline(face: speakers.Face, track: np.ndarray):
  """Lip geometry per frame: (half width, inner half-height, upper lip, lower lip thickness) px."""
  opening, width, roundness = (
    track[:, i] for i in (phonemes.OPENING, phonemes.WIDTH, phonemes.ROUNDNESS)
  )
  return (
    face.mouth_half_width * width,
    face.mouth_opening * np.maximum(opening, 0.0),
    face.lip_thickness * (0.8 + 0.6 * roundness),
    face.lip_thickness * (1.0 + 0.6 * roundness),
  )


def patch_slices(face: speakers.Face) -> tuple[slice, slice]:
  """Rows and columns of the face frame that draw_mouths repaints."""
  top = int(round(face.mouth_y)) - _PATCH_HALF_HEIGHT
  left = int(round(MIDLINE)) - _PATCH_HALF_WIDTH
  return slice(top, top + 2 * _PATCH_HALF_HEIGHT), slice(left, left + 2 * _PATCH_HALF_WIDTH)


def draw_mouths(frames: np.ndarray, face: speakers.Face, track: np.ndarray) -> None:
  """Paints one mouth per frame into frames (T, H, W) float32, in place, in face coordinates."""
  rows, cols = patch_slices(face)
  v = (np.arange(rows.start, rows.stop, dtype=np.float32) - face.mouth_y)[None, :, None]
  u = np.abs(np.arange(cols.start, cols.stop, dtype=np.float32) - MIDLINE)[None, None, :]
  half_width, half_opening, upper_lip, lower_lip = (
    a.astype(np.float32)[:, None, None] for a in outline(face, track)
  )
  roundness, upper_teeth, lower_teeth, tongue = (
    track[:, i, None, None]
    for i in (phonemes.ROUNDNESS, phonemes.UPPER_TEETH, phonemes.LOWER_TEETH, phonemes.TONGUE)
  )
  exponent = 2.0 + 3.0 * (1.0 - roundness)

  lip_height = half_opening + np.where(v < 0, upper_lip, lower_lip)
  lips = shapes.coverage(u, v, half_width, lip_height, exponent)
  inner_width = np.maximum(half_width - 1.0, 0.5)
  inner = shapes.coverage(u, v, inner_width, np.maximum(half_opening, 1e-3), exponent)
  upper_band = upper_teeth * np.minimum(half_opening, _MAX_TEETH_PX)
  lower_band = lower_teeth * np.minimum(half_opening, _MAX_TEETH_PX)
  across = np.clip(0.8 * inner_width - u + 0.5, 0.0, 1.0)  # teeth and tongue stop short of corners
  upper_teeth_mask = inner * across * np.clip(upper_band - half_opening - v, 0.0, 1.0)
  lower_teeth_mask = inner * across * np.clip(v - half_opening + lower_band, 0.0, 1.0)
  tongue_mask = (
    inner
    * np.clip(0.65 * inner_width - u + 0.5, 0.0, 1.0)
    * np.clip(v - half_opening * (1.0 - 1.2 * tongue), 0.0, 1.0)
  )
  # Where the lips meet, a dark seam.
  seam = lips * (1.0 - inner) * np.exp(-np.square(v / 0.6)) * np.clip(inner_width - u, 0.0, 1.0)

  patch = frames[:, rows, cols]  # a view: painting it paints the frames
  lip_shade = face.skin - face.lip_darkness + 12.0 * roundness - np.where(v < 0, 8.0, 0.0)
  patch += lips * (lip_shade - patch)
  patch += inner * (_CAVITY - patch)
  patch += seam * 0.6 * (_CAVITY - patch)
  patch += upper_teeth_mask * (_TEETH - patch)
  patch += lower_teeth_mask * (_TEETH - patch)
  patch += tongue_mask * (_TONGUE - patch)


# Traces that lip-sync generators leave on the mouth patch they re-render (see patch_artefact).
ARTEFACTS = ("pasted", "flicker", "sharpened")
_FEATHER_PX = 2.0  # the blend mask ramps from 0 to 1 over this many pixels inside
_PASTE_BLUR_PX = (0.8, 1.2)  # Gaussian std of the pasted patch's blur
_PASTE_GAIN = (0.05, 0.09)  # relative gain mismatch of the pasted patch (either sign)
_FLICKER_GAIN = (0.025, 0.04)  # std of the per-frame relative gain of the patch
_SHARPEN_AMOUNT = (0.8, 1.2)  # unsharp masking: x + amount (x - blur(x))
_SHARPEN_BLUR_PX = 1.0


def blend_mask(face: speakers.Face) -> tuple[tuple[slice, slice], np.ndarray]:
  """The mouth patch's slices and a mask over it: 1 inside, ramping to 0 towards its edges."""
  rows, cols = patch_slices(face)
  inside = lambda n: np.minimum(np.arange(n) + 0.5, n - 0.5 - np.arange(n)) / _FEATHER_PX
  mask = np.minimum(inside(rows.stop - rows.start)[:, None], inside(cols.stop - cols.start)[None])
  return (rows, cols), np.clip(mask, 0.0, 1.0).astype(np.float32)


def patch_artefact(
  rng: np.random.Generator, frames: np.ndarray, face: speakers.Face, kind: str
) -> None:
  """Leaves a lip-sync generator's trace on the mouth patch of frames (T, H, W) float32, in place.

  Applied in face coordinates, so the trace moves with the head as a re-rendered patch does.
  'pasted': the patch is blurred and blended in with a gain that differs from the face's, which
  leaves a seam along its edge (Wav2Lip-like); 'flicker': the patch's gain changes from frame to
  frame, as frames generated one by one do; 'sharpened': the patch is sharpened by unsharp
  masking, as a restoration stage does (VideoReTalk-like).
  """
  (rows, cols), mask = blend_mask(face)
  patch = frames[:, rows, cols]  # a view: changing it changes the frames
  if kind == "pasted":
    blurred = scipy.ndimage.gaussian_filter(frames, (0.0, *[rng.uniform(*_PASTE_BLUR_PX)] * 2))
    gain = 1.0 + rng.choice((-1.0, 1.0)) * rng.uniform(*_PASTE_GAIN)
    target = gain * blurred[:, rows, cols]
  elif kind == "flicker":
    gains = 1.0 + rng.uniform(*_FLICKER_GAIN) * rng.standard_normal(len(frames))
    target = gains.astype(np.float32)[:, None, None] * patch
  elif kind == "sharpened":
    blurred = scipy.ndimage.gaussian_filter(frames, (0.0, _SHARPEN_BLUR_PX, _SHARPEN_BLUR_PX))
    target = patch + rng.uniform(*_SHARPEN_AMOUNT) * (patch - blurred[:, rows, cols])
  else:
    raise ValueError(f"unknown mouth artefact {kind!r}; choose one of {ARTEFACTS}")
  patch += mask * (target - patch)
