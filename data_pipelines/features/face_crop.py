"""Faces in videos of people in a scene: decode, track the face with a Haar cascade, crop.

The corpora (FakeAVCeleb, CMDFD, the synthetic corpus) hold face crops already, and
video.read_faces makes the whole frame the face. Videos found elsewhere show a person somewhere in a
larger frame; here the face is found with OpenCV's frontal-face Haar cascade, whose XML file ships
inside the opencv-python wheels (`cv2.data`), so detection runs offline, and cropped to the same
grey 112x112 faces.

Tracking: the cascade runs on every `detect_every`-th frame, downscaled so that its longer side is
at most DETECTION_SIDE pixels; the largest face found in a frame is that frame's detection. A
running median over consecutive detections removes isolated false positives, and every frame takes
the box interpolated linearly between the detections around it (held before the first and after
the last), so the crop follows the head without jitter.

Crop: a square `crop_scale` times the detection's side around its centre (the cascade's box spans
brows to chin; the default margin shows the whole face, as the corpora's crops do), with parts
outside the frame filled by repeating the edge pixels, converted to grey by the same luma rule as
video.read_faces and resized to 112x112 (cv2's INTER_AREA when shrinking, INTER_LINEAR when
enlarging).

Two passes over the file, one to detect and one to crop, keep memory at a few frames whatever the
video's resolution.

Needs OpenCV 4 (opencv-python-headless < 5): OpenCV 5 moved the cascade classifier out of the main
module and its wheels no longer carry the cascade files.
"""

import contextlib
import dataclasses
import functools
import math
import pathlib
from typing import Iterator

import av
import cv2
import numpy as np
import scipy.ndimage

from data_pipelines import schema
from data_pipelines.features import video

DETECTION_SIDE = 640  # longest side (px) of the frames the cascade searches
DEFAULT_DETECT_EVERY = 5  # run the detector on every 5th frame (5 times a second at 25 fps)
DEFAULT_CROP_SCALE = 1.3  # crop side / detection side
DEFAULT_MIN_DETECTED_FRACTION = 0.2  # of the sampled frames; fewer detections: no face
_MEDIAN_DETECTIONS = 5  # running median window over consecutive detections
_MIN_FACE_FRACTION = 0.1  # smallest face searched for, as a fraction of the shorter side
_CASCADE_FILE = "haarcascade_frontalface_default.xml"
# video.read_faces's luma rules, so that the faces here are the corpus pipeline's.
_LUMA_CONVERSIONS = video._LUMA_CONVERSIONS  # pylint: disable=protected-access


class NoFaceError(video.VideoError):
  """The detector found no face (or too few to follow one) in the video."""


@dataclasses.dataclass(frozen=True)
class FaceTrack:
  """Where the face is in every frame: square boxes in frame pixels."""

  centres: np.ndarray  # (T, 2) float32 x, y
  sides: np.ndarray  # (T,) float32 detection side (before crop_scale)
  sampled: int  # frames the detector ran on
  detected: int  # of those, frames where it found a face


@dataclasses.dataclass(frozen=True)
class VideoFaces:
  """Faces of one video: `frames` (T, 112, 112) uint8 at the video's own `fps`.

  `track` is None when the whole frame was taken as the face (no detection).
  """

  frames: np.ndarray
  fps: float
  track: FaceTrack | None


@functools.cache
def haar_face_detector() -> "cv2.CascadeClassifier":
  """OpenCV's frontal-face Haar cascade, read from the opencv-python wheel's data folder."""
  if not hasattr(cv2, "CascadeClassifier"):
    raise RuntimeError(
      f"OpenCV {cv2.__version__} has no Haar cascade classifier (OpenCV 5 moved "
      "it out of the main module); install opencv-python-headless<5"
    )
  path = pathlib.Path(cv2.data.haarcascades) / _CASCADE_FILE
  detector = cv2.CascadeClassifier(str(path))
  if detector.empty():
    raise RuntimeError(
      f"cannot load the Haar cascade {path}; install opencv-python-headless<5, whose wheel ships it"
    )
  return detector


def detect_largest_face(grey: np.ndarray) -> tuple[float, float, float] | None:
  """(centre x, centre y, side) in pixels of the largest face in a grey frame, or None."""
  height, width = grey.shape
  scale = min(1.0, DETECTION_SIDE / max(height, width))
  small = grey
  if scale < 1.0:
    small = cv2.resize(
      grey, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA
    )
  # 24 px is the cascade's own window, the smallest face it can find.
  min_side = max(24, round(_MIN_FACE_FRACTION * min(small.shape)))
  faces = haar_face_detector().detectMultiScale(
    small, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
  )
  if len(faces) == 0:
    return None
  x, y, w, h = max(faces, key=lambda box: box[2] * box[3])
  return (x + w / 2) / scale, (y + h / 2) / scale, (w + h) / 2 / scale


def track_face(
  detections: dict[int, tuple[float, float, float]], num_frames: int, sampled: int
) -> FaceTrack:
  """Smooths the detections {frame: (x, y, side)} and interpolates them to every frame."""
  if not detections:
    raise ValueError("no detections to track")
  frames = np.array(sorted(detections))
  boxes = np.array([detections[t] for t in frames], np.float64)
  window = min(_MEDIAN_DETECTIONS, len(frames))
  boxes = scipy.ndimage.median_filter(boxes, size=(window, 1), mode="nearest")
  every_frame = np.arange(num_frames)
  smooth = np.stack([np.interp(every_frame, frames, boxes[:, k]) for k in range(3)], axis=1)
  return FaceTrack(
    centres=smooth[:, :2].astype(np.float32),
    sides=smooth[:, 2].astype(np.float32),
    sampled=sampled,
    detected=len(frames),
  )


