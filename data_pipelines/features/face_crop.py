"""Faces in videos found in the wild: decode, find and follow the speaker's face, align, crop.

The corpora (FakeAVCeleb, CMDFD, the synthetic corpus) hold face crops already, and
video.read_faces makes the whole frame the face. Videos found elsewhere show people somewhere in a
larger frame; `read_video_faces` finds them (data_pipelines.features.face_detectors: YuNet by
default), follows each, chooses one, and crops it to the grey 112x112 faces the models read.

Decoding: frames keep their presentation times, so variable-frame-rate files are brought to 25 fps
by time (`times`, see clips.frames_at_schema_rate); interlaced video (frames flagged so) goes
through FFmpeg's bwdif deinterlacer first.

Tracks: the detector runs on every `detect_every`-th frame. Each detection joins the track whose
latest box it overlaps most (IoU >= 0.3, or centres closer than half a face), else starts a track;
a face that leaves the frame and re-enters where it left continues its track, elsewhere it starts
another. Tracks found on fewer than `min_detected_fraction` of the sampled frames are dropped.

Choice: with one track left, that one; with several, the speaker: the track whose mouth moves
with the audio (the largest absolute correlation, over its detections, of the three main modes
(SVD) of its aligned mouth patches' appearance with the audio's log energy around each
detection), when one clearly leads (by at least 0.1); otherwise the largest face. The result
says which face was chosen and why.

Alignment: per detection, the midpoints of the eyes and of the mouth corners and the distance
between the eyes. Along the chosen track they are smoothed (running median over 5 detections) and
interpolated to every frame (held before the first detection and after the last, linearly across
gaps while the face is away). Each frame's crop is the similarity transform that turns the
eye-to-mouth axis upright, puts its middle at (55.5, 62.5) of the 112x112 crop and scales the
face to the template's size: eyes 34 px apart and the mouth 39 px below them, at crop_scale 1.3
(other values scale about the centre). That is the synthetic corpus's framing, with the mouth in
the VSR teacher's mouth box (rows 0.5-1.0, columns 0.2-0.8), and a real face's proportions (eyes
and mouth are as far apart in ArcFace's 112 px template). The face's size is the larger of its
two distances measured against the template's, because a turned head shortens the distance
between the eyes and a nodding one the distance to the mouth, never lengthens them. Pixels
outside the frame repeat its edge. Grey by the same luma rule as video.read_faces.

Two passes over the file, one to detect and one to crop, keep memory at a few frames whatever the
video's resolution.
"""

import contextlib
import dataclasses
import math
import pathlib
from collections.abc import Callable, Iterator

import av
import av.filter
import cv2
import numpy as np
import scipy.ndimage

from data_pipelines import schema
from data_pipelines.features import face_detectors, video

DEFAULT_DETECTOR = "yunet"
DEFAULT_DETECT_EVERY = 2  # run the detector on every 2nd frame (12.5 times a second at 25 fps)
DEFAULT_CROP_SCALE = 1.3
DEFAULT_MIN_DETECTED_FRACTION = 0.2  # of the sampled frames; fewer detections: no face
# The aligned crop's template at crop_scale 1.3: the eyes' midpoint at (55.5, 43), the eyes 34 px
# apart, the mouth corners' midpoint 39 px below the eyes'.
TEMPLATE_CENTRE_X = 55.5
TEMPLATE_EYES_Y = 43.0
TEMPLATE_MOUTH_Y = 82.0
TEMPLATE_EYE_DISTANCE = 34.0
_TEMPLATE_SCALE = 1.3
_MEDIAN_DETECTIONS = 5
_MIN_IOU = 0.3
_SPEAKER_LEAD = 0.1  # correlation by which the speaker must lead the other faces
# video.read_faces's luma rules, so that the faces here are the corpus pipeline's.
_LUMA_CONVERSIONS = video._LUMA_CONVERSIONS  # pylint: disable=protected-access


class NoFaceError(video.VideoError):
  """The detector found no face (or too few to follow one) in the video."""


