"""A run with `train.stop_metrics` ends at the first evaluation that reaches its target."""

import json

import pytest

from avcd import config_checks, config_lib, train
from data_pipelines.building import corpus_setup
from tests.conftest import REPO

TINY = str(REPO / "configs" / "tiny.py")  # 2 epochs of 4 steps


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """One tiny corpus for every run here (each run has its own workdir)."""
  root = tmp_path_factory.mktemp("stop_at_target")
  return corpus_setup.prepare_corpus(config_lib.load_config(TINY), root).data.data_dir


def _config(data_dir, **overrides):
  config = config_lib.load_config(
    TINY,
    {"eval.every_steps": 2, "train.stop_metrics": ("test/auc",), "data.data_dir": data_dir}
    | overrides,
  )
  return corpus_setup.prepare_corpus(config, data_dir)


def _steps_logged(workdir) -> list[int]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r["step"] for r in map(json.loads, lines) if "loss" in r]


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"train.stop_metrics": ("test/auc",)}, "set eval.every_steps"),
    ({"train.stop_metrics": ("validation/auc",), "eval.every_steps": 2}, "'validation/auc'"),
    ({"train.stop_metrics": ("test/eer",), "eval.every_steps": 2}, "'test/eer'"),
  ],
)
def test_stop_metrics_that_cannot_be_read_are_refused(overrides, message):
  config = config_lib.load_config(TINY, overrides)
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.check(config)


def test_training_stops_at_its_target_stays_stopped_and_a_higher_bar_lets_it_go_on(
  tmp_path, corpus
):
  def config_with(target):
    return _config(corpus, **{"train.stop_at_least": target, "train.checkpoint_every_steps": 3})

  workdir = tmp_path / "run"
  assert "test" in train.train_and_evaluate(config_with(0.0), str(workdir))
  assert max(_steps_logged(workdir)) == 2  # the first evaluation, of 8 steps
  # The step it stopped at is saved, although it is not a checkpoint step.
  assert (workdir / "checkpoints" / "2").is_dir()
  # Started again as it was: step 2 is evaluated first, is at the target, and nothing is trained.
  assert "test" in train.train_and_evaluate(config_with(0.0), str(workdir))
  assert max(_steps_logged(workdir)) == 2
  # The stop is a resumable change (it only says when the run ends): an unreachable target trains
  # on from step 2 to the last step.
  train.train_and_evaluate(config_with(1.01), str(workdir))
  assert max(_steps_logged(workdir)) == 8
  assert (workdir / "checkpoints" / "8").is_dir()
  # A config whose last step is before the checkpoint is refused in one line, not trained back.
  fewer_epochs = config_lib.load_config(TINY, {"data.data_dir": corpus, "train.num_epochs": 1})
  with pytest.raises(config_checks.ConfigError, match="at step 8, past this config's last step 4"):
    train.train_and_evaluate(fewer_epochs, str(workdir))
