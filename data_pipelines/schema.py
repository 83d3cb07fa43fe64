"""The one example schema shared by every corpus (real and synthetic).

One example is one clip. Every builder writes exactly these fields, every loader reads them; nothing
else in the repository spells out field names, dtypes or shapes.

Time axes: T video frames at `fps`; `mfcc` and `stft` have AUDIO_FRAMES_PER_VIDEO_FRAME * T rows
(10 ms hop at 25 fps). `lips` holds precomputed VSR lip features (T rows) or zero rows when a corpus
has none; the VSR teacher then computes them from mouth crops of `faces`. `phonemes` holds per-frame
content ids where the corpus knows them (the synthetic corpus) and -1 elsewhere.

Frame labels: `frame_labels` (T,) marks the frames that lie in a forged segment (1 = fake), and
`audio_frame_labels` / `video_frame_labels` which stream was forged there. Corpora that record
fake segments (LAV-DF, AV-Deepfake1M, the synthetic corpus's partial forgeries) derive them from
the segments; corpora with clip labels only give every frame its clip's labels, so a fake clip
is fake throughout (what the reference's training assumes). `validate_example` fills them that
way when a builder leaves them out, and the loader does the same for corpora prepared before the
fields existed. `fake_segments` (N, 2) keeps the forged segments themselves, [start, end) in
seconds from the clip's first frame, at the corpus's own precision: localisation is scored
against them, as AV-Deepfake1M's benchmark scores against its metadata, not against the frames
(which would snap every boundary to the 40 ms frame grid and merge segments that touch). Left out,
they are the runs of fake frames.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

FPS = 25.0
AUDIO_FRAMES_PER_VIDEO_FRAME = 4
SAMPLE_RATE = 16_000
FACE_SIZE = 112
NUM_MFCC = 13
NUM_STFT_BINS = 321
LIP_DIM = 512
UNKNOWN_PHONEME = -1

REAL, FAKE = 0, 1
LABEL_FIELDS = ("label", "audio_label", "video_label", "identity_label", "sync_label")
TEXT_FIELDS = ("id", "dataset", "method", "category")

# A clip's decoded media on their way to features: (faces (T, H, W) uint8 at FPS, samples float32
# at SAMPLE_RATE on the 16-bit scale) -> the same shapes (data_pipelines.reading.perturbations
# uses it).
MediaHook = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class ArrayField:
  """A per-clip array whose leading axis is time (`rows_per_frame` rows per video frame)."""

  name: str
  dtype: np.dtype
  trailing_shape: tuple[int, ...]
  rows_per_frame: int
  # TFDS Tensor encoding. ArrayRecord already compresses its container (zstd), so large arrays are
  # stored raw ('bytes'): zlib inside zstd cost 70% of the loader's time for no smaller files.
  encoding: str

  def shape(self, num_frames: int) -> tuple[int, ...]:
    return (self.rows_per_frame * num_frames, *self.trailing_shape)


ARRAY_FIELDS = (
  ArrayField("mfcc", np.dtype(np.float32), (NUM_MFCC,), AUDIO_FRAMES_PER_VIDEO_FRAME, "bytes"),
  ArrayField("stft", np.dtype(np.float16), (NUM_STFT_BINS,), AUDIO_FRAMES_PER_VIDEO_FRAME, "bytes"),
  ArrayField("faces", np.dtype(np.uint8), (FACE_SIZE, FACE_SIZE), 1, "bytes"),
  ArrayField("lips", np.dtype(np.float16), (LIP_DIM,), 1, "bytes"),
  ArrayField("phonemes", np.dtype(np.int32), (), 1, "zlib"),
  ArrayField("frame_labels", np.dtype(np.uint8), (), 1, "zlib"),
  ArrayField("audio_frame_labels", np.dtype(np.uint8), (), 1, "zlib"),
  ArrayField("video_frame_labels", np.dtype(np.uint8), (), 1, "zlib"),
)
ARRAY_FIELDS_BY_NAME = {f.name: f for f in ARRAY_FIELDS}
SEGMENTS_FIELD = "fake_segments"
# Each frame-label field and the clip label it defaults to (see the module docstring).
FRAME_LABEL_FIELDS = {
  "frame_labels": "label",
  "audio_frame_labels": "audio_label",
  "video_frame_labels": "video_label",
}


def clip_frame_labels(example: dict, num_frames: int) -> dict[str, np.ndarray]:
  """Frame labels for a clip known by its clip labels only: every frame gets the clip's."""
  return {
    field: np.full(num_frames, int(example[clip_field]), np.uint8)
    for field, clip_field in FRAME_LABEL_FIELDS.items()
  }


def segment_frame_labels(segments, num_frames: int, fps: float = FPS) -> np.ndarray:
  """(num_frames,) uint8, 1 on the frames whose centre lies in a [start, end) segment (seconds)."""
  centres = (np.arange(num_frames) + 0.5) / fps
  labels = np.zeros(num_frames, np.uint8)
  for start, end in segments:
    labels[(centres >= start) & (centres < end)] = FAKE
  return labels


