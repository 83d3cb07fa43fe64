"""The student as a TensorFlow SavedModel.

    avcd export --workdir=DIR [--checkpoint=STEP] --output=DIR

The SavedModel's `serving_default` signature (B clips of T frames; B and T are symbolic, so one
export serves every batch size and length):

  inputs   mfcc          float32  (B, 4T, 13)        MFCC, 4 rows per video frame at 25 fps
           faces         uint8    (B, T, 112, 112)   grey face crops
           num_frames    int32    (B,)               valid frames per clip; later ones are padding
  outputs  probability   float32  (B,)               P(fake): raw_probability, calibrated when
                                                     the run has a calibration map for this
                                                     checkpoint (WORKDIR/calibration.json)
           raw_probability float32 (B,)              softmax(clip logits)[1], uncalibrated
           logit         float32  (B,)               fake-minus-real clip logit
           score         float32  (B,)               clip score: the fake-class clip logit, i.e.
                                                     the mean over valid frames of the frames'
                                                     fake-class logits (the reference's score)
           frame_logits  float32  (B, T, 2)          per-frame (real, fake) logits; rows past
                                                     num_frames carry no meaning

The function is inference.make_predict_fn, the one `avcd eval` runs, converted by jax2tf with native
serialization: the graph is one XlaCallModule op (StableHLO, lowered for each of `platforms`) plus
the weights as variables, so serving needs a TensorFlow runtime with XLA. The linked shapes
`(b, 4*t, 13)` / `(b, t, 112, 112)` are checked when the model runs: an mfcc whose row count is
not 4 * T fails with InvalidArgumentError. `avcd_export.json` beside the SavedModel records the
run's config, the avcd version, the signature and the feature settings predict needs.

The student comes from `avcd.checkpoints.restore_student`, the restore path (verified, with
fallback past corrupt steps) that every command shares. TensorFlow is imported only inside
export_saved_model.
"""

import dataclasses
import json
import pathlib
import re
import time

import jax
import ml_collections
import numpy as np
from absl import logging

from avcd import checkpoints, version
from avcd.core import inference
from data_pipelines import schema

SIGNATURE_KEY = "serving_default"
METADATA_FILE = "avcd_export.json"
DEFAULT_PLATFORMS = ("cpu", "cuda")


def feature_settings(config: ml_collections.ConfigDict) -> dict:
  """What the inputs must be computed with (predict reads this from the export's metadata)."""
  return dict(
    fps=schema.FPS,
    face_size=schema.FACE_SIZE,
    sample_rate=schema.SAMPLE_RATE,
    num_mfcc=schema.NUM_MFCC,
    audio_frames_per_frame=int(config.model.audio_frames_per_frame),
    fake_class=1,
  )


def signature(features: dict) -> dict:
  """The serving signature, as recorded in the metadata: names, dtypes and shapes."""
  rows, size = features["audio_frames_per_frame"], features["face_size"]
  return dict(
    name=SIGNATURE_KEY,
    inputs=dict(
      mfcc=dict(dtype="float32", shape=["B", f"{rows}*T", features["num_mfcc"]]),
      faces=dict(dtype="uint8", shape=["B", "T", size, size]),
      num_frames=dict(dtype="int32", shape=["B"]),
    ),
    outputs=dict(
      probability=dict(dtype="float32", shape=["B"]),
      raw_probability=dict(dtype="float32", shape=["B"]),
      logit=dict(dtype="float32", shape=["B"]),
      score=dict(dtype="float32", shape=["B"]),
      frame_logits=dict(dtype="float32", shape=["B", "T", 2]),
    ),
  )


def describe_signature(spec: dict) -> str:
  """A signature from `signature` in a few lines: name, then each input and output."""

  width = 2 + max(len(name) for group in ("inputs", "outputs") for name in spec[group])

  def tensors(group):
    return "\n".join(
      f"    {name:<{width}}{t['dtype']:<9}({', '.join(map(str, t['shape']))})"
      for name, t in spec[group].items()
    )

  return f"{spec['name']}\n  inputs\n{tensors('inputs')}\n  outputs\n{tensors('outputs')}"


def serving_function(student: checkpoints.RestoredStudent, calibration=None):
  """(fn(weights, mfcc, faces, num_frames) -> outputs, weights): the predict function of the
  student (with `calibration` applied to `probability`) over a flat list of its parameter and
  statistic arrays."""
  weights, treedef = jax.tree.flatten((student.params, student.batch_stats))
  predict_fn = inference.make_predict_fn(student.graphdef, calibration)

  def serve(weights, mfcc, faces, num_frames):
    params, batch_stats = jax.tree.unflatten(treedef, weights)
    return predict_fn(params, batch_stats, dict(mfcc=mfcc, faces=faces, num_frames=num_frames))

  return serve, weights