@dataclasses.dataclass(frozen=True)
class FaceTrack:
  """The chosen face: per frame, the eyes' and mouth's midpoints, and how it was found."""

  eyes: np.ndarray  # (T, 2) float32 x, y in frame pixels, smoothed and interpolated
  mouths: np.ndarray  # (T, 2) float32
  eye_distances: np.ndarray  # (T,) float32
  sampled: int  # frames the detector ran on
  detected: int  # of those, frames where this face was found
  faces: int  # faces followed in the video (tracks kept)
  chosen: int  # this face's number among them, in order of first appearance
  reason: str  # 'only face', 'speaking' or 'largest'
  box: tuple[float, float, float, float]  # its median detection box (x, y, w, h), frame pixels
  detector: str

  def summary(self) -> dict:
    """What predict's JSON says of the face it scored."""
    return dict(
      detector=self.detector,
      faces=self.faces,
      chosen=self.chosen,
      reason=self.reason,
      box=[round(v, 1) for v in self.box],
      sampled=self.sampled,
      detected=self.detected,
      found_fraction=round(self.detected / max(self.sampled, 1), 4),
    )


@dataclasses.dataclass(frozen=True)
class VideoFaces:
  """Faces of one video: `frames` (T, 112, 112) uint8, shown at `times` (T,) seconds from the
  first frame; `fps` is the stream's average rate. `track` is None without detection."""

  frames: np.ndarray
  times: np.ndarray
  fps: float
  track: FaceTrack | None


# ---- decoding ------------------------------------------------------------------------------------


def _deinterlaced(stream, frames: Iterator[av.VideoFrame]) -> Iterator[av.VideoFrame]:
  """The frames through FFmpeg's bwdif (one output frame per input frame)."""
  graph = av.filter.Graph()
  source = graph.add_buffer(template=stream)
  deinterlace = graph.add("bwdif", "mode=send_frame:parity=auto:deint=all")
  sink = graph.add("buffersink")
  source.link_to(deinterlace)
  deinterlace.link_to(sink)
  graph.configure()

  def drain():
    while True:
      try:
        yield graph.pull()
      except (av.error.BlockingIOError, av.error.EOFError):
        return

  for frame in frames:
    graph.push(frame)
    yield from drain()
  graph.push(None)
  yield from drain()


@contextlib.contextmanager
def _decoded(path: pathlib.Path, max_seconds: float | None):
  """Yields (average fps, iterator of (seconds from the first frame, RGB frame)), interlaced
  video deinterlaced, at most `max_seconds` of it."""
  try:
    with av.open(str(path)) as container:
      if not container.streams.video:
        raise video.VideoError(f"{path}: no video stream")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      rate = stream.average_rate or stream.guessed_rate
      if not rate:
        raise video.VideoError(f"{path}: the video stream has no frame rate")

      def frames() -> Iterator[tuple[float, np.ndarray]]:
        decoded = container.decode(stream)
        first = next(decoded, None)
        if first is None:
          return
        decoded = _chain(first, decoded)
        if first.interlaced_frame:
          decoded = _deinterlaced(stream, decoded)
        start = None
        for index, frame in enumerate(decoded):
          time = float(frame.time) if frame.time is not None else index / float(rate)
          start = time if start is None else start
          if max_seconds is not None and time - start >= max_seconds - 1e-6:
            return
          yield time - start, frame.to_ndarray(format="rgb24")

      yield float(rate), frames()
  except av.error.FFmpegError as e:
    raise video.VideoError(f"{path}: cannot decode video (unreadable or truncated): {e}") from e


def _chain(first, rest):
  yield first
  yield from rest


# ---- tracking and choice -------------------------------------------------------------------------


def _iou(a: np.ndarray, b: np.ndarray) -> float:
  x0, y0 = max(a[0], b[0]), max(a[1], b[1])
  x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
  overlap = max(0.0, x1 - x0) * max(0.0, y1 - y0)
  return overlap / (a[2] * a[3] + b[2] * b[3] - overlap)


