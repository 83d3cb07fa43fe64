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


def test_conv_kernels_lists_every_convolution_of_the_frontend():
  from flax import nnx

  from avcd import config_lib
  from avcd.benchmarks import conv_kernels
  from avcd.models import visual

  cfg = config_lib.visual_frontend()
  frontend = nnx.eval_shape(lambda: visual.VisualFrontend(cfg, dtype="float32", rngs=nnx.Rngs(0)))
  in_model = sorted(
    (module.kernel.shape[0], module.in_features, module.out_features)
    for _, module in nnx.iter_graph(frontend)
    if isinstance(module, nnx.Conv)
  )
  listed = sorted(
    (conv.kernel, conv.in_channels, conv.out_channels)
    for conv in conv_kernels.frontend_convs(cfg)
    for _ in range(conv.count)
  )
  assert listed == in_model


def test_conv_kernels_times_every_pass_and_totals_them():
  from avcd.benchmarks import conv_kernels

  convs = conv_kernels.frontend_convs(size=16)
  results = conv_kernels.measure(convs, frames=2, rounds=1, repeats=1)
  assert set(results["stem 7x7/2"]) == {("jax", "fwd"), ("jax", "dw")}  # the stem's input is data
  assert all(len(results[c.name]) == 3 for c in convs[1:])
  table = conv_kernels.format_table(convs, results, frames=2)
  assert len(table.splitlines()) == 2 + len(convs) + 1
  assert "| stem 7x7/2 | 2x16x16x5 -> 64 | x1 |" in table
