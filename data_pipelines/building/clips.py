"""One manifest row to one schema example: faces, audio features, lip features and labels.

Timing: examples are at schema.FPS (25 fps) with 4 audio rows per frame. The frame rate is the
video stream's own, not the manifest's FPS column: the authors' MakeItTalk rows say 25 fps, but
their frame counts are 2.3-2.5 times their audio's duration at 25 fps (MakeItTalk renders at
62.5 fps). A video at another rate is brought to 25 fps by taking, at each 25 fps instant, the
source frame on screen then; at 25 fps this keeps every frame, as the reference does.

A clip that cannot be used raises ClipRejected with a one-line reason naming the file.
"""

import math
import pathlib
from typing import Callable

import numpy as np

from data_pipelines import schema
from data_pipelines.building import manifests
from data_pipelines.features import audio, lips, video

# Longest accepted difference between the audio's and the video's duration. The authors'
# FakeAVCeleb, Wav2Lip, Audio2Head and MakeItTalk rows differ by at most 0.45 s; VideoReTalk
# holds truncated generations (video 3-90 % of its audio), about 15 % of its fakes.
DEFAULT_MAX_AV_MISMATCH_S = 1.0
# Audio whose peak stays below one 16-bit step is digital silence: no content, and the reference's
# STFT normalisation would divide by zero.
SILENCE_PEAK = 1.0
_MIN_SAMPLES = int(0.040 * schema.SAMPLE_RATE)  # one 40 ms analysis window


class ClipRejected(Exception):
  """A clip that cannot become an example; `reason` is one line naming the file."""

  def __init__(self, reason: str):
    self.reason = " ".join(reason.split())
    super().__init__(self.reason)


def lips_path_next_to_video(row: manifests.ManifestRow) -> pathlib.Path:
  """The default lip feature file: the video's path with its extension replaced by .npy.

  The authors' manifests do not name lip files; this is the rule used when none is given.
  """
  return pathlib.Path(row.video_path).with_suffix(".npy")


def extract_clip(
  row: manifests.ManifestRow,
  *,
  luma: str = "bt601",
  compute_lips: Callable[[np.ndarray], np.ndarray] | None = None,
  max_frames: int | None = None,
  lips_path: Callable[[manifests.ManifestRow], pathlib.Path] = lips_path_next_to_video,
  max_av_mismatch_s: float = DEFAULT_MAX_AV_MISMATCH_S,
  media_hook: schema.MediaHook | None = None,
) -> dict:
  """Decodes and featurises one clip into a validated schema example.

  Faces are the first `row.num_frames` video frames (see video.read_faces for `luma`). Audio is
  `row.audio_path`, or the video's own track when the row names no audio file. MFCC and STFT are
  cut or wrap-padded to 4 rows per frame as the reference. Lip features come from `lips_path(row)`
  when that file exists, else from `compute_lips(faces)` ((T, 112, 112) uint8 -> (T, 512)), else
  are left empty (zero rows). Phonemes are unknown (-1). Frame labels mark the frames whose
  centre lies in the row's fake segments (so they follow the frame-rate conversion and
  `max_frames`); a row without segments gives every frame its clip's labels.

  Args:
    row: the manifest row.
    luma: 'bt601' or 'reference_bgr', passed to video.read_faces.
    compute_lips: computes lip features from faces when the row has no lip file.
    max_frames: keep at most this many frames (at 25 fps) from the start.
    lips_path: where a row's precomputed lip features are.
    max_av_mismatch_s: reject when audio and video durations differ by more; math.inf keeps every
      clip, as the reference.
    media_hook: sees the faces (at 25 fps, the clip's frames only) and the 16 kHz samples before
      features are computed (data_pipelines.reading.perturbations degrades them there).

  Returns:
    The example, as returned by schema.validate_example.

  Raises:
    ClipRejected: labels outside {0, 1} or contradicting the row's fake segments (a label of 1
      without segments, or segments under a label of 0); missing, unreadable or truncated video;
      missing or undecodable audio, no audio stream, or audio that is silent, shorter than 40 ms,
      non-finite or longer or shorter than the video by more than `max_av_mismatch_s`; unusable
      lip features.
  """
  if max_frames is not None and max_frames < 1:
    raise ValueError(f"max_frames must be at least 1, got {max_frames}")
  segments = _checked_segments(row)

  try:
    faces = video.read_faces(row.video_path, row.num_frames, luma=luma)
  except (FileNotFoundError, video.VideoError) as e:
    raise ClipRejected(str(e)) from e
  frames = _frames_at_schema_rate(row.num_frames, faces.fps)[:max_frames]
  num_frames = len(frames)

  samples = _load_usable_audio(row, row.num_frames / faces.fps, max_av_mismatch_s)
  face_frames = faces.frames[frames]
  if media_hook is not None:
    face_frames, samples = media_hook(face_frames, samples)
  mfcc = audio.fit_to_frames(audio.mfcc(samples, schema.SAMPLE_RATE), num_frames)
  stft = audio.fit_to_frames(audio.stft_magnitude(samples, schema.SAMPLE_RATE), num_frames)
  lip_features = _lip_features(row, frames, face_frames, lips_path(row), compute_lips)
  return schema.validate_example(
    {
      "id": row.id,
      "dataset": row.dataset,
      "method": row.method,
      "category": row.category,
      **{field: getattr(row, field) for field in schema.LABEL_FIELDS},
      "fps": schema.FPS,
      "num_frames": num_frames,
      "mfcc": mfcc,
      "stft": stft,
      "faces": face_frames,
      "lips": lip_features,
      "phonemes": np.full(num_frames, schema.UNKNOWN_PHONEME, np.int32),
      **_frame_labels(segments, num_frames),
    }
  )


