"""Scoring raw videos: decode, find the face, compute the features, score the clip and windows.

    avcd predict VIDEO... (--workdir=DIR [--checkpoint=STEP] | --saved-model=DIR) [--detector=none]

Per video:
  1. The container must open and hold a video and an audio track.
  2. Faces: a detector with landmarks (YuNet by default) finds and follows every face; the one
     whose mouth moves with the audio (or the largest) is aligned and cropped to grey 112x112
     (data_pipelines.features.face_crop); with detector 'none' the whole frame is the face, as
     for already face-cropped corpora (FakeAVCeleb, CMDFD). As in the corpus pipeline
     (data_pipelines.building.clips), a video at another frame rate is brought to 25 fps by taking
     the frame on screen at each 25 fps instant (by the frames' own times: variable frame rates
     keep their timing).
  3. Audio: the track at 16 kHz mono, 13 MFCC per 10 ms, cut or wrap-padded to 4 rows per frame
     (data_pipelines.features.audio), as the corpora's examples.
  4. The model scores the whole clip, then windows of `window` frames every `stride` frames (the
     last window ends at the clip's end; a clip no longer than one window is its only window).
  5. Forged segments: the runs of frames whose P(fake), smoothed by a centred 5-frame median,
     stays at or above `threshold` for at least 2 frames (avcd.evaluation.localisation, one
     threshold), each with its mean smoothed P(fake) as score. Frame probabilities are the frame
     classifier's own, not calibrated; they mean "where" when the model was trained with frame
     labels (`train.labels='frame'`, docs/localisation.md), with clip labels they mostly follow
     the clip's score.

The clip score is the reference's: the mean over frames of the frames' fake-class logits; the
raw probability is softmax of the mean logits, class 1 (fake); the probability is the raw one, or
the calibrated one when the checkpoint's run holds a calibration map fitted for it
(avcd/evaluation/calibration.py; a SavedModel carries it from `avcd export`).

Lengths: clips shorter than `min_frames` (default 25, one second) are not scored: a few frames say
little about lip sync and the networks were trained on clips of 1 s and more. Clips longer than
`max_frames` (default 1000, 40 s: the reference's cap on clip length) are scored on their first
`max_frames` frames and marked truncated; 0 lifts the cap.

A video that cannot be scored (unreadable file, no video or audio track, no face found, too short)
gets a one-line reason; the others are scored regardless.
"""

import dataclasses
import json
import math
import pathlib
from typing import Protocol

import av
import jax
import ml_collections
import numpy as np
from absl import logging

from avcd import checkpoints, paths
from avcd.core import inference, sharding
from avcd.evaluation import calibration, localisation
from avcd.serving import export, saved_model_check
from avcd.serving.options import PredictOptions
from data_pipelines import schema
from data_pipelines.building import clips
from data_pipelines.features import audio, face_crop, video

JSON_FILE = "predictions.json"
PLOT_DIR = "plots"


class Scorer(Protocol):
  """A model: (mfcc (B, 4T, 13), faces (B, T, 112, 112), num_frames (B,)) -> numpy outputs
  `probability` (B,) (calibrated when the model's run has a map for it), `raw_probability` (B,),
  `score` (B,), `frame_logits` (B, T, 2)."""

  features: dict  # export.feature_settings
  source: dict  # where the model came from, for the JSON
  config: dict  # the run's config, as JSON

  def __call__(
    self, mfcc: np.ndarray, faces: np.ndarray, num_frames: np.ndarray
  ) -> dict[str, np.ndarray]: ...


