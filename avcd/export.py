"""The student as a TensorFlow SavedModel, and the checkpoint restore that export and predict share.

    avcd export --workdir=DIR [--checkpoint=STEP] --output=DIR

The SavedModel's `serving_default` signature (B clips of T frames; B and T are symbolic, so one
export serves every batch size and length):

  inputs   mfcc          float32  (B, 4T, 13)        MFCC, 4 rows per video frame at 25 fps
           faces         uint8    (B, T, 112, 112)   grey face crops
           num_frames    int32    (B,)               valid frames per clip; later ones are padding
  outputs  probability   float32  (B,)               fake probability: softmax(clip logits)[1]
           score         float32  (B,)               clip score: the fake-class clip logit, i.e.
                                                     the mean over valid frames of the frames'
                                                     fake-class logits (the reference's score)
           frame_logits  float32  (B, T, 2)          per-frame (real, fake) logits; rows past
                                                     num_frames carry no meaning

The function is steps.make_predict_fn, the one `avcd eval` runs, converted by jax2tf with native
serialization: the graph is one XlaCallModule op (StableHLO, lowered for each of `platforms`) plus
the weights as variables, so serving needs a TensorFlow runtime with XLA. The linked shapes
`(b, 4*t, 13)` / `(b, t, 112, 112)` are checked when the model runs: an mfcc whose row count is
not 4 * T fails with InvalidArgumentError. `avcd_export.json` beside the SavedModel records the
run's config, the avcd version, the signature and the feature settings predict needs.

TensorFlow is imported only inside export_saved_model; restoring needs JAX and Orbax alone.
"""

import dataclasses
import json
import pathlib
import time

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from avcd import checkpoints, steps, version
from avcd import train_state as ts
from data_pipelines import schema

SIGNATURE_KEY = "serving_default"
METADATA_FILE = "avcd_export.json"
DEFAULT_PLATFORMS = ("cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class RestoredStudent:
  """A checkpoint's student in eval form, the run's config and where it came from."""
  graphdef: nnx.GraphDef
  params: nnx.State
  batch_stats: nnx.State
  config: ml_collections.ConfigDict
  source: dict  # checkpoint directory, step and item


def config_from_json(data: dict) -> ml_collections.ConfigDict:
  """The ConfigDict a checkpoint's JSON `config` item was written from.

  JSON turns the config files' tuples into lists; they become tuples again, so that the networks
  see the values the config file gave. The config is locked, as the command line's are.
  """
  def tuples(value):
    if isinstance(value, dict):
      return {k: tuples(v) for k, v in value.items()}
    if isinstance(value, list):
      return tuple(tuples(v) for v in value)
    return value
  config = ml_collections.ConfigDict(tuples(data))
  config.lock()
  return config


def checkpoint_directory(path: str | pathlib.Path) -> pathlib.Path:
  """The Orbax directory of a training run (WORKDIR/checkpoints) or a model checkpoint (itself)."""
  path = pathlib.Path(path).absolute()
  if (path / "checkpoints").is_dir():
    return path / "checkpoints"
  if not path.is_dir():
    raise FileNotFoundError(f"{path} does not exist")
  return path


def restore_student(path: str | pathlib.Path, step: int | None = None) -> RestoredStudent:
  """Restores the student of a training run or model checkpoint with the config stored beside it.

  Args:
    path: a training run's workdir (its `checkpoints/` are read), the checkpoints directory itself,
      or a model checkpoint with a `student` item (`avcd convert`, checkpoints.save_model).
    step: the checkpoint step; None takes the latest.

  Returns:
    The student's graphdef, params and batch statistics (on one local device) and the config.

  Raises:
    FileNotFoundError: no such directory or step.
    ValueError: the step holds no config, or neither a student nor a training state.
  """
  directory = checkpoint_directory(path)
  options = ocp.CheckpointManagerOptions(create=False, read_only=True)
  with ocp.CheckpointManager(directory, options=options) as manager:
    all_steps = list(manager.all_steps())
    step = manager.latest_step() if step is None else step
    if step is None or step not in all_steps:
      raise FileNotFoundError(f"no checkpoint {'at all' if step is None else f'for step {step}'} "
                              f"in {directory} (steps: {all_steps})")
    items = {p.name for p in (directory / str(step)).iterdir() if p.is_dir()}
    if checkpoints.CONFIG not in items:
      raise ValueError(f"{directory} step {step} has no {checkpoints.CONFIG!r} item (it has "
                       f"{sorted(items)}); its model's config cannot be known")
    config = config_from_json(manager.restore(step, args=ocp.args.Composite(
        **{checkpoints.CONFIG: ocp.args.JsonRestore()}))[checkpoints.CONFIG])

    seed = config.get("seed", 0)  # the seed shapes nothing; absent from model-only configs
    graphdef, params, batch_stats = ts.split_model(
        nnx.eval_shape(lambda: ts.build_student(config.model, seed)))
    if checkpoints.STUDENT in items:
      item = checkpoints.STUDENT
      target = dict(params=params, batch_stats=batch_stats)
    elif checkpoints.STATE in items:
      item = checkpoints.STATE
      # A training state restores whole; the optimizer only shapes it (its schedule is irrelevant).
      optimizer = ts.make_optimizer(config.optim, steps_per_epoch=1)
      target = jax.eval_shape(lambda: ts.init_train_state(ts.build_student(config.model, seed),
                                                          optimizer, seed))
    else:
      raise ValueError(f"{directory} step {step} holds neither a student model nor a training "
                       f"state (items: {sorted(items)})")
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          target)
    restored = manager.restore(step, args=ocp.args.Composite(
        **{item: ocp.args.StandardRestore(target)}))[item]
  if item == checkpoints.STATE:
    params, batch_stats = restored.params, restored.batch_stats
  else:
    params, batch_stats = restored["params"], restored["batch_stats"]
  logging.info("restored the student from %s step %d (%s)", directory, step, item)
  return RestoredStudent(graphdef=graphdef, params=params, batch_stats=batch_stats, config=config,
                         source=dict(checkpoint_dir=str(directory), step=int(step), item=item))


