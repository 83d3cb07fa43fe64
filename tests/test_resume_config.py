"""A workdir resumed with another config: refused when the change alters what is trained, recorded
in WORKDIR/config_history.jsonl when it only extends or observes the run."""

import json
import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from avcd import checkpoints, config_lib
from tests.conftest import FAST_COMPILE_FLAGS, REPO, TINY_CONFIG


def _saved_step(directory, config: ml_collections.ConfigDict):
  checkpointer = checkpoints.TrainCheckpointer(
    directory, keep_latest=3, keep_best=0, best_metric="auc"
  )
  checkpointer.save(4, dict(w=np.zeros(3, np.float32)), config=config, force=True)
  checkpointer.wait()
  checkpointer.close()
  return directory / "4"


def _tiny(**overrides) -> ml_collections.ConfigDict:
  return config_lib.load_config(str(TINY_CONFIG), overrides)


def test_a_change_to_what_is_trained_is_refused_naming_every_field(tmp_path):
  step_dir = _saved_step(tmp_path, _tiny())
  with pytest.raises(checkpoints.ResumeRefusedError) as refused:
    checkpoints.resume_config_changes(
      step_dir, _tiny(**{"optim.learning_rate": 0.01, "seed": 3, "train.num_epochs": 5})
    )
  message = str(refused.value)
  assert "\n" not in message
  assert "optim.learning_rate: checkpoint 0.001, this run 0.01" in message
  assert "seed: checkpoint 0, this run 3" in message
  assert "num_epochs" not in message  # allowed, and not what is wrong
  assert "new --workdir" in message and "revert" in message


def test_changes_that_extend_or_observe_a_run_are_returned(tmp_path):
  step_dir = _saved_step(tmp_path, _tiny())
  changes = checkpoints.resume_config_changes(
    step_dir,
    _tiny(
      **{
        "train.num_epochs": 5,
        "train.log_every_steps": 10,
        "eval.every_steps": 2,
        "data.prefetch": 2,
        "mesh.data": 1,
      }
    ),
  )
  assert changes == {
    "train.num_epochs": [2, 5],
    "train.log_every_steps": [1, 10],
    "eval.every_steps": [0, 2],
    "data.prefetch": [4, 2],
    "mesh.data": [-1, 1],
  }
  assert checkpoints.resume_config_changes(step_dir, _tiny()) == {}


def test_fields_added_after_the_checkpoint_count_only_off_their_default(tmp_path):
  # A checkpoint written before the phoneme heads existed: its config lacks their fields.
  old = _tiny().to_dict()
  del old["model"]["phoneme_classes"], old["loss"]["phoneme_weight"]
  step_dir = _saved_step(tmp_path, ml_collections.ConfigDict(old))
  assert checkpoints.resume_config_changes(step_dir, _tiny()) == {}
  with pytest.raises(checkpoints.ResumeRefusedError, match=r"loss\.phoneme_weight: checkpoint "):
    checkpoints.resume_config_changes(step_dir, _tiny(**{"loss.phoneme_weight": 0.5}))


def _train(workdir, *overrides) -> subprocess.CompletedProcess:
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "avcd.cli",
      "train",
      f"--config={TINY_CONFIG}",
      f"--workdir={workdir}",
      *overrides,
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=900,
    env=dict(
      os.environ,
      PYTHONPATH=str(REPO),
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=FAST_COMPILE_FLAGS,
      JAX_COMPILATION_CACHE_DIR=str(workdir.parent / "xla_cache"),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    ),
  )


def _error_line(result: subprocess.CompletedProcess) -> str:
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if ": error: " in line]
  assert len(lines) == 1, result.stderr[-3000:]
  return lines[0]


def test_train_refuses_a_changed_run_and_records_allowed_changes(tmp_path):
  workdir = tmp_path / "run"
  first = _train(workdir, "--config.train.num_epochs=1")
  assert first.returncode == 0, first.stderr[-3000:]
  config_json = (workdir / "config.json").read_text()

  refused = _train(workdir, "--config.train.num_epochs=2", "--config.optim.learning_rate=0.01")
  assert refused.returncode == 1
  line = _error_line(refused)
  assert (
    "ResumeRefusedError" in line and "optim.learning_rate: checkpoint 0.001, this run 0.01" in line
  )
  assert (workdir / "config.json").read_text() == config_json  # the run's record is untouched
  assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 4]

  # The corpus moved: allowed while the training split's files are the same, not otherwise.
  moved, other = tmp_path / "moved", tmp_path / "other"
  shutil.copytree(workdir / "data", moved)
  shutil.copytree(workdir / "data", other)
  shard = sorted(p for p in other.rglob("*train.array_record*"))[0]
  with shard.open("ab") as f:
    f.write(b"\0")
  refused = _train(workdir, "--config.train.num_epochs=2", f"--config.data.data_dir={other}")
  assert refused.returncode == 1
  assert f"data.data_dir: checkpoint {workdir / 'data'}, this run {other}" in _error_line(refused)

  resumed = _train(workdir, "--config.train.num_epochs=2", f"--config.data.data_dir={moved}")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resuming from" in resumed.stderr and "step 5/8" in resumed.stderr
  history = [
    json.loads(line) for line in (workdir / checkpoints.CONFIG_HISTORY).read_text().splitlines()
  ]
  assert history == [
    dict(
      history[0],
      resumed_from_step=4,
      changes={
        "data.data_dir": dict(checkpoint=str(workdir / "data"), now=str(moved)),
        "train.num_epochs": dict(checkpoint=1, now=2),
      },
    )
  ]
  assert json.loads((workdir / "config.json").read_text())["train"]["num_epochs"] == 2