class CheckpointScorer:
  """The student of a training run or model checkpoint, run by JAX."""

  def __init__(self, workdir: str | pathlib.Path, step: int | None = None, *, calibrate=True):
    student = checkpoints.restore_student(workdir, step)
    self.features = export.feature_settings(student.config)
    self.config = json.loads(student.config.to_json_best_effort())
    fitted = calibration.find(student.source, workdir) if calibrate else None
    self.source = dict(
      kind="checkpoint",
      **student.source,
      calibration=None if fitted is None else dataclasses.asdict(fitted),
    )
    mesh = sharding.make_mesh(
      ml_collections.ConfigDict(dict(data=1, fsdp=1)), jax.local_devices()[:1]
    )
    self._predict = inference.make_predict_step(student.graphdef, student.shardings, mesh, fitted)
    self._params, self._batch_stats = student.params, student.batch_stats

  def __call__(self, mfcc, faces, num_frames):
    out = self._predict(
      self._params, self._batch_stats, dict(mfcc=mfcc, faces=faces, num_frames=num_frames)
    )
    return {k: np.asarray(v) for k, v in out.items()}


class SavedModelScorer:
  """A SavedModel written by `avcd export`, run by TensorFlow."""

  def __init__(self, saved_model_dir: str | pathlib.Path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top

    metadata = export.read_metadata(saved_model_dir)
    self.features = metadata["features"]
    self.config = metadata.get("config")
    self.source = dict(
      kind="saved_model",
      path=str(pathlib.Path(saved_model_dir).absolute()),
      avcd_version=metadata["avcd_version"],
      **metadata["source"],
      calibration=metadata.get("calibration"),
    )
    # A SavedModel is a program: its graph is checked before TensorFlow loads it.
    saved_model_check.check(saved_model_dir)
    # The signature holds the loaded object's variables only while the object lives.
    try:
      self._model = tf.saved_model.load(str(saved_model_dir))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as e:
      raise saved_model_check.UntrustedSavedModelError(
        f"{saved_model_dir}: TensorFlow cannot load it ({e.message.splitlines()[0]}); "
        "export it again"
      ) from None
    self._serve = self._model.signatures[metadata["signature"]["name"]]
    self._tf = tf

  def __call__(self, mfcc, faces, num_frames):
    out = self._serve(
      mfcc=self._tf.constant(mfcc, self._tf.float32),
      faces=self._tf.constant(faces, self._tf.uint8),
      num_frames=self._tf.constant(num_frames, self._tf.int32),
    )
    return {k: v.numpy() for k, v in out.items()}


class Unscorable(Exception):
  """A video that cannot be scored; `reason` is one line without the file name."""

  def __init__(self, reason: str):
    self.reason = " ".join(reason.split())
    super().__init__(self.reason)


@dataclasses.dataclass(frozen=True)
class ClipInputs:
  """One video's model inputs at 25 fps and what was learnt reading it."""

  mfcc: np.ndarray  # (4T, 13) float32
  faces: np.ndarray  # (T, 112, 112) uint8
  source_fps: float
  duration_s: float | None  # the container's duration, when it states one
  audio_s: float
  truncated: bool
  face_detection: dict | None  # face_crop.FaceTrack.summary(); None without detection
  warnings: tuple[str, ...] = ()  # what makes the scores less trustworthy (see clip_inputs)


def _without_path(error: Exception, path: pathlib.Path) -> str:
  """The error's message without the `PATH: ` prefix the feature functions put first."""
  message = str(error)
  return message[len(f"{path}: ") :] if message.startswith(f"{path}: ") else message


def _probe(path: pathlib.Path) -> float | None:
  """Checks the container has a video and an audio track; returns its duration (s) if stated."""
  try:
    with av.open(str(path)) as container:
      has_video, has_audio = bool(container.streams.video), bool(container.streams.audio)
      duration = container.duration / av.time_base if container.duration else None
  except av.error.FFmpegError as e:
    # strerror is FFmpeg's message alone; str(e) repeats the error number and the path.
    raise Unscorable(f"unreadable file: {e.strerror or e}") from e
  if not has_video:
    raise Unscorable("no video track")
  if not has_audio:
    raise Unscorable("no audio track")
  return duration


def clip_inputs(path: str | pathlib.Path, options: PredictOptions) -> ClipInputs:
  """Decodes one video into model inputs, or raises Unscorable with the reason."""
  path = pathlib.Path(path)
  if problem := paths.broken_symlink(path):
    raise Unscorable(problem)
  if path.is_dir():
    raise Unscorable("is a directory, not a video file")
  if not path.exists():
    raise Unscorable("file not found")
  if not path.is_file():
    raise Unscorable("is not a regular file")
  duration = _probe(path)
  max_seconds = options.max_frames / schema.FPS if options.max_frames else None
  # Audio first: telling the speaker among several faces reads it.
  try:
    samples, sample_rate = audio.load_audio(path)
  except audio.AudioError as e:
    raise Unscorable(f"unreadable audio track: {_without_path(e, path)}") from e
  if samples.size == 0:
    raise Unscorable("no audio track (the audio track holds no samples)")
  try:
    faces = face_crop.read_video_faces(
      path,
      detector=None if options.detector == "none" else options.detector,
      luma=options.luma,
      max_seconds=max_seconds,
      crop_scale=options.crop_scale,
      audio=(samples, sample_rate),
    )
  except face_crop.NoFaceError as e:
    raise Unscorable(_without_path(e, path)) from e
  except video.VideoError as e:
    raise Unscorable(f"unreadable video track: {_without_path(e, path)}") from e
  # The corpus pipeline's rule for other frame rates, so that predict sees what training saw.
  frames = clips.frames_at_schema_rate(faces.times, faces.fps)
  if options.max_frames:
    frames = frames[: options.max_frames]
  num_frames = len(frames)
  if num_frames < options.min_frames:
    raise Unscorable(
      f"too short: {num_frames} frames ({num_frames / schema.FPS:.2f} s at "
      f"{schema.FPS:g} fps), at least {options.min_frames} needed"
    )

  # The corpus pipeline's rules: what it rejects outright is not scored; what it rejects as
  # unlike its training clips (silence, an audio track much shorter or longer than the video,
  # which is cut or wrap-padded) is scored with a warning.
  problems = clips.audio_problems(samples, sample_rate, num_frames / schema.FPS)
  if problems and ("non-finite" in problems[0] or "too short" in problems[0]):
    raise Unscorable(problems[0])
  audio_s = samples.size / sample_rate
  # MFCC of the span scored only (plus one 40 ms window), not of the rest of a long video.
  samples = samples[: math.ceil((num_frames / schema.FPS + 0.04) * sample_rate)]
  mfcc = audio.fit_to_frames(audio.mfcc(samples, sample_rate), num_frames)

  scored_s = num_frames / schema.FPS
  truncated = (
    bool(options.max_frames) and duration is not None and (duration - scored_s > 1 / schema.FPS)
  )
  return ClipInputs(
    mfcc=mfcc,
    faces=faces.frames[frames],
    source_fps=faces.fps,
    duration_s=duration,
    audio_s=audio_s,
    truncated=truncated,
    face_detection=None if faces.track is None else faces.track.summary(),
    warnings=tuple(problems),
  )


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
  """First frames of the windows: every `stride` frames, the last one ending at the clip's end."""
  if num_frames <= window:
    return [0]
  starts = list(range(0, num_frames - window + 1, stride))
  if starts[-1] + window < num_frames:
    starts.append(num_frames - window)
  return starts


def _window_record(start: int, length: int, score: float, probability: float) -> dict:
  return dict(
    start_frame=start,
    end_frame=start + length,
    start_s=start / schema.FPS,
    end_s=(start + length) / schema.FPS,
    score=score,
    probability=probability,
  )


def score_clip(scorer: Scorer, inputs: ClipInputs, options: PredictOptions) -> dict:
  """Whole-clip score and probability, per-frame fake logits and probabilities, windows."""
  rows = scorer.features["audio_frames_per_frame"]
  num_frames = len(inputs.faces)
  whole = scorer(inputs.mfcc[None], inputs.faces[None], np.array([num_frames], np.int32))
  score, probability = float(whole["score"][0]), float(whole["probability"][0])
  # SavedModels exported before calibration existed have no raw_probability: theirs is raw.
  raw_probability = float(whole.get("raw_probability", whole["probability"])[0])
  frame_logits = whole["frame_logits"][0].astype(np.float64)
  frame_probability = 1.0 / (1.0 + np.exp(frame_logits[:, 0] - frame_logits[:, 1]))

  length = min(options.window, num_frames)
  starts = window_starts(num_frames, options.window, options.stride)
  windows = []
  if starts == [0] and length == num_frames:
    windows.append(_window_record(0, length, score, probability))
  else:
    batch = min(options.batch_size, len(starts))
    for first in range(0, len(starts), batch):
      chunk = starts[first : first + batch]
      # A short last chunk repeats its last window: every call has one shape, compiled once.
      padded = chunk + [chunk[-1]] * (batch - len(chunk))
      out = scorer(
        np.stack([inputs.mfcc[rows * s : rows * (s + length)] for s in padded]),
        np.stack([inputs.faces[s : s + length] for s in padded]),
        np.full(batch, length, np.int32),
      )
      windows += [
        _window_record(s, length, float(out["score"][i]), float(out["probability"][i]))
        for i, s in enumerate(chunk)
      ]
  return dict(
    score=score,
    probability=probability,
    raw_probability=raw_probability,
    frame_scores=frame_logits[:, 1].tolist(),
    frame_probabilities=frame_probability.tolist(),
    windows=windows,
    segments=forged_segments(frame_probability, options.threshold),
  )


def forged_segments(frame_probability: np.ndarray, threshold: float) -> list[dict] | None:
  """The segments of a clip that its frames call forged (module docstring, step 5), in time
  order: start_s, end_s and score, the mean smoothed P(fake) inside. None when a frame's P(fake)
  is not finite (the clip's record then says nothing of where)."""
  if not np.all(np.isfinite(frame_probability)):
    return None
  found = localisation.proposals_from_frame_scores(
    frame_probability, fps=schema.FPS, thresholds=(threshold,)
  )
  return [
    dict(start_s=round(start, 3), end_s=round(end, 3), score=round(score, 4))
    for score, start, end in sorted(found.tolist(), key=lambda proposal: proposal[1])
  ]


def predict_video(scorer: Scorer, path: str | pathlib.Path, options: PredictOptions) -> dict:
  """One video's record: status 'scored' with its scores, or 'skipped' with the reason."""
  record = dict(path=str(path))
  try:
    inputs = clip_inputs(path, options)
  except Unscorable as e:
    return dict(record, status="skipped", reason=e.reason)
  record.update(
    status="scored",
    num_frames=len(inputs.faces),
    fps=schema.FPS,
    seconds=len(inputs.faces) / schema.FPS,
    source_fps=inputs.source_fps,
    duration_s=inputs.duration_s,
    audio_s=inputs.audio_s,
    truncated=inputs.truncated,
    face_detection=inputs.face_detection,
    warnings=list(inputs.warnings),
  )
  record.update(score_clip(scorer, inputs, options))
  record["label"] = "fake" if record["probability"] >= options.threshold else "real"
  return record


def check_features(scorer: Scorer) -> None:
  """The model must take the features this pipeline computes."""
  expected = dict(
    fps=schema.FPS,
    face_size=schema.FACE_SIZE,
    sample_rate=schema.SAMPLE_RATE,
    num_mfcc=schema.NUM_MFCC,
    audio_frames_per_frame=schema.AUDIO_FRAMES_PER_VIDEO_FRAME,
  )
  differing = {
    k: (scorer.features.get(k), v) for k, v in expected.items() if scorer.features.get(k) != v
  }
  if differing:
    raise ValueError(
      f"the model expects features this avcd does not compute (model, here): {differing}"
    )


def predict_videos(scorer: Scorer, paths, options: PredictOptions) -> list[dict]:
  """Records of every video, in order (see predict_video)."""
  check_features(scorer)
  records = []
  for path in paths:
    record = predict_video(scorer, path, options)
    if record["status"] == "scored":
      logging.info(
        "%s: P(fake) %.4f over %d frames", path, record["probability"], record["num_frames"]
      )
    records.append(record)
  return records


def format_table(records: list[dict]) -> str:
  """The scored videos as an aligned text table."""
  header = (
    "video",
    "frames",
    "seconds",
    "score",
    "P(fake)",
    "label",
    "windows",
    "max window P(fake)",
    "forged segments",
  )
  rows = []
  for r in records:
    if r["status"] != "scored":
      continue
    top = max(r["windows"], key=lambda w: w["probability"])
    rows.append(
      (
        r["path"],
        str(r["num_frames"]) + ("+" if r["truncated"] else ""),
        f"{r['seconds']:.2f}",
        f"{r['score']:.4f}",
        f"{r['probability']:.4f}",
        r["label"],
        str(len(r["windows"])),
        f"{top['probability']:.4f} ({top['start_s']:.2f}-{top['end_s']:.2f} s)",
        _segments_cell(r["segments"]),
      )
    )
  widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
  left = {0, 5, 8}  # text columns; numbers align right

  def line(cells):
    return "  ".join(
      c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    ).rstrip()

  return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def _segments_cell(segments: list[dict] | None, shown: int = 2) -> str:
  if segments is None:
    return "n/a"
  cells = [f"{s['start_s']:.2f}-{s['end_s']:.2f} s ({s['score']:.2f})" for s in segments[:shown]]
  more = len(segments) - shown
  return ", ".join(cells + ([f"+{more} more"] if more > 0 else [])) or "none"


def plot_scores(record: dict, path: pathlib.Path, threshold: float) -> None:
  """PNG of P(fake) over time: per frame, per window, the whole clip, and the forged segments."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  frames = np.arange(record["num_frames"])
  figure, axis = plt.subplots(figsize=(8, 3.6), layout="constrained")
  for i, segment in enumerate(record["segments"] or []):
    axis.axvspan(
      segment["start_s"],
      segment["end_s"],
      color="tab:orange",
      alpha=0.2,
      lw=0,
      label="forged segment" if i == 0 else None,
    )
  axis.plot(
    (frames + 0.5) / schema.FPS, record["frame_probabilities"], color="0.7", lw=0.8, label="frame"
  )
  centres = [(w["start_s"] + w["end_s"]) / 2 for w in record["windows"]]
  axis.plot(
    centres,
    [w["probability"] for w in record["windows"]],
    "o-",
    color="tab:red",
    ms=3,
    label="window",
  )
  axis.axhline(record["probability"], color="tab:blue", ls="--", label="whole clip")
  axis.axhline(threshold, color="k", ls=":", lw=0.8, label="threshold")
  axis.set(
    xlim=(0, record["seconds"]),
    ylim=(-0.02, 1.02),
    xlabel="time (s)",
    ylabel="P(fake)",
    title=f"{pathlib.Path(record['path']).name}: P(fake) {record['probability']:.3f}",
  )
  # Outside the axes, so that it never covers the curves.
  axis.legend(
    loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize="small", ncols=5, frameon=False
  )
  figure.savefig(path, dpi=100)
  plt.close(figure)


def write_outputs(
  records: list[dict], output: str | pathlib.Path, *, source: dict, options: PredictOptions
) -> pathlib.Path:
  """Writes one plot per scored video and the JSON of every record; returns the JSON's path.

  Each scored record gets `plot`, its plot's path relative to `output`.
  """
  output = pathlib.Path(output)
  (output / PLOT_DIR).mkdir(parents=True, exist_ok=True)
  used = set()
  for record in records:
    if record["status"] != "scored":
      continue
    stem = pathlib.Path(record["path"]).stem
    name, copy = f"{stem}.png", 1
    while name in used:
      copy += 1
      name = f"{stem}-{copy}.png"
    used.add(name)
    plot_scores(record, output / PLOT_DIR / name, options.threshold)
    record["plot"] = f"{PLOT_DIR}/{name}"
  path = output / JSON_FILE
  path.write_text(json.dumps(document(records, source=source, options=options), indent=2) + "\n")
  return path


def document(records: list[dict], *, source: dict, options: PredictOptions) -> dict:
  """The JSON document of `avcd predict` (and of `avcd serve`'s answers): the model's source,
  the options and the videos' records."""
  return dict(model=source, options=dataclasses.asdict(options), videos=records)
