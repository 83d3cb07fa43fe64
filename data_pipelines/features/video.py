"""Video: the first frames of a clip as grayscale 112x112 faces, decoded with PyAV.

The corpora hold face crops already, so a face is the whole frame converted to grey and resized,
as the reference's data loader does.
"""

import dataclasses
import pathlib

import av
import cv2
import numpy as np

from data_pipelines import schema

# cv2's conversion codes that give each luma rule when applied to RGB frames.
_LUMA_CONVERSIONS = {
  "bt601": cv2.COLOR_RGB2GRAY,  # 0.299 R + 0.587 G + 0.114 B
  "reference_bgr": cv2.COLOR_BGR2GRAY,  # the reference: R and B weights swapped
}


class VideoError(ValueError):
  """A video that cannot be used; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Faces:
  """Decoded faces of one video: `frames` (T, 112, 112) uint8 at `fps` frames per second."""

  frames: np.ndarray
  fps: float


def read_faces(path, num_frames: int | None = None, *, luma: str = "bt601") -> Faces:
  """Decodes the first `num_frames` frames (all when None) as grayscale 112x112 uint8 faces.

  Each RGB frame is converted to grey, then resized to 112x112 with cv2's bilinear INTER_LINEAR.

  Args:
    path: the video file.
    num_frames: how many frames to return from the start; None decodes the whole video.
    luma: 'bt601' (default) weighs the channels as ITU-R BT.601 luma, 0.299 R + 0.587 G + 0.114 B.
      'reference_bgr' reproduces the reference, which applies cv2.COLOR_BGR2GRAY to RGB frames and
      so computes 0.114 R + 0.587 G + 0.299 B; use it to run the authors' checkpoints as trained.

  Returns:
    Faces with the frames and the stream's average frame rate.

  Raises:
    FileNotFoundError: the file does not exist.
    VideoError: the file cannot be decoded (unreadable or truncated), has no video stream, no
      frame rate, or fewer than `num_frames` frames.
  """
  if luma not in _LUMA_CONVERSIONS:
    raise ValueError(f"luma must be one of {sorted(_LUMA_CONVERSIONS)}, got {luma!r}")
  if num_frames is not None and num_frames < 1:
    raise ValueError(f"num_frames must be at least 1, got {num_frames}")
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: video file not found")
  conversion = _LUMA_CONVERSIONS[luma]
  size = (schema.FACE_SIZE, schema.FACE_SIZE)
  faces = []
  try:
    with av.open(str(path)) as container:
      if not container.streams.video:
        raise VideoError(f"{path}: no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      rate = stream.average_rate or stream.guessed_rate
      if not rate:
        raise VideoError(f"{path}: the video stream has no frame rate")
      for frame in container.decode(stream):
        grey = cv2.cvtColor(frame.to_ndarray(format="rgb24"), conversion)
        faces.append(cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR))
        if len(faces) == num_frames:
          break
  except av.error.FFmpegError as e:
    raise VideoError(f"{path}: cannot decode video (unreadable or truncated): {e}") from e
  if not faces:
    raise VideoError(f"{path}: no decodable video frames")
  if num_frames is not None and len(faces) < num_frames:
    raise VideoError(f"{path}: has {len(faces)} decodable frames, {num_frames} asked")
  return Faces(frames=np.stack(faces), fps=float(rate))
