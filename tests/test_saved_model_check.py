"""A SavedModel is a program: avcd runs only graphs of the ops `avcd export` emits, refuses any
other (naming the op) before TensorFlow loads it, and names a damaged export in one line."""

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from avcd import config_lib
from avcd.models import build
from avcd.serving import export, saved_model_check
from tests import media_utils
from tests.conftest import REPO

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """`avcd export`'s SavedModel of an untrained configs/tiny.py student, and a scorable video."""
  from avcd import checkpoints

  folder = tmp_path_factory.mktemp("export")
  config = config_lib.load_config(str(REPO / "configs" / "tiny.py"))
  _, params, batch_stats = build.split_model(build.build_student(config.model, config.seed))
  checkpoints.save_model(
    folder / "checkpoint", config=config, student_state=dict(params=params, batch_stats=batch_stats)
  )
  export.export_saved_model(
    checkpoints.restore_student(folder / "checkpoint"), folder / "saved_model", platforms=("cpu",)
  )
  frames = np.repeat(media_utils.flat_frames(media_utils.grey_levels(30), 112, 112), 1, 0)
  video = media_utils.write_video(
    folder / "face.mp4", frames, audio=media_utils.tone(30 / 25, 16_000, frequency=220.0)
  )
  return dict(saved_model=folder / "saved_model", video=video)


def hostile_saved_model(folder: pathlib.Path, exported: dict, body) -> pathlib.Path:
  """A SavedModel with avcd's signature and metadata whose serving function also runs `body`."""

  module = tf.Module()

  @tf.function(
    input_signature=[
      tf.TensorSpec([None, None, 13], tf.float32, name="mfcc"),
      tf.TensorSpec([None, None, 112, 112], tf.uint8, name="faces"),
      tf.TensorSpec([None], tf.int32, name="num_frames"),
    ]
  )
  def serving(mfcc, faces, num_frames):
    with tf.control_dependencies([body(mfcc)]):
      clips = tf.cast(tf.shape(faces)[0], tf.int32)
      zeros = tf.zeros([clips], tf.float32)
      return dict(
        probability=zeros + 0.5,
        raw_probability=zeros + 0.5,
        logit=zeros,
        score=zeros,
        frame_logits=tf.zeros([clips, tf.shape(faces)[1], 2], tf.float32),
      )

  module.serving = serving
  tf.saved_model.save(module, str(folder), signatures={export.SIGNATURE_KEY: serving})
  shutil.copy(exported["saved_model"] / export.METADATA_FILE, folder / export.METADATA_FILE)
  return folder


def run_predict(*args) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "avcd.cli", "predict", *map(str, args)],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
    check=False,
  )


def test_an_export_passes_the_check(exported):
  saved_model_check.check(exported["saved_model"])


def test_predict_refuses_a_saved_model_that_writes_a_file_and_writes_nothing(exported, tmp_path):
  target = tmp_path / "written_by_the_model"
  model = hostile_saved_model(
    tmp_path / "model", exported, lambda mfcc: tf.io.write_file(str(target), "owned")
  )
  result = run_predict(
    exported["video"], f"--saved-model={model}", "--detector=none", f"--output={tmp_path / 'out'}"
  )
  assert result.returncode == 1, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if ": error: " in line]
  assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "op WriteFile in function" in errors[0] and "saved_model.pb" in errors[0]
  assert not target.exists()


@pytest.mark.parametrize(
  "body,op",
  [
    (lambda mfcc: tf.py_function(lambda x: x, [mfcc], tf.float32), "EagerPyFunc"),
    (lambda mfcc: tf.io.read_file("/etc/hostname"), "ReadFile"),
    (
      lambda mfcc: tf.raw_ops.SaveV2(  # checkpoint I/O is for the saver's functions only
        prefix="/tmp/avcd-hostile", tensor_names=["x"], shape_and_slices=[""], tensors=[mfcc]
      ),
      "SaveV2",
    ),
  ],
  ids=["python", "read_file", "save_outside_the_saver"],
)
def test_ops_outside_the_exports_set_are_refused_by_name(exported, tmp_path, body, op):
  model = hostile_saved_model(tmp_path / "model", exported, body)
  with pytest.raises(saved_model_check.UntrustedSavedModelError, match=f"op {op} in function"):
    saved_model_check.check(model)


def test_a_damaged_export_is_one_line_naming_it(exported, tmp_path):
  model = tmp_path / "model"
  shutil.copytree(exported["saved_model"], model)
  out = f"--output={tmp_path / 'out'}"

  (model / "saved_model.pb").write_bytes(b"not a protocol buffer at all")
  result = run_predict(exported["video"], f"--saved-model={model}", "--detector=none", out)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert f"{model / 'saved_model.pb'}: not a SavedModel" in result.stderr

  shutil.copy(exported["saved_model"] / "saved_model.pb", model / "saved_model.pb")
  data_file = next((model / "variables").glob("variables.data-*"))
  data = bytearray(data_file.read_bytes())
  data[len(data) // 2] ^= 0x40
  data_file.write_bytes(bytes(data))
  result = run_predict(exported["video"], f"--saved-model={model}", "--detector=none", out)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert f"{model}: TensorFlow cannot load it" in result.stderr

  (model / export.METADATA_FILE).write_text("{not json")
  result = run_predict(exported["video"], f"--saved-model={model}", "--detector=none", out)
  assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert f"{model / export.METADATA_FILE}: not the JSON `avcd export` writes" in result.stderr
  (model / export.METADATA_FILE).write_text(json.dumps(["a", "list"]))
  result = run_predict(exported["video"], f"--saved-model={model}", "--detector=none", out)
  assert result.returncode == 2 and "not the metadata `avcd export` writes" in result.stderr