def _checked_segments(
  row: manifests.ManifestRow,
) -> dict[str, tuple[tuple[float, float], ...]]:
  """The row's fake segments by clip label field ({} for a row without); rejects labels outside
  {0, 1} and a label that says otherwise than its segments."""
  for field in schema.LABEL_FIELDS:
    if getattr(row, field) not in (schema.REAL, schema.FAKE):
      raise ClipRejected(f"{row.video_path}: {field}={getattr(row, field)!r} is not 0 or 1")
  segments = row.fake_segments.by_clip_label() if row.fake_segments else {}
  for field, spans in segments.items():
    if bool(spans) != bool(getattr(row, field)):
      raise ClipRejected(
        f"{row.video_path}: {field}={getattr(row, field)} but the metadata gives "
        f"{len(spans)} fake segments for it"
      )
  return segments


def _lip_features(
  row: manifests.ManifestRow,
  frames: np.ndarray,
  face_frames: np.ndarray,
  lip_file: pathlib.Path,
  compute_lips: Callable[[np.ndarray], np.ndarray] | None,
) -> np.ndarray:
  """(len(frames), LIP_DIM): the kept frames' rows of `lip_file` when it exists, else computed
  from the faces, else none (zero rows)."""
  try:
    if lip_file.is_file():
      return lips.load_lips(lip_file, row.num_frames)[frames]
    if compute_lips is not None:
      return lips.check_lips(
        compute_lips(face_frames), len(frames), f"lips computed for {row.video_path}"
      )
  except lips.LipsError as e:
    raise ClipRejected(str(e)) from e
  return np.zeros((0, schema.LIP_DIM), np.float32)


def _frame_labels(
  segments: dict[str, tuple[tuple[float, float], ...]], num_frames: int
) -> dict[str, np.ndarray]:
  """The frame label fields and the clip's kept segments of a partially forged clip; {} for a
  clip without segments (schema.validate_example then gives every frame its clip's labels)."""
  if not segments:
    return {}
  # Segments are seconds on the media's clock, which is the 25 fps frames' clock too. The clip's
  # segments are also kept as they are (cut to the frames kept): localisation is scored on them.
  frame_labels = {
    frame_field: schema.segment_frame_labels(segments[clip_field], num_frames)
    for frame_field, clip_field in schema.FRAME_LABEL_FIELDS.items()
  }
  kept = np.clip(np.array(segments["label"], np.float64).reshape(-1, 2), 0, num_frames / schema.FPS)
  frame_labels[schema.SEGMENTS_FIELD] = kept[kept[:, 1] > kept[:, 0]]
  return frame_labels


def _frames_at_schema_rate(num_source_frames: int, source_fps: float) -> np.ndarray:
  """Indices of the source frames on screen at each schema.FPS instant of the clip."""
  return frames_at_schema_rate(np.arange(num_source_frames) / source_fps, source_fps)


def frames_at_schema_rate(times: np.ndarray, source_fps: float) -> np.ndarray:
  """Indices of the frames on screen at each schema.FPS instant, from the frames' presentation
  times (seconds from the first; a variable-frame-rate file's own). The clip lasts until one
  average frame (1 / source_fps) after its last frame starts. Video at a steady 25 fps (within
  0.1 %) keeps every frame."""
  times = np.asarray(times, np.float64)
  steady = len(times) < 2 or np.allclose(np.diff(times), 1.0 / source_fps, rtol=0.1)
  if steady and math.isclose(source_fps, schema.FPS, rel_tol=1e-3):
    return np.arange(len(times))
  duration = times[-1] + 1.0 / source_fps
  count = max(1, math.floor(duration * schema.FPS + 1e-6))
  instants = np.arange(count) / schema.FPS
  return np.maximum(np.searchsorted(times, instants + 1e-6, side="right") - 1, 0)


def audio_problems(
  samples: np.ndarray,
  sample_rate: int,
  video_seconds: float,
  max_av_mismatch_s: float = DEFAULT_MAX_AV_MISMATCH_S,
  *,
  video_name: str = "the video",
) -> list[str]:
  """Why decoded audio cannot serve as a clip's audio (empty when it can), most serious first:
  non-finite samples, shorter than one 40 ms window, silent, or a duration that differs from the
  video's by more than max_av_mismatch_s. `avcd prepare` rejects such clips; `avcd predict`
  refuses the first two and warns of the others."""
  if not np.all(np.isfinite(samples)):
    return ["audio holds non-finite samples"]
  if samples.size < _MIN_SAMPLES:
    return [
      f"audio too short ({samples.size} samples at {sample_rate} Hz, one 40 ms window is "
      f"{_MIN_SAMPLES})"
    ]
  problems = []
  if np.max(np.abs(samples)) < SILENCE_PEAK:
    problems.append("audio is silent")
  audio_seconds = samples.size / sample_rate
  if abs(audio_seconds - video_seconds) > max_av_mismatch_s:
    problems.append(
      f"audio lasts {audio_seconds:.2f} s, {video_name} {video_seconds:.2f} s "
      f"(tolerance {max_av_mismatch_s} s)"
    )
  return problems


def _load_usable_audio(
  row: manifests.ManifestRow, video_seconds: float, max_av_mismatch_s: float
) -> np.ndarray:
  """The clip's 16 kHz samples, or ClipRejected when they cannot serve as its audio."""
  source = row.audio_path or row.video_path
  try:
    samples, sample_rate = audio.load_audio(source)
  except (FileNotFoundError, audio.AudioError) as e:
    raise ClipRejected(str(e)) from e
  problems = audio_problems(
    samples, sample_rate, video_seconds, max_av_mismatch_s, video_name=f"the video {row.video_path}"
  )
  if problems:
    raise ClipRejected(f"{source}: {problems[0]}")
  return samples
