"""avcd.evaluation.reports: the files of one split's report, their content and their round trip."""

import json
import math

import numpy as np
import pytest
from matplotlib import image

from avcd.evaluation import calibration, metrics, reports

CATEGORY_OF_METHOD = {
  "real": "RealVideo-RealAudio",
  "faceswap": "FakeVideo-RealAudio",
  "fsgan": "FakeVideo-RealAudio",
  "wav2lip": "FakeVideo-FakeAudio",
  "rtvc": "RealVideo-FakeAudio",
}
REPORT_FILES = (
  "metrics.json",
  "scores.csv",
  "metrics.md",
  "roc.png",
  "score_histograms.png",
  "reliability.png",
)
NUM_RESAMPLES = 200


def make_records(num_clips=600, seed=0, with_categories=True):
  """FakeAVCeleb-like records: each fake method a little easier to tell than the one before."""
  rng = np.random.default_rng(seed)
  methods = list(CATEGORY_OF_METHOD)
  records = []
  for index in range(num_clips):
    method = methods[rng.integers(len(methods))]
    label = int(method != "real")
    score = round(float(rng.normal() + 0.4 * methods.index(method)), 2)  # ties, like logits in bf16
    records.append(
      dict(
        id=f'id{index:04d}, take "{index % 3}"',  # commas and quotes survive the CSV
        dataset="fakeavceleb",
        method=method,
        category=CATEGORY_OF_METHOD[method] if with_categories else "",
        label=label,
        score=score,
        logit=score,
        probability=1 / (1 + math.exp(-score)),
      )
    )
  return records


def strict_json(path):
  def reject(constant):
    raise ValueError(f"not strict JSON: {constant}")

  with open(path, encoding="utf-8") as file:
    return json.load(file, parse_constant=reject)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  records = make_records()
  validation = make_records(seed=1)
  threshold = metrics.choose_threshold(
    [record["label"] for record in validation], [record["probability"] for record in validation]
  )
  out_dir = tmp_path_factory.mktemp("eval") / "test"
  result = reports.write_report(
    records,
    out_dir,
    split="test",
    chosen_threshold=threshold,
    threshold_split="val",
    num_resamples=NUM_RESAMPLES,
  )
  return records, out_dir, result, threshold


def test_report_files_exist_and_no_temporaries_remain(report):
  _, out_dir, _, _ = report
  assert sorted(path.name for path in out_dir.iterdir()) == sorted(REPORT_FILES)


def test_metrics_json_has_every_section(report):
  _, out_dir, _, threshold = report
  loaded = strict_json(out_dir / "metrics.json")
  fake_methods = ["faceswap", "fsgan", "rtvc", "wav2lip"]
  fake_categories = ["FakeVideo-FakeAudio", "FakeVideo-RealAudio", "RealVideo-FakeAudio"]
  assert set(metrics.METRIC_KEYS) <= set(loaded)
  assert loaded["split"] == "test" and loaded["threshold"] == 0.5
  assert sorted(loaded["per_method"]) == fake_methods
  assert sorted(loaded["per_category"]) == fake_categories
  for result in [*loaded["per_method"].values(), *loaded["per_category"].values()]:
    assert set(result) == set(metrics.METRIC_KEYS)
  intervals = loaded["intervals"]
  assert intervals["num_resamples"] == NUM_RESAMPLES and intervals["confidence"] == 0.95
  assert sorted(intervals["per_method"]) == fake_methods
  assert sorted(intervals["per_category"]) == fake_categories
  for key in metrics.RANKING_METRICS:
    assert intervals["overall"][key]["low"] <= loaded[key] <= intervals["overall"][key]["high"]
  chosen = loaded["at_chosen_threshold"]
  assert chosen["threshold"] == threshold and chosen["threshold_split"] == "val"
  assert sorted(chosen["per_method"]) == fake_methods
  assert chosen["auc"] == loaded["auc"]


def test_scores_csv_round_trips_and_reproduces_the_metrics(report):
  records, out_dir, _, threshold = report
  read_back = reports.read_scores_csv(out_dir / "scores.csv")
  assert read_back == records
  loaded = strict_json(out_dir / "metrics.json")
  labels = [record["label"] for record in read_back]
  scores = [record["score"] for record in read_back]
  probabilities = [record["probability"] for record in read_back]
  recomputed = metrics.clip_metrics(labels, scores, probabilities, name="test")
  assert {key: loaded[key] for key in metrics.METRIC_KEYS} == recomputed
  at_chosen = metrics.clip_metrics(labels, scores, probabilities, threshold=threshold)
  assert {key: loaded["at_chosen_threshold"][key] for key in metrics.METRIC_KEYS} == at_chosen


