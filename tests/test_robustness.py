"""Robustness evaluation: splits made again from their media, with and without degradations."""

import functools
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from avcd import config_lib
from avcd.core import sharding
from avcd.evaluation import evaluate, robustness
from avcd.training import steps
from data_pipelines.building import corpus_setup, prepare
from data_pipelines.reading import perturbations, rebuilt_split, split_index
from tests import media_utils
from tests.conftest import REPO

CONFIG = REPO / "configs" / "tiny.py"
SETTINGS = perturbations.parse("noise:20,snr:0")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """A tiny student (random weights) and its prepared synthetic corpus."""
  workdir = tmp_path_factory.mktemp("robustness")
  config = corpus_setup.prepare_corpus(config_lib.load_config(CONFIG), workdir)
  mesh = sharding.make_mesh(config.mesh)
  step = steps.make_train_step(config, mesh)  # as avcd train builds it
  state = step.init_state()
  predict_fn = step.predict_step()
  return (predict_fn, state.params, state.batch_stats, config, mesh, workdir)


def _scores(model, hook_factory=None):
  predict_fn, params, batch_stats, config, mesh, _ = model
  records = evaluate.score_split(
    predict_fn, params, batch_stats, config, "test", mesh, media_hook_factory=hook_factory
  )
  return {r["id"]: r["score"] for r in records}


def test_clean_media_made_again_score_exactly_as_the_stored_split(model):
  stored = _scores(model)
  clean = functools.partial(perturbations.degrade, perturbations.CLEAN, 0)
  assert _scores(model, clean) == stored


def test_a_degradation_reaches_the_model_and_repeats_under_its_seed(model):
  noisy = functools.partial(perturbations.degrade, perturbations.Setting("noise", 20.0), 0)
  first, second = _scores(model, noisy), _scores(model, noisy)
  assert first == second
  assert first != _scores(model)


def test_robustness_report_has_a_row_per_setting_and_its_plot(model):
  results = robustness.evaluate_robustness(*model, SETTINGS, seed=0)
  out_dir = model[-1] / "eval" / "test"
  assert sorted(p.name for p in out_dir.glob("robustness.*")) == sorted(robustness.FILES)
  saved = json.loads((out_dir / "robustness.json").read_text())
  assert [row["setting"]["name"] for row in saved["rows"]] == ["clean", "noise:20", "snr:0"]
  assert saved["rows"][0]["auc"] == results["test"]["rows"][0]["auc"]
  table = (out_dir / "robustness.md").read_text()
  assert "| snr:0 |" in table and "| clean |" in table


def _manifest_corpus(tmp_path: pathlib.Path) -> tuple[pathlib.Path, str]:
  """A two-clip av_manifest corpus prepared from generated videos; (data dir, dataset dir)."""
  media = tmp_path / "media"
  media.mkdir()
  rows = []
  for index, label in enumerate((0, 1)):
    frames = media_utils.flat_frames(media_utils.grey_levels(30) + 40 * index, 112, 112)
    path = media_utils.write_video(
      media / f"clip{index}.mp4", frames, audio=media_utils.tone(1.2, 16_000, 200 + 100 * index)
    )
    rows.append(
      dict(
        ID_Name=f"clip{index}",
        Audio_Path="",
        Video_Path=str(path),
        ENtire_Label=label,
        Audio_Label=0,
        Video_Label=label,
        Identi_Label=1 - label,
        Sync_Label=1,
        Frame_Len=30,
        Audio_Len=19_200,
        FPS=25.0,
        AudioSamRate=16_000,
      )
    )
  manifest = media_utils.write_manifest(tmp_path / "test.csv", rows)
  builder = prepare.make_builder(
    tmp_path / "data", manifests=[f"test={manifest}"], num_workers=1, progress_interval_s=0.0
  )
  return tmp_path / "data", prepare.prepare(builder).dataset_dir


def test_a_prepared_corpus_is_made_again_from_its_manifests_and_media(tmp_path):
  data_dir, dataset_dir = _manifest_corpus(tmp_path)
  data_cfg = config_lib.data(builder="av_manifest", train_split="test")
  data_cfg.data_dir = str(data_dir)
  opened = split_index.open_split("av_manifest", str(data_dir), "test")
  index = split_index.load_index(opened)
  clean = functools.partial(perturbations.degrade, perturbations.CLEAN, 0)
  rebuilt = rebuilt_split.RebuiltSplit.open(data_cfg, "test", index, clean)
  stored = tfds.builder_from_directory(dataset_dir).as_data_source()["test"]
  for record in range(len(index)):
    again, kept = rebuilt.decode(record), stored[record]
    for field in ("faces", "mfcc", "stft"):
      np.testing.assert_array_equal(again[field], kept[field], err_msg=field)
  (tmp_path / "media" / "clip1.mp4").unlink()
  with pytest.raises(rebuilt_split.RebuildError, match="clip clip1 cannot be read again"):
    rebuilt.decode(1)


def test_a_bad_perturbation_spec_is_one_line_before_any_work(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "avcd.cli",
      "eval",
      f"--config={CONFIG}",
      f"--workdir={tmp_path}",
      "--perturbations=blur:2,jpeg",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=120,
    check=False,
  )
  errors = [line for line in result.stderr.splitlines() if ": error: " in line]
  assert result.returncode == 2 and len(errors) == 1, result.stderr[-1000:]
  assert "error: --perturbations: unknown perturbation 'jpeg'" in errors[0]