def frame_runs(flags: np.ndarray) -> np.ndarray:
  """The (N, 2) int64 [first, last + 1) frames of the maximal runs of true (nonzero) `flags`."""
  padded = np.concatenate([[False], np.asarray(flags) != 0, [False]])
  return np.flatnonzero(padded[1:] != padded[:-1]).reshape(-1, 2)


def frame_label_segments(labels: np.ndarray, fps: float = FPS) -> np.ndarray:
  """The (N, 2) [start, end) segments in seconds of the runs of 1 in per-frame `labels`."""
  return frame_runs(labels).astype(np.float64) / fps


class SchemaError(ValueError):
  """An example that does not follow the schema; the message names the clip and the field."""


def validate_example(example: dict) -> dict:
  """Checks one example (a dict of numpy values) and returns it with canonical dtypes.

  Raises SchemaError naming the clip and the problem: wrong or missing fields, lengths that do not
  agree with `num_frames`, labels outside {0, 1}, non-finite features.
  """
  clip = example.get("id", "<no id>")
  missing = [
    k
    for k in (*TEXT_FIELDS, *LABEL_FIELDS, "fps", "num_frames", *ARRAY_FIELDS_BY_NAME)
    if k not in example and k not in FRAME_LABEL_FIELDS and k != SEGMENTS_FIELD
  ]
  if missing:
    raise SchemaError(f"clip {clip}: missing fields {missing}")
  out = {k: str(example[k]) for k in TEXT_FIELDS}
  for k in LABEL_FIELDS:
    value = int(example[k])
    if value not in (REAL, FAKE):
      raise SchemaError(f"clip {clip}: {k}={example[k]!r} is not 0 (real) or 1 (fake)")
    out[k] = value
  out["fps"] = float(example["fps"])
  num_frames = int(example["num_frames"])
  if num_frames < 1:
    raise SchemaError(f"clip {clip}: num_frames={num_frames} must be at least 1")
  out["num_frames"] = num_frames
  defaults = clip_frame_labels(out, num_frames)
  for field in ARRAY_FIELDS:
    array = np.asarray(example.get(field.name, defaults.get(field.name)))
    expected = field.shape(num_frames)
    if field.name == "lips" and array.shape[:1] == (0,):
      expected = (0, *field.trailing_shape)
    if array.shape != expected:
      raise SchemaError(
        f"clip {clip}: {field.name} has shape {array.shape}, expected {expected} "
        f"for num_frames={num_frames}"
      )
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
      raise SchemaError(f"clip {clip}: {field.name} holds non-finite values")
    if field.name in FRAME_LABEL_FIELDS:
      if not np.all(np.isin(array, (REAL, FAKE))):
        raise SchemaError(f"clip {clip}: {field.name} holds values other than 0 (real) or 1 (fake)")
      clip_field = FRAME_LABEL_FIELDS[field.name]
      if array.any() and out[clip_field] == REAL:
        raise SchemaError(f"clip {clip}: {field.name} marks fake frames but {clip_field}=0")
    out[field.name] = array.astype(field.dtype, copy=False)
  out[SEGMENTS_FIELD] = _checked_segments(example, out, clip)
  return out


def _checked_segments(example: dict, out: dict, clip: str) -> np.ndarray:
  if SEGMENTS_FIELD not in example:
    return frame_label_segments(out["frame_labels"], out["fps"])
  segments = np.asarray(example[SEGMENTS_FIELD], np.float64).reshape(-1, 2)
  if not np.all(np.isfinite(segments)) or np.any(segments[:, 0] < 0):
    raise SchemaError(f"clip {clip}: {SEGMENTS_FIELD} must be finite times >= 0 s")
  if np.any(segments[:, 1] <= segments[:, 0]):
    raise SchemaError(
      f"clip {clip}: {SEGMENTS_FIELD} holds a segment that does not end after it starts"
    )
  if len(segments) and out["label"] == REAL:
    raise SchemaError(f"clip {clip}: {SEGMENTS_FIELD} lists fake segments but label=0")
  return segments


def tfds_features():
  """The schema as a TFDS FeaturesDict (TensorFlow is not needed for these feature types)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  features = {k: tfds.features.Text() for k in TEXT_FIELDS}
  features.update({k: tfds.features.Scalar(np.int64) for k in LABEL_FIELDS})
  features["fps"] = tfds.features.Scalar(np.float32)
  features["num_frames"] = tfds.features.Scalar(np.int64)
  for field in ARRAY_FIELDS:
    features[field.name] = tfds.features.Tensor(
      shape=(None, *field.trailing_shape), dtype=field.dtype, encoding=field.encoding
    )
  # float64, stored as raw bytes (TFDS would keep floats as float32): a frame-aligned time (k / 25
  # s) must compare exactly with proposals on the same grid, or an IoU exactly at a threshold
  # would fall either side of it.
  features[SEGMENTS_FIELD] = tfds.features.Tensor(
    shape=(None, 2), dtype=np.float64, encoding="bytes"
  )
  return tfds.features.FeaturesDict(features)
