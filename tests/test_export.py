"""avcd export: the SavedModel, run by TensorFlow and by saved_model_cli, against the JAX model."""

import json
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from avcd import checkpoints, config_lib
from avcd.core import inference
from avcd.evaluation import calibration
from avcd.models import build
from avcd.serving import export
from avcd.training import state as ts
from tests.conftest import REPO

tf = pytest.importorskip("tensorflow")

STEP = 7
TOLERANCE = 1e-4
pytestmark = pytest.mark.slow


def write_training_checkpoint(workdir: pathlib.Path):
  """A training checkpoint of configs/tiny.py at step STEP, written as `avcd train` writes one.

  The batch statistics are moved away from their initial values (mean 0, variance 1), so that an
  export that failed to restore them would not match. Returns (config, state).
  """
  config = config_lib.load_config(str(REPO / "configs" / "tiny.py"))
  optimizer = ts.make_optimizer(config.optim, steps_per_epoch=1)
  state = ts.init_train_state(
    build.build_student(config.model, config.seed), optimizer, config.seed
  )
  rng = np.random.default_rng(0)

  def perturb(path, x):
    factor = rng.uniform(0.5, 1.5, x.shape).astype(x.dtype)
    is_variance = any(getattr(key, "key", None) == "var" for key in path)
    return x * factor if is_variance else x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype)

  state = state.replace(batch_stats=jax.tree_util.tree_map_with_path(perturb, state.batch_stats))
  checkpointer = checkpoints.TrainCheckpointer(
    workdir / "checkpoints", keep_latest=3, keep_best=0, best_metric="auc"
  )
  checkpointer.save(STEP, state, config=config)
  checkpointer.wait()
  checkpointer.close()
  return config, state


def random_batch(rng: np.random.Generator, num_frames: list[int], length: int) -> dict:
  """A batch padded to `length` frames with the given valid lengths."""
  batch = len(num_frames)
  return dict(
    mfcc=rng.standard_normal((batch, 4 * length, 13)).astype(np.float32),
    faces=rng.integers(0, 256, (batch, length, 112, 112), dtype=np.uint8),
    num_frames=np.asarray(num_frames, np.int32),
  )


def assert_outputs_close(got: dict, want: dict, num_frames: np.ndarray) -> None:
  """Clip outputs everywhere, frame logits on valid frames (padding's carry no meaning)."""
  for key in ("probability", "raw_probability", "logit", "score"):
    np.testing.assert_allclose(got[key], want[key], rtol=0, atol=TOLERANCE, err_msg=key)
  for row, count in enumerate(num_frames):
    np.testing.assert_allclose(
      got["frame_logits"][row, :count],
      want["frame_logits"][row, :count],
      rtol=0,
      atol=TOLERANCE,
      err_msg=f"frame_logits row {row}",
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  config, state = write_training_checkpoint(workdir)
  # A calibration map of this checkpoint, as `avcd eval` saves one: the export bakes it in.
  fitted = calibration.Calibration(
    "platt", 0.5, 0.3, "validation", 100, checkpoint_dir=str(workdir / "checkpoints"), step=STEP
  )
  fitted.save(workdir)
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: build.build_student(config.model, config.seed)))
  predict_fn = jax.jit(inference.make_predict_fn(graphdef, fitted))

  def jax_outputs(batch):
    return {k: np.asarray(v) for k, v in predict_fn(state.params, state.batch_stats, batch).items()}

  return dict(workdir=workdir, config=config, state=state, jax_outputs=jax_outputs)


@pytest.fixture(scope="module")
def saved_model(run, tmp_path_factory):
  """`avcd export` of the run's checkpoint, through the command line."""
  output = tmp_path_factory.mktemp("export") / "saved_model"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "avcd.cli",
      "export",
      f"--workdir={run['workdir']}",
      f"--output={output}",
      "--platforms=cpu",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"step {STEP} (state)" in result.stdout
  assert "probability: calibrated (Platt scale 0.5, bias 0.3" in result.stdout
  return output


@pytest.fixture(scope="module")
def serving_signature(saved_model):
  loaded = tf.saved_model.load(str(saved_model))

  def call(batch):
    out = loaded.signatures[export.SIGNATURE_KEY](**{k: tf.constant(v) for k, v in batch.items()})
    return {k: v.numpy() for k, v in out.items()}

  return call


def test_metadata_records_signature_source_and_config(run, saved_model):
  metadata = export.read_metadata(saved_model)
  assert metadata["source"] == dict(
    checkpoint_dir=str(run["workdir"] / "checkpoints"), step=STEP, item="state"
  )
  assert metadata["signature"]["inputs"] == dict(
    mfcc=dict(dtype="float32", shape=["B", "4*T", 13]),
    faces=dict(dtype="uint8", shape=["B", "T", 112, 112]),
    num_frames=dict(dtype="int32", shape=["B"]),
  )
  assert set(metadata["signature"]["outputs"]) == {
    "probability",
    "raw_probability",
    "logit",
    "score",
    "frame_logits",
  }
  assert metadata["calibration"]["method"] == "platt"
  assert metadata["features"]["fps"] == 25.0
  assert checkpoints.config_from_json(metadata["config"]) == run["config"]