def _same_face(a: face_detectors.Detection, b: face_detectors.Detection) -> float:
  """How well detection b continues a (0: not at all)."""
  iou = _iou(a.box, b.box)
  centre = lambda d: d.box[:2] + d.box[2:] / 2
  close = np.linalg.norm(centre(a) - centre(b)) < 0.5 * max(a.side, b.side)
  return iou if iou >= _MIN_IOU else (_MIN_IOU / 2 if close else 0.0)


def link_tracks(detections: dict[int, list[face_detectors.Detection]]) -> list[dict]:
  """Detections per sampled frame -> tracks {frame: Detection}, in order of first appearance."""
  tracks: list[dict] = []
  for frame in sorted(detections):
    taken = set()
    for detection in detections[frame]:  # best first
      candidates = [
        (_same_face(track[max(track)], detection), index)
        for index, track in enumerate(tracks)
        if index not in taken
      ]
      score, index = max(candidates, default=(0.0, -1))
      if score > 0:
        tracks[index][frame] = detection
        taken.add(index)
      else:
        tracks.append({frame: detection})
        taken.add(len(tracks) - 1)
  return tracks


def _similarity(
  eyes: np.ndarray, mouth: np.ndarray, eye_distance: float, crop_scale: float
) -> np.ndarray:
  """(2, 3) affine map of the frame to the 112x112 crop: the face onto the template."""
  axis = mouth - eyes
  length = max(float(np.hypot(*axis)), 1e-3)
  size = max(length / (TEMPLATE_MOUTH_Y - TEMPLATE_EYES_Y), eye_distance / TEMPLATE_EYE_DISTANCE)
  scale = _TEMPLATE_SCALE / crop_scale / size
  # Rotate the eye-to-mouth axis onto the crop's downward vertical.
  cos, sin = axis[1] / length, axis[0] / length
  rotation = scale * np.array([[cos, -sin], [sin, cos]])
  centre = (TEMPLATE_EYES_Y + TEMPLATE_MOUTH_Y) / 2
  target = np.array([TEMPLATE_CENTRE_X, centre])
  return np.hstack([rotation, (target - rotation @ ((eyes + mouth) / 2))[:, None]])


def crop_aligned(
  grey: np.ndarray, eyes: np.ndarray, mouth: np.ndarray, eye_distance: float, crop_scale: float
) -> np.ndarray:
  """The 112x112 aligned face of a grey frame (edges repeated past the frame's border)."""
  size = schema.FACE_SIZE
  matrix = _similarity(eyes, mouth, eye_distance, crop_scale)
  # Shrinking by more than 2x: blur first, as an area filter would, so the crop does not alias.
  shrink = 1.0 / math.hypot(matrix[0, 0], matrix[0, 1])
  if shrink > 2:
    grey = cv2.GaussianBlur(grey, (0, 0), sigmaX=0.4 * shrink)
  return cv2.warpAffine(
    grey, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
  )


def mouth_patch(grey: np.ndarray, detection: face_detectors.Detection) -> np.ndarray:
  """The detection's mouth region (the VSR teacher's mouth box of its aligned crop), float32."""
  crop = crop_aligned(
    grey, detection.eyes, detection.mouth, detection.eye_distance, DEFAULT_CROP_SCALE
  )
  return crop[56:112, 22:90].astype(np.float32)


def _audio_energy(samples: np.ndarray, rate: int, times: np.ndarray) -> np.ndarray:
  """Log mean square of the samples in the 80 ms around each time (seconds)."""
  half = int(0.04 * rate)
  centres = (np.asarray(times) * rate).astype(int)
  spans = [samples[max(c - half, 0) : c + half] for c in centres]
  return np.log(
    np.array([np.mean(np.square(s, dtype=np.float64)) if s.size else 0 for s in spans]) + 1.0
  )