def feature_settings(config: ml_collections.ConfigDict) -> dict:
  """What the inputs must be computed with (predict reads this from the export's metadata)."""
  return dict(fps=schema.FPS, face_size=schema.FACE_SIZE, sample_rate=schema.SAMPLE_RATE,
              num_mfcc=schema.NUM_MFCC,
              audio_frames_per_frame=int(config.model.audio_frames_per_frame), fake_class=1)


def signature(features: dict) -> dict:
  """The serving signature, as recorded in the metadata: names, dtypes and shapes."""
  rows, size = features["audio_frames_per_frame"], features["face_size"]
  return dict(
      name=SIGNATURE_KEY,
      inputs=dict(mfcc=dict(dtype="float32", shape=["B", f"{rows}*T", features["num_mfcc"]]),
                  faces=dict(dtype="uint8", shape=["B", "T", size, size]),
                  num_frames=dict(dtype="int32", shape=["B"])),
      outputs=dict(probability=dict(dtype="float32", shape=["B"]),
                   score=dict(dtype="float32", shape=["B"]),
                   frame_logits=dict(dtype="float32", shape=["B", "T", 2])))


def describe_signature(spec: dict) -> str:
  """A signature from `signature` in a few lines: name, then each input and output."""
  def tensors(group):
    return "\n".join(f"    {name:<13}{t['dtype']:<9}({', '.join(map(str, t['shape']))})"
                     for name, t in spec[group].items())
  return f"{spec['name']}\n  inputs\n{tensors('inputs')}\n  outputs\n{tensors('outputs')}"


def serving_function(student: RestoredStudent):
  """(fn(weights, mfcc, faces, num_frames) -> outputs, weights): the predict function of the
  student over a flat list of its parameter and statistic arrays."""
  weights, treedef = jax.tree.flatten((student.params, student.batch_stats))
  predict_fn = steps.make_predict_fn(student.graphdef)

  def serve(weights, mfcc, faces, num_frames):
    params, batch_stats = jax.tree.unflatten(treedef, weights)
    return predict_fn(params, batch_stats, dict(mfcc=mfcc, faces=faces, num_frames=num_frames))

  return serve, weights


def export_saved_model(student: RestoredStudent, output: str | pathlib.Path, *,
                       platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
                       overwrite: bool = False) -> dict:
  """Writes the SavedModel and its metadata file to `output`; returns the metadata.

  Args:
    student: the restored student.
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
  rows, size, num_mfcc = (features["audio_frames_per_frame"], features["face_size"],
                          features["num_mfcc"])
  serve, weights = serving_function(student)
  tf_serve = jax2tf.convert(
      serve, with_gradient=False, native_serialization_platforms=tuple(platforms),
      polymorphic_shapes=[None, f"(b, {rows}*t, {num_mfcc})", f"(b, t, {size}, {size})", "(b,)"])

  module = tf.Module()
  module.student_weights = [tf.Variable(np.asarray(w), trainable=False) for w in weights]

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec([None, None, num_mfcc], tf.float32, name="mfcc"),
      tf.TensorSpec([None, None, size, size], tf.uint8, name="faces"),
      tf.TensorSpec([None], tf.int32, name="num_frames")])
  def serving(mfcc, faces, num_frames):
    return tf_serve(module.student_weights, mfcc, faces, num_frames)

  module.serving = serving
  tf.saved_model.save(module, str(output), signatures={SIGNATURE_KEY: serving})
  metadata = dict(avcd_version=version.VERSION, source=student.source,
                  platforms=list(platforms), signature=signature(features), features=features,
                  config=json.loads(student.config.to_json_best_effort()))
  (output / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
  logging.info("exported %s in %.1f s", output, time.perf_counter() - start)
  return metadata


def read_metadata(saved_model_dir: str | pathlib.Path) -> dict:
  """The metadata `avcd export` wrote beside a SavedModel."""
  path = pathlib.Path(saved_model_dir) / METADATA_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: {saved_model_dir} is not an `avcd export` output")
  return json.loads(path.read_text())
