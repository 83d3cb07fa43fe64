"""Evaluation over whole splits: every clip scored once, silence variants, cross-corpus splits."""

import csv
import dataclasses
import pathlib

import ml_collections
import numpy as np
import pytest

from avcd import config_checks, config_lib
from avcd.core import sharding
from avcd.evaluation import calibration, evaluate
from avcd.training import steps
from data_pipelines.building import corpus_setup
from data_pipelines.reading import split_index

CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "tiny.py"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("evaluate")
  # 7 test clips: no eval batch size divides them, so the last batch carries filler rows.
  config = config_lib.load_config(
    CONFIG,
    {
      "data.synthetic.test_clips": 7,
      "eval.leading_silence": ("keep", "trim"),
      "eval.frame_budget": 100,
    },
  )
  config = corpus_setup.prepare_corpus(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  step = steps.make_train_step(config, mesh)  # as avcd train builds it
  state = step.init_state()
  predict_fn = step.predict_step()
  results = evaluate.evaluate_splits(
    predict_fn, state.params, state.batch_stats, config, mesh, workdir
  )
  model = (predict_fn, state.params, state.batch_stats, mesh)
  return config, workdir, results, model


def test_every_clip_is_scored_exactly_once(evaluated):
  config, workdir, results, _ = evaluated
  index = split_index.load_index(
    split_index.open_split(config.data.builder, config.data.data_dir, "test")
  )
  with (workdir / "eval" / "test" / "scores.csv").open() as f:
    ids = [row["id"] for row in csv.DictReader(f)]
  assert sorted(ids) == sorted(index.id.tolist())
  assert results["test"]["num_clips"] == len(index) == 7


def test_leading_silence_variants_each_get_a_report(evaluated):
  _, workdir, results, _ = evaluated
  assert set(results) == {"test", "test-silence_trimmed"}
  for name in results:
    assert (workdir / "eval" / name / "metrics.json").exists()


def test_a_map_fitted_for_a_checkpoint_is_saved_and_applied_to_it_only(evaluated, tmp_path):
  config, _, uncalibrated, model = evaluated
  config = ml_collections.ConfigDict(config.to_dict())
  config.eval.calibration_split = "test"
  source = dict(checkpoint_dir=str(tmp_path / "checkpoints"), step=3)
  fitted = evaluate.evaluate_splits(*model[:3], config, model[3], tmp_path, source=source)
  saved = calibration.Calibration.load(tmp_path)
  assert saved.fitted_on == "test" and (saved.step, saved.num_clips) == (3, 7)
  assert fitted["test"]["calibration"]["map"] == dataclasses.asdict(saved)
  assert fitted["test"]["auc"] == uncalibrated["test"]["auc"]  # the ranking is kept
  rows = list(csv.DictReader((tmp_path / "eval" / "test" / "scores.csv").open()))
  logits = np.array([float(r["logit"]) for r in rows])
  np.testing.assert_allclose([float(r["probability"]) for r in rows], saved.apply(logits))

  # Without a calibration split, the saved map is applied to its own checkpoint, and only to it.
  config.eval.calibration_split = ""
  again = evaluate.evaluate_splits(*model[:3], config, model[3], tmp_path, source=source)
  assert again["test"]["calibration"]["map"] == fitted["test"]["calibration"]["map"]
  assert again["test"]["calibration"]["calibrated"]["ece"] == pytest.approx(
    fitted["test"]["calibration"]["calibrated"]["ece"]
  )
  other = evaluate.evaluate_splits(
    *model[:3], config, model[3], tmp_path, source=dict(source, step=4)
  )
  assert other["test"]["calibration"]["map"] is None


def test_split_specs_name_other_corpora():
  config = config_lib.load_config(CONFIG)
  assert evaluate.split_source(config, "test") == (config.data.builder, "test")
  assert evaluate.split_source(config, "cmdfd:wav2lip_self") == ("cmdfd", "wav2lip_self")
  assert evaluate.report_name("cmdfd:wav2lip_self") == "cmdfd.wav2lip_self"


def test_unknown_silence_variant_is_an_error():
  # Checked with the whole config before any work starts (avcd train, eval, compile).
  config = config_lib.load_config(CONFIG, {"eval.leading_silence": ("drop",)})
  with pytest.raises(ValueError, match="leading_silence"):
    config_checks.check(config)


def test_an_unknown_split_is_a_config_error(evaluated):
  # avcd train and avcd eval check the splits once the corpus is prepared, before any scoring.
  config = ml_collections.ConfigDict(evaluated[0].to_dict())
  config.eval.splits = ("test", "tset")
  with pytest.raises(config_checks.ConfigError, match="eval.splits: split 'tset' of .* cannot"):
    config_checks.check_splits(config)