def _speaking(track: dict, patches: dict, times: np.ndarray, audio) -> float:
  """How well the track's mouth follows the audio: the largest |correlation| of the audio's log
  energy with one of the three main modes of the mouth region's appearance over the track (for a
  talking face, the first is mostly the mouth opening). 0 when undefined."""
  frames = sorted(track)
  if audio is None or len(frames) < 8:
    return 0.0
  mouths = np.stack([patches[id(track[f])].ravel() for f in frames])
  mouths -= mouths.mean(axis=0)
  modes = np.linalg.svd(mouths, full_matrices=False)[0][:, :3]  # (N, 3) per-frame scores
  energy = _audio_energy(*audio, times[frames])
  if energy.std() == 0:
    return 0.0
  correlations = [abs(np.corrcoef(mode, energy)[0, 1]) for mode in modes.T if mode.std() > 0]
  return float(max(correlations, default=0.0))


def choose_track(tracks: list[dict], patches: dict, times: np.ndarray, audio) -> tuple[int, str]:
  """(index of the face to score, why): the only face, the speaker, or the largest.

  `patches`: id(detection) -> its mouth_patch; `audio`: (samples, rate) or None."""
  if len(tracks) == 1:
    return 0, "only face"
  speaking = [_speaking(t, patches, times, audio) for t in tracks]
  order = np.argsort(speaking)[::-1]
  if speaking[order[0]] - speaking[order[1]] >= _SPEAKER_LEAD:
    return int(order[0]), "speaking"
  sides = [np.median([d.side for d in t.values()]) for t in tracks]
  return int(np.argmax(sides)), "largest"


def _smoothed(track: dict, num_frames: int) -> np.ndarray:
  """(T, 5) eyes' and mouth's midpoints and eye distance of every frame: median-smoothed,
  interpolated, held."""
  frames = np.array(sorted(track))
  points = np.array(
    [[*track[f].eyes, *track[f].mouth, track[f].eye_distance] for f in frames], np.float64
  )
  window = min(_MEDIAN_DETECTIONS, len(frames))
  points = scipy.ndimage.median_filter(points, size=(window, 1), mode="nearest")
  every = np.arange(num_frames)
  return np.stack([np.interp(every, frames, points[:, k]) for k in range(5)], axis=1)


# ---- the whole video -----------------------------------------------------------------------------


def read_video_faces(
  path,
  *,
  detector: str | None = DEFAULT_DETECTOR,
  luma: str = "bt601",
  max_seconds: float | None = None,
  detect_every: int = DEFAULT_DETECT_EVERY,
  crop_scale: float = DEFAULT_CROP_SCALE,
  min_detected_fraction: float = DEFAULT_MIN_DETECTED_FRACTION,
  audio: tuple[np.ndarray, int] | None = None,
) -> VideoFaces:
  """Decodes a video's frames as grey 112x112 faces: the speaker's, aligned, or whole frames.

  Args:
    path: the video file.
    detector: a key of face_detectors.DETECTORS, to find, follow and crop a face; None takes the
      whole frame (already face-cropped corpora): video.read_faces's frames, except that
      interlaced frames are deinterlaced first.
    luma: 'bt601' or 'reference_bgr', as video.read_faces.
    max_seconds: decode at most this much of the video from its start; None decodes it all.
    detect_every: run the detector on every this-many-th frame.
    crop_scale: face crop size relative to the default framing (1.3: the corpora's).
    min_detected_fraction: a face found on fewer of the sampled frames is not followed; with no
      such face, NoFaceError.
    audio: (samples, rate) of the video's audio, to tell the speaker among several faces.

  Raises:
    FileNotFoundError: the file does not exist.
    VideoError: the file cannot be decoded, or has no video stream, no frame rate or no frames.
    NoFaceError: detection found too few faces.
    face_detectors.DetectorUnavailable: the detector's model cannot be loaded.
  """
  if luma not in _LUMA_CONVERSIONS:
    raise ValueError(f"luma must be one of {sorted(_LUMA_CONVERSIONS)}, got {luma!r}")
  if detect_every < 1:
    raise ValueError(f"detect_every must be at least 1, got {detect_every}")
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: video file not found")
  conversion = _LUMA_CONVERSIONS[luma]
  if detector is None:
    return _whole_frames(path, max_seconds, conversion)

  fps, times, detections, patches = _detect_faces(
    path, max_seconds, conversion, face_detectors.detector(detector), detect_every, audio
  )
  smooth, face_track = _follow_speaker(
    path, times, detections, patches, audio, detect_every, min_detected_fraction, detector
  )
  with _decoded(path, max_seconds) as (_, frames):
    faces = [
      crop_aligned(
        cv2.cvtColor(rgb, conversion),
        *(smooth[index, :2], smooth[index, 2:4]),
        smooth[index, 4],
        crop_scale,
      )
      for index, (_, rgb) in enumerate(frames)
    ]
  if len(faces) != len(times):
    raise video.VideoError(f"{path}: decoded {len(times)} frames, then {len(faces)}")
  return VideoFaces(np.stack(faces), times, fps, face_track)