@pytest.mark.parametrize("length", [5, 17, 40])
def test_saved_model_matches_jax_at_any_length(run, serving_signature, length):
  """One export serves lengths never seen at export time, in padded batches of mixed lengths."""
  batch = random_batch(np.random.default_rng(length), [length, length // 2 + 1, 1], length)
  assert_outputs_close(serving_signature(batch), run["jax_outputs"](batch), batch["num_frames"])


def test_saved_model_masks_padding(serving_signature):
  """Clips padded to 17 frames score as the same clips cut to 5 frames (shapes compiled above)."""
  padded = random_batch(np.random.default_rng(1), [17, 5, 1], 17)
  cut = dict(
    mfcc=padded["mfcc"][:, : 4 * 5],
    faces=padded["faces"][:, :5],
    num_frames=np.array([5, 5, 1], np.int32),
  )
  got, want = serving_signature(padded), serving_signature(cut)
  np.testing.assert_allclose(
    got["probability"][1:], want["probability"][1:], rtol=0, atol=TOLERANCE
  )
  np.testing.assert_allclose(
    got["frame_logits"][1, :5], want["frame_logits"][1], rtol=0, atol=TOLERANCE
  )


def test_saved_model_rejects_unlinked_lengths(serving_signature):
  batch = random_batch(np.random.default_rng(2), [8], 8)
  batch["mfcc"] = batch["mfcc"][:, :-1]
  with pytest.raises(tf.errors.InvalidArgumentError):
    serving_signature(batch)


def test_saved_model_cli_run_matches_jax(run, saved_model, tmp_path):
  batch = random_batch(np.random.default_rng(3), [23, 11], 23)
  inputs = []
  for name, value in batch.items():
    np.save(tmp_path / f"{name}.npy", value)
    inputs.append(f"{name}={tmp_path / f'{name}.npy'}")
  outdir = tmp_path / "outputs"
  result = subprocess.run(
    # The venv's own script: CI runs the venv's python without putting its bin/ on PATH.
    [
      str(pathlib.Path(sys.executable).parent / "saved_model_cli"),
      "run",
      "--dir",
      str(saved_model),
      "--tag_set",
      "serve",
      "--signature_def",
      export.SIGNATURE_KEY,
      "--inputs",
      ";".join(inputs),
      "--outdir",
      str(outdir),
    ],
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  got = {name: np.load(path) for path in outdir.glob("*.npy") for name in [path.stem]}
  assert_outputs_close(got, run["jax_outputs"](batch), batch["num_frames"])


def test_restore_student_from_training_and_model_checkpoints(run, tmp_path):
  from_run = checkpoints.restore_student(run["workdir"], STEP)
  assert from_run.source["item"] == "state" and from_run.config == run["config"]
  model_dir = tmp_path / "model"
  checkpoints.save_model(
    model_dir,
    student_state=dict(params=run["state"].params, batch_stats=run["state"].batch_stats),
    config=run["config"],
  )
  from_model = checkpoints.restore_student(model_dir)
  assert from_model.source == dict(checkpoint_dir=str(model_dir), step=0, item="student")
  for restored in (from_run, from_model):
    for got, want in zip(
      jax.tree.leaves((restored.params, restored.batch_stats)),
      jax.tree.leaves((run["state"].params, run["state"].batch_stats)),
    ):
      np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_restore_student_names_missing_steps_and_configs(run, tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint for step 3"):
    checkpoints.restore_student(run["workdir"], 3)
  model_dir = tmp_path / "model"
  checkpoints.save_model(
    model_dir, student_state=dict(params=run["state"].params, batch_stats=run["state"].batch_stats)
  )
  with pytest.raises(ValueError, match="no 'config' item"):
    checkpoints.restore_student(model_dir)


def test_export_refuses_a_non_empty_output(run, tmp_path):
  (tmp_path / "keep.txt").write_text("data")
  with pytest.raises(FileExistsError, match="--overwrite"):
    export.export_saved_model(checkpoints.restore_student(run["workdir"]), tmp_path)


def test_config_from_json_gives_back_tuples():
  config = checkpoints.config_from_json(json.loads(json.dumps(dict(a=dict(b=(1, 2)), c=[[3], 4]))))
  assert config.a.b == (1, 2) and config.c == ((3,), 4)


@pytest.mark.parametrize(
  "change,message",
  [
    (lambda b: dict(b, num_frames=np.array([0], np.int32)), "at least one valid frame"),
    (lambda b: dict(b, num_frames=np.array([-3], np.int32)), "at least one valid frame"),
    (lambda b: dict(b, num_frames=np.array([9], np.int32)), "cannot be longer than T"),
    (
      lambda b: dict(b, mfcc=np.where(np.arange(32)[None, :, None] == 5, np.nan, b["mfcc"])),
      "mfcc holds NaN or Inf",
    ),
    (lambda b: {k: v[:0] for k, v in b.items()}, r"B = 0"),
    (lambda b: dict(b, mfcc=b["mfcc"][:, :0], faces=b["faces"][:, :0]), r"T = 0"),
  ],
)
def test_the_serving_contract_fails_bad_inputs_with_a_message(serving_signature, change, message):
  batch = change(random_batch(np.random.default_rng(4), [8], 8))
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    serving_signature(batch)


def test_faces_of_another_size_are_refused_by_the_signature(serving_signature):
  batch = random_batch(np.random.default_rng(5), [8], 8)
  batch["faces"] = batch["faces"][:, :, :64, :64]
  with pytest.raises(
    (ValueError, TypeError, tf.errors.InvalidArgumentError),
    match="faces must be 112 x 112|faces.*112",
  ):
    serving_signature(batch)


def _avcd(*args) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "avcd.cli", *map(str, args)],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
    check=False,
  )


def test_export_and_predict_skip_or_refuse_a_corrupt_step_as_eval_does(run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(run["workdir"], workdir)
  checkpointer = checkpoints.TrainCheckpointer(
    workdir / "checkpoints", keep_latest=3, keep_best=0, best_metric="auc"
  )
  checkpointer.save(STEP + 2, run["state"], config=run["config"])
  checkpointer.wait()
  checkpointer.close()
  newest = workdir / "checkpoints" / str(STEP + 2)
  victim = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
  data = bytearray(victim.read_bytes())
  data[len(data) // 2] ^= 1
  victim.write_bytes(bytes(data))

  exported = _avcd(
    "export", f"--workdir={workdir}", f"--output={tmp_path / 'out'}", "--platforms=cpu"
  )
  assert exported.returncode == 0, exported.stderr[-3000:]
  assert f"step {STEP} (state)" in exported.stdout  # the newest intact step
  assert f"{newest} is corrupt" in exported.stderr and newest.exists()  # read-only: not moved
  for command in (
    ["export", f"--output={tmp_path / 'out2'}", "--platforms=cpu"],
    ["predict", str(tmp_path / "any.mp4"), f"--output={tmp_path / 'p'}"],
  ):
    refused = _avcd(*command, f"--workdir={workdir}", f"--checkpoint={STEP + 2}")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert f"checkpoint {newest} is corrupt" in refused.stderr


def test_export_mistakes_are_one_line_before_any_work(run, tmp_path):
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "keep.txt").write_text("data")
  cases = [
    ([f"--workdir={tmp_path / 'nothing'}", f"--output={tmp_path / 'o'}"], "no such directory"),
    ([f"--workdir={run['workdir']}", f"--output={tmp_path / 'full'}"], "not empty"),
    (
      [f"--workdir={run['workdir']}", f"--output={tmp_path / 'o'}", "--platforms=bogus"],
      "--platforms=bogus: choose from cpu, cuda, rocm, tpu",
    ),
    (
      [f"--workdir={run['workdir']}", f"--output={tmp_path / 'o'}", "--checkpoint=3"],
      "no checkpoint for step 3",
    ),
    (
      [f"--workdir={run['workdir']}", f"--output={tmp_path / 'full' / 'keep.txt'}"],
      "is a file, not a directory",
    ),
    ([f"--workdir={run['workdir']}", "--output=/proc/avcd-export"], "cannot create it"),
  ]
  for args, message in cases:
    result = _avcd("export", *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert message in result.stderr
  assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_the_printed_signature_keeps_each_name_apart_from_its_dtype():
  spec = export.signature(dict(audio_frames_per_frame=4, face_size=112, num_mfcc=13))
  lines = export.describe_signature(spec).splitlines()
  rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("    ")}
  assert rows["raw_probability"] == ["float32", "(B)"]
  assert rows["mfcc"] == ["float32", "(B,", "4*T,", "13)"]
  assert len(rows) == 8


def test_a_full_disk_during_export_is_one_line_naming_the_output(run, tmp_path):
  # A 64 KB tmpfs: the tiny model's SavedModel (about 1 MB) does not fit.
  small = tmp_path / "small"
  small.mkdir()
  mounted = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
    capture_output=True,
    check=False,
  )
  if mounted.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
  try:
    result = _avcd("export", f"--workdir={run['workdir']}", f"--output={small / 'model'}")
  finally:
    subprocess.run(["umount", str(small)], check=False)

  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  (line,) = [line for line in result.stderr.splitlines() if ": error: " in line]
  assert f"ExportError: {small / 'model'}: writing the SavedModel failed" in line
  assert line.endswith("No space left on device"), line
