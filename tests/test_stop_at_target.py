"""A run with `train.stop_metrics` ends at the first evaluation that reaches its target."""

import json

import pytest

from avcd import config_checks, config_lib, train
from data_pipelines.building import corpus_setup
from tests.conftest import REPO

TINY = str(REPO / "configs" / "tiny.py")  # 2 epochs of 4 steps


def _steps_logged(workdir) -> list[int]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r["step"] for r in map(json.loads, lines) if "loss" in r]


@pytest.mark.parametrize("target, last_step", [(0.0, 2), (1.01, 8)])
def test_training_stops_at_the_first_evaluation_at_its_target(tmp_path, target, last_step):
  config = config_lib.load_config(
    TINY,
    {
      "eval.every_steps": 2,
      "train.checkpoint_every_steps": 3,
      "train.stop_metrics": ("test/auc",),
      "train.stop_at_least": target,
    },
  )
  config = corpus_setup.prepare_corpus(config, tmp_path)
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "test" in results
  assert max(_steps_logged(tmp_path / "run")) == last_step
  # The step it stopped at is saved, although it is not a checkpoint step.
  assert (tmp_path / "run" / "checkpoints" / str(last_step)).is_dir()


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


def test_a_stopped_run_stays_stopped_and_a_lower_bar_lets_it_go_on(tmp_path):
  def config_with(target):
    config = config_lib.load_config(
      TINY,
      {
        "eval.every_steps": 2,
        "train.stop_metrics": ("test/auc",),
        "train.stop_at_least": target,
      },
    )
    return corpus_setup.prepare_corpus(config, tmp_path)

  workdir = tmp_path / "run"
  train.train_and_evaluate(config_with(0.0), str(workdir))
  assert max(_steps_logged(workdir)) == 2
  # Started again as it was: step 2 is evaluated first, is at the target, and nothing is trained.
  assert "test" in train.train_and_evaluate(config_with(0.0), str(workdir))
  assert max(_steps_logged(workdir)) == 2
  # The stop is a resumable change (it only says when the run ends): an unreachable target trains
  # on from step 2 to the last step.
  train.train_and_evaluate(config_with(1.01), str(workdir))
  assert max(_steps_logged(workdir)) == 8
  assert (workdir / "checkpoints" / "8").is_dir()
