"""The step benchmark runs: each kind of row measures the step it names."""

import json

import pytest

from avcd.benchmarks import train_step

ROWS = (
  train_step.Row("configs/tiny.py", "float32", "train", "in_step"),
  train_step.Row("configs/tiny.py", "float32", "train", "cached"),
  train_step.Row("configs/tiny.py", "float32", "predict"),
)


@pytest.fixture(scope="module")
def results():
  return {row.label: train_step.measure(row, 2, 16, steps=2, warmup=1) for row in ROWS}


def test_every_kind_of_row_times_its_step(results):
  for label, result in results.items():
    assert result["frames_per_second"] == pytest.approx(32 / result["step_seconds"])
    assert result["compile_seconds"] > 0
    table = train_step.format_table([result], None)
    assert f"| {label} | float32 | 2 x 16 |" in table and table.endswith("| 1.00 |")


def test_caching_the_teachers_removes_their_flops_and_predict_is_cheapest(results):
  flops = {label: result["flops_per_frame"] for label, result in results.items()}
  assert flops["train, teachers in_step"] > flops["train, teachers cached"] > flops["predict"] > 0


def test_accelerator_suite_plans_every_documented_row_and_writes_them(tmp_path, results):
  rows, batch = train_step.accelerator_suite()
  assert batch == "20x100"
  assert {(r.config, r.dtype, r.label) for r in rows} == {
    ("configs/default.py", dtype, row.label) for dtype in ("float32", "bfloat16") for row in ROWS
  }
  measured = list(results.values())
  train_step._write(tmp_path, "header", measured, None)  # pylint: disable=protected-access
  written = json.loads((tmp_path / "train_step.json").read_text())
  assert [r["kind"] for r in written["rows"]] == ["train", "train", "predict"]
  assert (tmp_path / "train_step.md").read_text() == (
    f"header\n\n{train_step.format_table(measured, None)}\n"
  )