def test_missing_category_reads_back_empty_and_a_missing_logit_is_recovered(tmp_path):
  records = [dict(id="a", dataset="lrs2", method="real", label=0, score=-1.5, probability=0.2)]
  reports.write_scores_csv(records, tmp_path / "scores.csv")
  read_back = reports.read_scores_csv(tmp_path / "scores.csv")[0]
  assert read_back["category"] == ""
  assert read_back["logit"] == pytest.approx(math.log(0.2 / 0.8))


def test_calibration_section_before_and_after_a_map(report, tmp_path):
  records, out_dir, result, _ = report
  labels = np.array([r["label"] for r in records])
  logits = np.array([r["logit"] for r in records])
  section = strict_json(out_dir / "metrics.json")["calibration"]
  assert section["map"] is None and section["calibrated"] is None
  assert section["raw"]["ece"] == pytest.approx(
    calibration.expected_calibration_error(labels, 1 / (1 + np.exp(-logits)))
  )
  assert "no calibration map applied" in (out_dir / "metrics.md").read_text()

  fitted = calibration.fit(labels, logits, method="platt", fitted_on="val")
  calibrated = [dict(r, probability=float(p)) for r, p in zip(records, fitted.apply(logits))]
  after = reports.write_report(
    calibrated, tmp_path, split="test", calibration=fitted, num_resamples=NUM_RESAMPLES
  )["calibration"]
  assert after["map"]["method"] == "platt" and after["raw"] == section["raw"]
  assert after["calibrated"]["ece"] < section["raw"]["ece"]  # fitted on these very clips
  assert after["calibrated"]["brier"] < section["raw"]["brier"]
  assert "Platt scale" in (tmp_path / "metrics.md").read_text()


@pytest.mark.parametrize("name", ("roc.png", "score_histograms.png", "reliability.png"))
def test_plots_are_real_images(report, name):
  _, out_dir, _, _ = report
  pixels = image.imread(out_dir / name)
  height, width = pixels.shape[:2]
  assert height >= 300 and width >= 300
  colours = np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)
  assert len(colours) > 20  # curves, bars, text: far from a blank or single-colour canvas


def test_markdown_table_is_laid_out_like_the_paper(report):
  _, out_dir, result, _ = report
  table = reports.markdown_table(result)
  lines = table.splitlines()
  assert lines[0] == "| Metric (%) | faceswap | fsgan | rtvc | wav2lip | All |"
  faceswap_auc = 100 * result["per_method"]["faceswap"]["auc"]
  assert lines[2].startswith(f"| AUC [95% CI] | {faceswap_auc:.2f} [")
  assert any(line.startswith("| ACC @ 0.5 |") for line in lines)
  assert any(
    line.startswith("| ACC @ ") and line.split("|")[1].strip().endswith(", val") for line in lines
  )
  assert all(line.count("|") == 7 for line in lines)
  # The table reads the same from the JSON file (nulls for NaN) as from memory.
  assert reports.markdown_table(strict_json(out_dir / "metrics.json")) == table
  document = (out_dir / "metrics.md").read_text(encoding="utf-8")
  assert table in document
  assert reports.markdown_table(result, breakdown="per_category") in document


def test_report_without_categories_or_threshold(tmp_path):
  result = reports.write_report(
    make_records(200, with_categories=False), tmp_path, split="val", num_resamples=50
  )
  loaded = strict_json(tmp_path / "metrics.json")
  assert "per_category" not in loaded and "per_category" not in loaded["intervals"]
  assert "at_chosen_threshold" not in loaded
  assert "## Per category" not in (tmp_path / "metrics.md").read_text(encoding="utf-8")
  assert result["num_clips"] == 200


def test_single_class_split_warns_and_still_reports(tmp_path):
  records = [record for record in make_records(100) if record["label"] == 0]
  with pytest.warns(metrics.SingleClassWarning, match="reals_only"):
    reports.write_report(records, tmp_path, split="reals_only", num_resamples=50)
  assert sorted(path.name for path in tmp_path.iterdir()) == sorted(REPORT_FILES)
  loaded = strict_json(tmp_path / "metrics.json")
  assert loaded["auc"] is None and loaded["fake_recall"] is None
  assert loaded["per_method"] == {}
  assert loaded["intervals"]["overall"]["auc"] == {"low": None, "high": None}
  assert "n/a [n/a, n/a]" in reports.markdown_table(loaded)
  assert image.imread(tmp_path / "score_histograms.png").shape[0] >= 300
