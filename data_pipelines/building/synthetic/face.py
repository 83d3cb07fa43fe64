"""Face frames: the still face drawn once, eyes and mouth per frame, then head motion and camera.

Everything is drawn in face coordinates, then each frame is moved by its head pose (rotation, scale,
translation about the frame centre) and lit; the pose stays small enough that the mouth never
leaves the teachers' mouth box (rows 0.5-1.0, columns 0.2-0.8 of the frame).
"""

import cv2
import numpy as np
import scipy.ndimage

from data_pipelines import schema
from data_pipelines.building.synthetic import mouth, shapes, speakers

SIZE = schema.FACE_SIZE
MAX_ROTATION_DEGREES = 4.0
MAX_TRANSLATION_PX = 3.0
MAX_SCALE_CHANGE = 0.02
_BLINKS_PER_FRAME = 1.0 / 75.0
_BLINK_OPENNESS = (0.4, 0.0, 0.5)
_SCLERA, _IRIS = 200.0, 40.0
_LIGHT_GAIN, _LIGHT_SLOPE = 0.12, 0.15  # frame-to-frame lighting changes, relative
_SENSOR_NOISE = (1.0, 3.0)  # grey levels (std)
_RE_RENDERED_NOISE = 0.3  # a generator's frames carry this fraction of the sensor noise
_BLOCK = 8