def _input_checks(tf, mfcc, faces, num_frames, rows: int) -> list:
  """The serving contract (docs/serving.md), as assertions that fail a call with a message naming
  the input: the model's own shape errors are XLA's, and bad values would give NaN or 0.5."""
  clips, frames = tf.shape(faces)[0], tf.shape(faces)[1]
  check = tf.debugging
  size = faces.shape[-1]
  return [
    check.assert_equal(
      tf.shape(faces)[2:], [size, size], message=f"faces must be {size} x {size} pixels"
    ),
    check.assert_positive(clips, message="faces: the batch holds no clip (B = 0)"),
    check.assert_positive(frames, message="faces: the clips hold no frame (T = 0)"),
    check.assert_equal(
      tf.shape(mfcc)[0], clips, message="mfcc and faces hold different numbers of clips"
    ),
    check.assert_equal(
      tf.shape(mfcc)[1],
      rows * frames,
      message=f"mfcc must hold {rows} rows per video frame of faces",
    ),
    check.assert_equal(
      tf.shape(num_frames)[0], clips, message="num_frames must hold one length per clip"
    ),
    check.assert_greater_equal(
      num_frames, 1, message="num_frames: every clip needs at least one valid frame"
    ),
    check.assert_less_equal(
      num_frames, frames, message="num_frames: a clip cannot be longer than T frames"
    ),
    check.assert_all_finite(mfcc, message="mfcc holds NaN or Inf"),
  ]


class ExportError(RuntimeError):
  """Writing a SavedModel failed (e.g. the disk is full); the message names the output."""


def _op_error_text(error) -> str:
  """A TensorFlow op error's message in one line, without the op's '{{function_node ...}}' name
  and the '[[...]]' op trace that TensorFlow appends."""
  text = re.sub(r"\{\{[^}]*\}\}", "", error.message).split(" [", 1)[0]
  return " ".join(text.split())


def export_saved_model(
  student: checkpoints.RestoredStudent,
  output: str | pathlib.Path,
  *,
  platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
  overwrite: bool = False,
  calibration=None,
) -> dict:
  """Writes the SavedModel and its metadata file to `output`; returns the metadata.

  Args:
    student: the restored student.
    calibration: an avcd.evaluation.calibration.Calibration for this checkpoint, baked into the
      `probability` output; None exports the raw probability as `probability`.
    output: the SavedModel directory; it must be empty or absent unless `overwrite`.
    platforms: the XLA platforms ('cpu', 'cuda', 'tpu') the model is lowered for; the SavedModel
      runs only on these.
    overwrite: write into a non-empty `output`.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top

  output = pathlib.Path(output).absolute()
  if output.is_dir() and any(output.iterdir()) and not overwrite:
    raise FileExistsError(f"{output} is not empty (pass --overwrite to write into it)")
  start = time.perf_counter()
  features = feature_settings(student.config)
  rows, size, num_mfcc = (
    features["audio_frames_per_frame"],
    features["face_size"],
    features["num_mfcc"],
  )
  serve, weights = serving_function(student, calibration)
  tf_serve = jax2tf.convert(
    serve,
    with_gradient=False,
    native_serialization_platforms=tuple(platforms),
    polymorphic_shapes=[None, f"(b, {rows}*t, {num_mfcc})", f"(b, t, {size}, {size})", "(b,)"],
  )

  module = tf.Module()
  module.student_weights = [tf.Variable(np.asarray(w), trainable=False) for w in weights]

  @tf.function(
    autograph=False,
    input_signature=[
      tf.TensorSpec([None, None, num_mfcc], tf.float32, name="mfcc"),
      tf.TensorSpec([None, None, size, size], tf.uint8, name="faces"),
      tf.TensorSpec([None], tf.int32, name="num_frames"),
    ],
  )
  def serving(mfcc, faces, num_frames):
    with tf.control_dependencies(_input_checks(tf, mfcc, faces, num_frames, rows)):
      return tf_serve(module.student_weights, mfcc, faces, num_frames)

  module.serving = serving
  try:
    tf.saved_model.save(module, str(output), signatures={SIGNATURE_KEY: serving})
  except tf.errors.OpError as e:  # a full disk, a file system error: TensorFlow's error types
    raise ExportError(
      f"{output}: writing the SavedModel failed, it is incomplete: {_op_error_text(e)}"
    ) from e
  metadata = dict(
    avcd_version=version.VERSION,
    source=student.source,
    platforms=list(platforms),
    signature=signature(features),
    calibration=None if calibration is None else dataclasses.asdict(calibration),
    features=features,
    config=json.loads(student.config.to_json_best_effort()),
  )
  (output / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
  logging.info("exported %s in %.1f s", output, time.perf_counter() - start)
  return metadata


def read_metadata(saved_model_dir: str | pathlib.Path) -> dict:
  """The metadata `avcd export` wrote beside a SavedModel."""
  path = pathlib.Path(saved_model_dir) / METADATA_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: {saved_model_dir} is not an `avcd export` output")
  try:
    metadata = json.loads(path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not the JSON `avcd export` writes ({e})") from None
  required = ("avcd_version", "source", "signature", "features")
  missing = [k for k in required if k not in metadata] if isinstance(metadata, dict) else required
  if missing:
    raise ValueError(f"{path}: not the metadata `avcd export` writes (no {', '.join(missing)})")
  return metadata
