"""The localisation report: hand-built records, and a whole evaluation of partial forgeries whose
true segments must arrive in the report exactly as the generator drew them."""

import json
import pathlib

import numpy as np
import pytest

from avcd import config_lib
from avcd.core import sharding
from avcd.evaluation import evaluate, localisation_report
from avcd.training import steps
from data_pipelines import schema
from data_pipelines.building import corpus_setup
from data_pipelines.building.synthetic import generator

CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "tiny.py"


def _record(clip_id: str, method: str, frame_labels, frame_probability) -> dict:
  frame_labels = np.asarray(frame_labels, np.uint8)
  return dict(
    id=clip_id,
    method=method,
    label=int(frame_labels.any()),
    score=float(np.max(frame_probability)),
    frame_labels=frame_labels,
    frame_probability=np.asarray(frame_probability, np.float64),
    true_segments=schema.frame_label_segments(frame_labels),
  )


def _settings(**overrides):
  settings = config_lib.evaluation(splits=("test",)).localisation
  settings.update(overrides)
  return settings


def test_a_perfect_frame_scorer_finds_every_segment_and_nothing_else():
  fake_a = np.zeros(50, np.uint8)
  fake_a[10:30] = 1
  fake_b = np.zeros(60, np.uint8)
  fake_b[5:15], fake_b[40:55] = 1, 1
  records = [
    _record("r1", "real", np.zeros(40), np.full(40, 0.05)),
    _record("a", "lip", fake_a, 0.05 + 0.9 * fake_a),
    _record("b", "voice", fake_b, 0.05 + 0.9 * fake_b),
  ]
  result, proposals = localisation_report.localisation_result(records, _settings())
  np.testing.assert_allclose(proposals["a"], [[0.95, 0.4, 1.2]])
  assert len(proposals["r1"]) == 0
  overall = result["per_method"]["All"]
  # AV-Deepfake1M's AP leaves out the first recall step: 1 - 1/G for a perfect ranking.
  for threshold in (0.5, 0.75, 0.9, 0.95):
    assert overall[f"ap@{threshold:g}"] == pytest.approx(1 - 1 / 3)
  assert all(overall[f"ar@{n}"] == 1.0 for n in (50, 30, 20, 10, 5))
  assert overall["frame_auc"] == 1.0 and overall["true_segments"] == 3
  assert set(result["per_method"]) == {"All", "lip", "voice"}
  assert result["per_method"]["voice"]["clips"] == dict(real=1, fake=1)
  assert result["per_method"]["lip"]["ap@0.5"] == 0.0  # one segment: the quirk leaves nothing


def test_segments_are_scored_against_the_true_times_not_the_frame_grid():
  fake = np.zeros(50, np.uint8)
  fake[25:34] = 1  # frames 25-33: 1.00-1.36 s, the frames whose centres lie in 1.013-1.347 s
  record = _record("f", "lip", fake, 0.05 + 0.9 * fake)
  record["true_segments"] = np.array([[1.013, 1.347]])
  result, proposals = localisation_report.localisation_result([record], _settings())
  np.testing.assert_allclose(proposals["f"][:, 1:], [[1.0, 1.36]])
  # IoU 0.334 / 0.36 = 0.928: found at IoU 0.5 to 0.9, missed at 0.95 (9 of AR's 10 thresholds).
  assert result["per_method"]["All"]["ar@10"] == pytest.approx(0.9)


def test_scores_blind_to_where_the_forgery_is_localise_nothing():
  fake = np.zeros(50, np.uint8)
  fake[20:30] = 1
  records = [
    _record("r", "real", np.zeros(50), np.full(50, 0.2)),
    _record("f", "lip", fake, np.full(50, 0.9)),  # fake throughout, by its scores
  ]
  result, proposals = localisation_report.localisation_result(records, _settings())
  assert proposals["f"][0, 1:].tolist() == [0.0, 2.0]
  assert result["per_method"]["All"]["ap@0.5"] == 0.0
  # Fake frames outrank the 50 real clip frames and tie with the 40 real frames around them.
  assert result["per_method"]["All"]["frame_auc"] == pytest.approx((50 + 0.5 * 40) / 90)


def test_settings_are_checked_field_by_field():
  with pytest.raises(ValueError, match="nms_iou"):
    localisation_report.check_settings(_settings(nms_iou=1.5))
  with pytest.raises(ValueError, match="smoothing_frames"):
    localisation_report.check_settings(_settings(smoothing_frames=4))
  with pytest.raises(ValueError, match="plot_clips"):
    localisation_report.check_settings(_settings(plot_clips=0))


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("localise")
  config = config_lib.load_config(
    CONFIG, {"data.synthetic.min_frames": 30, "data.synthetic.test_clips": 9}
  )
  with config.unlocked():
    config.data.synthetic.update(methods=generator.PARTIAL_METHODS, segment_frames=(6, 12))
  config = corpus_setup.prepare_corpus(config, workdir)
  mesh = sharding.make_mesh(config.mesh)
  step = steps.make_train_step(config, mesh)
  state = step.init_state()
  results = evaluate.evaluate_splits(
    step.predict_step(), state.params, state.batch_stats, config, mesh, workdir
  )
  return config, workdir, results


def test_the_true_segments_reach_the_report_as_generated(evaluated):
  config, workdir, results = evaluated
  out_dir = workdir / "eval" / "test"
  assert all((out_dir / name).is_file() for name in localisation_report.FILES)
  spec = generator.SyntheticSpec(**config.data.synthetic.to_dict())
  lines = [json.loads(line) for line in (out_dir / "segments.jsonl").read_text().splitlines()]
  assert len(lines) == spec.num_clips("test")
  fakes = 0
  for line in lines:
    index = int(line["id"].rsplit("-", 1)[1])
    clip = generator.synthesize_clip(spec, "test", index)
    want = clip.fake_segments / schema.FPS
    np.testing.assert_allclose(np.reshape(line["true_segments"], want.shape), want)
    assert all(0 <= start < end and 0 <= score <= 1 for start, end, score in line["segments"])
    fakes += line["label"]
  localisation = results["test"]["localisation"]
  assert localisation["per_method"]["All"]["clips"]["fake"] == fakes > 0
  assert set(localisation["per_method"]) <= {"All", *generator.PARTIAL_METHODS}
  summary = evaluate.summary(results, workdir, "untrained")
  assert "| AP@0.5 |" in summary and "frame_scores.png" in summary


def test_splits_of_whole_clip_forgeries_get_no_localisation_report(tmp_path):
  records = [
    _record("r", "real", np.zeros(10), np.full(10, 0.1)),
    _record("f", "lip", np.ones(10), np.full(10, 0.9)),
  ]
  assert not localisation_report.has_partial_forgeries(records)
  records[1]["frame_labels"][:3] = 0
  assert localisation_report.has_partial_forgeries(records)