def render_faces(
  rng: np.random.Generator,
  face: speakers.Face,
  track: np.ndarray,
  *,
  re_rendered: bool,
  mouth_artefact: str = "",
) -> tuple[np.ndarray, np.ndarray]:
  """Frames (T, 112, 112) uint8 of `face` saying the viseme track (T, 6), and head poses (T, 2, 3).

  re_rendered: a talking-head generator's texture (blur, compression blocks, ringing, little noise).
  mouth_artefact: one of mouth.ARTEFACTS, a lip-sync generator's trace on the mouth patch ('' none).
  A pose maps face coordinates (x, y, 1) to frame coordinates.
  """
  num_frames = len(track)
  frames = np.repeat(_still_face(face)[None], num_frames, axis=0)
  _draw_eyes(frames, face, _blinks(rng, num_frames))
  mouth.draw_mouths(frames, face, track)
  if mouth_artefact:
    mouth.patch_artefact(rng, frames, face, mouth_artefact)

  angle, dx, dy, scale, gain, slope = _wander(rng, num_frames, 6)
  poses = np.empty((num_frames, 2, 3), np.float32)
  for t in range(num_frames):
    poses[t] = cv2.getRotationMatrix2D(
      (mouth.MIDLINE, mouth.MIDLINE),
      MAX_ROTATION_DEGREES * angle[t],
      1.0 + MAX_SCALE_CHANGE * scale[t],
    )
    poses[t, :, 2] += MAX_TRANSLATION_PX * np.array([dx[t], dy[t]])
    frames[t] = cv2.warpAffine(
      frames[t], poses[t], (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
  across = (np.arange(SIZE, dtype=np.float32) - mouth.MIDLINE) / (SIZE / 2)
  frames *= (1.0 + _LIGHT_GAIN * gain)[:, None, None] * (
    1.0 + _LIGHT_SLOPE * slope[:, None, None] * across[None, None, :]
  )

  noise = rng.uniform(*_SENSOR_NOISE)
  if re_rendered:
    frames = _re_rendered_texture(rng, frames)
    noise *= _RE_RENDERED_NOISE
  frames += noise * rng.standard_normal(frames.shape, dtype=np.float32)
  if not np.all(np.isfinite(frames)):  # a degenerate shape would otherwise cast to garbage
    raise FloatingPointError("rendered face frames hold non-finite values")
  return np.clip(np.round(frames), 0, 255).astype(np.uint8), poses


def _still_face(face: speakers.Face) -> np.ndarray:
  """Background, head, hair, brows, eye sockets and nose (112, 112) float32; no eyes or mouth."""
  y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
  image = face.background + 12.0 * (y / SIZE - 0.5)
  across = (x - mouth.MIDLINE) / face.head_half_width
  radius = np.sqrt(across**2 + ((y - face.head_centre_y) / face.head_half_height) ** 2)
  head = np.clip((1.0 - radius) * face.head_half_width + 0.5, 0.0, 1.0)
  image += head * (face.skin * (1.08 - 0.3 * radius**2) - image)
  hair = head * np.clip(face.hairline_y + 14.0 * across**2 - y + 0.5, 0.0, 1.0)
  image += hair * (face.hair - image)

  from_eye = np.abs(np.abs(x - mouth.MIDLINE) - face.eye_spacing)
  socket = np.exp(
    -((from_eye / (face.eye_half_width + 3.0)) ** 2)
    - ((y - face.eye_y) / (face.eye_half_height + 3.0)) ** 2
  )
  image -= 15.0 * socket
  brow_width = face.eye_half_width + 2.5
  brow_y = face.eye_y - face.brow_gap - 2.0 * (1.0 - (from_eye / brow_width) ** 2)
  brow = np.clip(1.3 - np.abs(y - brow_y), 0.0, 1.0) * np.clip(brow_width - from_eye, 0.0, 1.0)
  image += brow * (face.hair - image)

  ridge = (
    np.exp(-(((x - mouth.MIDLINE - 3.5) / 1.5) ** 2))
    * np.clip((y - face.eye_y - 4.0) / (face.nose_y - face.eye_y - 4.0), 0.0, 1.0)
    * (y < face.nose_y)
  )
  image -= 18.0 * ridge
  nostrils = shapes.coverage(
    np.abs(np.abs(x - mouth.MIDLINE) - 4.0), y - face.nose_y - 1.0, 2.2, 1.2
  )
  image += nostrils * (0.45 * face.skin - image)
  return image


def _blinks(rng, num_frames) -> np.ndarray:
  """Eye openness per frame: 1, with three-frame blinks about every three seconds."""
  openness = np.ones(num_frames, np.float32)
  for start in np.flatnonzero(rng.random(num_frames) < _BLINKS_PER_FRAME):
    blink = np.asarray(_BLINK_OPENNESS[: num_frames - start], np.float32)
    openness[start : start + len(blink)] = np.minimum(openness[start : start + len(blink)], blink)
  return openness


def _draw_eyes(frames, face, openness) -> None:
  """Paints both eyes (sclera, iris, upper lid) at each frame's openness, in place."""
  top, left = int(face.eye_y) - 6, int(mouth.MIDLINE - face.eye_spacing - face.eye_half_width) - 3
  bottom, right = int(face.eye_y) + 7, SIZE - left
  y = (np.arange(top, bottom, dtype=np.float32) - face.eye_y)[None, :, None]
  x = np.abs(np.abs(np.arange(left, right, dtype=np.float32) - mouth.MIDLINE) - face.eye_spacing)[
    None, None, :
  ]
  half_height = face.eye_half_height * openness[:, None, None] + 1e-3
  sclera = shapes.coverage(x, y, face.eye_half_width, half_height)
  iris = sclera * np.clip(2.8 - np.sqrt(x * x + y * y), 0.0, 1.0)
  lid = np.clip(1.0 - np.abs(y + half_height), 0.0, 1.0) * np.clip(
    face.eye_half_width - x, 0.0, 1.0
  )
  patch = frames[:, top:bottom, left:right]  # a view: painting it paints the frames
  patch += sclera * (_SCLERA - patch)
  patch += iris * (_IRIS - patch)
  patch += lid * 0.7 * (0.5 * face.hair - patch)


def _wander(rng, num_frames, count) -> np.ndarray:
  """count slow random signals (count, T) in [-1, 1]: sums of three 0.1-0.6 Hz sinusoids."""
  seconds = np.arange(num_frames, dtype=np.float32) / schema.FPS
  frequency = rng.uniform(0.1, 0.6, (count, 3, 1))
  phase = rng.uniform(0.0, 2.0 * np.pi, (count, 3, 1))
  amplitude = rng.uniform(0.2, 1.0, (count, 3, 1))
  waves = amplitude * np.sin(2.0 * np.pi * frequency * seconds + phase)
  return (waves.sum(axis=1) / amplitude.sum(axis=1)).astype(np.float32)


def _re_rendered_texture(rng, frames) -> np.ndarray:
  """Blur, 8x8 compression blocks and ringing (unsharp overshoot), as generated frames show."""
  frames = scipy.ndimage.gaussian_filter(frames, (0.0, *[rng.uniform(0.7, 1.1)] * 2))
  blocks = frames.reshape(len(frames), SIZE // _BLOCK, _BLOCK, SIZE // _BLOCK, _BLOCK)
  blocky = np.broadcast_to(blocks.mean(axis=(2, 4), keepdims=True), blocks.shape)
  frames = frames + rng.uniform(0.1, 0.2) * (blocky.reshape(frames.shape) - frames)
  ringing = frames - scipy.ndimage.gaussian_filter(frames, (0.0, 1.5, 1.5))
  return frames + rng.uniform(0.5, 0.9) * ringing
