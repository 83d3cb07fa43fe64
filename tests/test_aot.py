"""Ahead-of-time compilation (`avcd compile`) and the FLOP counts behind throughput and MFU."""

import os
import re
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import pytest

from avcd.training import flops
from tests.conftest import FAST_COMPILE_FLAGS, REPO


def _compile(cache) -> tuple[list[float], str]:
  """`avcd compile` of configs/tiny.py for a 2x2 mesh of fake devices (a mesh larger than this
  machine); the cells of its one table row, and its output."""
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "avcd.cli",
      "compile",
      "--config=configs/tiny.py",
      "--devices=4",
      "--mesh=2x2",
      "--lengths=16",
      f"--compilation_cache={cache}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600,
    env=dict(
      os.environ, XLA_FLAGS=FAST_COMPILE_FLAGS, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"
    ),
  )
  assert result.returncode == 0, result.stderr[-5000:]
  rows = [line for line in result.stdout.splitlines() if re.match(r"\| \d", line)]
  assert len(rows) == 1
  return [float(cell.replace(",", "")) for cell in rows[0].strip("|").split("|")], result.stdout


def test_compile_reports_memory_flops_and_compile_time_without_running(tmp_path):
  cells, stdout = _compile(tmp_path / "cache")
  assert "mesh data=2 x fsdp=2 of 4 cpu devices" in stdout
  (
    length,
    batch_rows,
    frames,
    arguments,
    outputs,
    aliased,
    temp,
    _,
    peak,
    step_gflop,
    frame_gflop,
    cold_seconds,
  ) = cells
  # The loader's plan: frame_budget 64 // 16 = 4 rows, a multiple of the 4 batch shards.
  assert (length, batch_rows, frames) == (16, 4, 64)
  assert arguments > 0 and outputs > 0 and temp > 0
  assert 0 < aliased <= outputs  # the donated train state is written in place
  assert peak == pytest.approx(arguments + outputs - aliased + temp, abs=0.2)
  assert step_gflop > 0 and frame_gflop == pytest.approx(step_gflop / frames, abs=1e-3)
  # A second start loads the compiled step from the persistent compilation cache.
  assert any((tmp_path / "cache").iterdir())
  warm, _ = _compile(tmp_path / "cache")
  assert warm[:-1] == cells[:-1]
  assert warm[-1] < 0.5 * cold_seconds, (cold_seconds, warm[-1])


def test_program_flops_count_a_matmul_and_scale_with_micro_batches():
  x, w = jnp.ones((64, 128)), jnp.ones((128, 32))
  assert flops.program_flops(jax.jit(jnp.matmul), (x, w)) == 2 * 64 * 128 * 32
  assert flops.program_flops(jnp.matmul, (x, w), accum_steps=4) == 4 * 2 * 64 * 128 * 32


class _RecordingStep:
  """update_fn(state, batch, teachers) that records the batch shapes it is traced with."""

  def __init__(self):
    self.traced_shapes = []

  def __call__(self, state, batch, teachers):
    self.traced_shapes.append(batch.shape)
    return state, (batch @ teachers).sum()


def test_step_flops_lowers_each_batch_shape_once():
  step = _RecordingStep()
  step_flops = flops.StepFlops(step, accum_steps=1)
  teachers = jnp.ones((8, 4))
  small = step_flops(0.0, jnp.ones((2, 8)), teachers)
  large = step_flops(0.0, jnp.ones((6, 8)), teachers)
  assert step_flops(0.0, jnp.zeros((2, 8)), teachers) == small
  assert step.traced_shapes == [(2, 8), (6, 8)]
  assert large == pytest.approx(3 * small, rel=0.05)  # the matmul dominates


@pytest.mark.parametrize(
  "kind,peak",
  [
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5", 459e12),
    ("TPU v4", 275e12),
    ("cpu", None),
  ],
)
def test_peak_flops_by_device_kind(kind, peak):
  assert flops.peak_flops_per_device(types.SimpleNamespace(device_kind=kind)) == peak


def test_utilisation():
  assert flops.utilisation(400e12, 2, 1000e12) == pytest.approx(0.2)
  assert flops.utilisation(400e12, 2, None) is None