def _whole_frames(path: pathlib.Path, max_seconds: float | None, conversion: int) -> VideoFaces:
  """Every frame, whole, as a grey FACE_SIZE square (for corpora already cropped to the face)."""
  size = (schema.FACE_SIZE, schema.FACE_SIZE)
  with _decoded(path, max_seconds) as (fps, frames):
    decoded = [
      (time, cv2.resize(cv2.cvtColor(rgb, conversion), size, interpolation=cv2.INTER_LINEAR))
      for time, rgb in frames
    ]
  if not decoded:
    raise video.VideoError(f"{path}: no decodable video frames")
  times, faces = zip(*decoded)
  return VideoFaces(np.stack(faces), np.array(times), fps, None)


def _detect_faces(
  path: pathlib.Path,
  max_seconds: float | None,
  conversion: int,
  find: Callable[[np.ndarray], list],
  detect_every: int,
  audio: tuple[np.ndarray, int] | None,
) -> tuple[float, np.ndarray, dict, dict]:
  """One pass over the video: (fps, every frame's time, the faces found on every
  `detect_every`-th frame by frame index, the mouth patch of each face by id when `audio`
  is given)."""
  detections, patches, times = {}, {}, []
  with _decoded(path, max_seconds) as (fps, frames):
    for index, (time, rgb) in enumerate(frames):
      times.append(time)
      if index % detect_every == 0:
        found = find(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if found:
          detections[index] = found
          if audio is not None:  # mouth patches serve only the speaker choice
            grey = cv2.cvtColor(rgb, conversion)
            patches.update({id(d): mouth_patch(grey, d) for d in found})
  if not times:
    raise video.VideoError(f"{path}: no decodable video frames")
  return fps, np.array(times), detections, patches


def _follow_speaker(
  path, times, detections, patches, audio, detect_every, min_detected_fraction, detector
) -> tuple[np.ndarray, FaceTrack]:
  """The speaker's face among the tracks found often enough: (T, 5) smoothed eyes, mouth and
  eye distance of every frame, and the track's account (FaceTrack)."""
  sampled = math.ceil(len(times) / detect_every)
  needed = max(1, math.ceil(min_detected_fraction * sampled))
  all_tracks = link_tracks(detections)
  tracks = [t for t in all_tracks if len(t) >= needed]
  if not tracks:
    most = max((len(t) for t in all_tracks), default=0)
    raise NoFaceError(
      f"{path}: no face found (a face in {most} of {sampled} sampled frames, at least "
      f"{needed} needed)"
    )
  chosen, reason = choose_track(tracks, patches, times, audio)
  track = tracks[chosen]
  smooth = _smoothed(track, len(times)).astype(np.float32)
  boxes = np.array([d.box for d in track.values()])
  face_track = FaceTrack(
    eyes=smooth[:, :2],
    mouths=smooth[:, 2:4],
    eye_distances=smooth[:, 4],
    sampled=sampled,
    detected=len(track),
    faces=len(tracks),
    chosen=chosen,
    reason=reason,
    box=tuple(float(v) for v in np.median(boxes, axis=0)),
    detector=detector,
  )
  return smooth, face_track