def crop_face(
  grey: np.ndarray, centre: np.ndarray, side: float, crop_scale: float, size: int = schema.FACE_SIZE
) -> np.ndarray:
  """The square of `crop_scale * side` around `centre`, edge-padded, resized to (size, size)."""
  crop_side = max(1, round(side * crop_scale))
  x0 = round(float(centre[0]) - crop_side / 2)
  y0 = round(float(centre[1]) - crop_side / 2)
  height, width = grey.shape
  pad = max(0, -x0, -y0, x0 + crop_side - width, y0 + crop_side - height)
  if pad:
    grey = cv2.copyMakeBorder(grey, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    x0, y0 = x0 + pad, y0 + pad
  crop = grey[y0 : y0 + crop_side, x0 : x0 + crop_side]
  interpolation = cv2.INTER_AREA if crop_side > size else cv2.INTER_LINEAR
  return cv2.resize(crop, (size, size), interpolation=interpolation)


@contextlib.contextmanager
def _grey_frames(path: pathlib.Path, luma: str, max_seconds: float | None):
  """Yields (fps, iterator of grey (H, W) uint8 frames), at most `max_seconds` of them."""
  conversion = _LUMA_CONVERSIONS[luma]
  try:
    with av.open(str(path)) as container:
      if not container.streams.video:
        raise video.VideoError(f"{path}: no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      rate = stream.average_rate or stream.guessed_rate
      if not rate:
        raise video.VideoError(f"{path}: the video stream has no frame rate")
      limit = math.inf if max_seconds is None else math.ceil(max_seconds * float(rate))

      def frames() -> Iterator[np.ndarray]:
        for index, frame in enumerate(container.decode(stream)):
          if index >= limit:
            return
          yield cv2.cvtColor(frame.to_ndarray(format="rgb24"), conversion)

      yield float(rate), frames()
  except av.error.FFmpegError as e:
    raise video.VideoError(f"{path}: cannot decode video (unreadable or truncated): {e}") from e


def read_video_faces(
  path,
  *,
  detect: bool = True,
  luma: str = "bt601",
  max_seconds: float | None = None,
  detect_every: int = DEFAULT_DETECT_EVERY,
  crop_scale: float = DEFAULT_CROP_SCALE,
  min_detected_fraction: float = DEFAULT_MIN_DETECTED_FRACTION,
) -> VideoFaces:
  """Decodes a video's frames as grey 112x112 faces, found by the Haar cascade or whole.

  Args:
    path: the video file.
    detect: find and crop the face; False takes the whole frame (already face-cropped corpora),
      which gives exactly video.read_faces's frames.
    luma: 'bt601' or 'reference_bgr', as video.read_faces.
    max_seconds: decode at most this much of the video from its start; None decodes it all.
    detect_every: run the detector on every this-many-th frame.
    crop_scale: crop side over detection side.
    min_detected_fraction: fewer detections than this fraction of the sampled frames is no face.

  Returns:
    VideoFaces with the frames, the stream's average frame rate and the face track.

  Raises:
    FileNotFoundError: the file does not exist.
    VideoError: the file cannot be decoded (unreadable or truncated), or has no video stream, no
      frame rate or no frames.
    NoFaceError: detection found too few faces.
  """
  if luma not in _LUMA_CONVERSIONS:
    raise ValueError(f"luma must be one of {sorted(_LUMA_CONVERSIONS)}, got {luma!r}")
  if detect_every < 1:
    raise ValueError(f"detect_every must be at least 1, got {detect_every}")
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: video file not found")
  size = (schema.FACE_SIZE, schema.FACE_SIZE)

  if not detect:
    with _grey_frames(path, luma, max_seconds) as (fps, frames):
      faces = [cv2.resize(grey, size, interpolation=cv2.INTER_LINEAR) for grey in frames]
    if not faces:
      raise video.VideoError(f"{path}: no decodable video frames")
    return VideoFaces(frames=np.stack(faces), fps=fps, track=None)

  detections = {}
  num_frames = 0
  with _grey_frames(path, luma, max_seconds) as (fps, frames):
    for index, grey in enumerate(frames):
      num_frames += 1
      if index % detect_every == 0:
        box = detect_largest_face(grey)
        if box is not None:
          detections[index] = box
  if num_frames == 0:
    raise video.VideoError(f"{path}: no decodable video frames")
  sampled = math.ceil(num_frames / detect_every)
  needed = max(1, math.ceil(min_detected_fraction * sampled))
  if len(detections) < needed:
    raise NoFaceError(
      f"{path}: no face found (a face in {len(detections)} of {sampled} sampled "
      f"frames, at least {needed} needed)"
    )
  track = track_face(detections, num_frames, sampled)

  with _grey_frames(path, luma, max_seconds) as (_, frames):
    faces = [
      crop_face(grey, track.centres[index], track.sides[index], crop_scale)
      for index, grey in enumerate(frames)
    ]
  if len(faces) != num_frames:
    raise video.VideoError(f"{path}: decoded {num_frames} frames, then {len(faces)}")
  return VideoFaces(frames=np.stack(faces), fps=fps, track=track)
