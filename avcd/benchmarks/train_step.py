r"""Train-step throughput of the tiny and the paper config: frames/s, per device, FLOP/s and MFU.

  python -m avcd.benchmarks.train_step                                   # CPU: B=1, T=100
  python -m avcd.benchmarks.train_step --batch=20x100 --steps=30         # GPU/TPU

Run from the repository root (config paths are relative to it). Each row builds the train step
exactly as `avcd train` does (every local device on the `data` axis, the teachers inside the step
unless the config caches their posteriors, augmentation on) for one config and compute dtype,
compiles it for a B x T batch, and times `--steps` steps after `--warmup`, waiting for each; the
table gives the median. Batches are random, in the loader's layout, every clip T frames long; no
corpus is read. FLOPs come from XLA's cost analysis of the step (`avcd.training.flops`); MFU is
against the
device's dense bf16 peak (`--peak_tflops` for a device not in `avcd.training.flops`' table).

The ratio column compares each row with the same config in float32 at the same batch: what the
compute dtype buys. The configs are not compared with each other: tiny is a test model, not a
smaller detector.
"""

import statistics
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import ConfigDict

from avcd import cli, compilation_cache, config_lib
from avcd.training import flops, sharding

_CONFIGS = flags.DEFINE_list(
  "configs",
  ["configs/tiny.py", "configs/default.py"],
  "Config files to benchmark (their model and teacher sizes).",
)
_BATCH = flags.DEFINE_string(
  "batch",
  None,
  "Global batch BxT (clips x frames). Default: 1x100 "
  "on CPU (the reference's benchmark), 20x100 on accelerators (the "
  "paper's 2000-frame budget).",
)
_DTYPES = flags.DEFINE_list(
  "dtypes",
  None,
  "Compute dtypes of student and teachers. Default: "
  "float32 on CPU, float32,bfloat16 on accelerators.",
)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per row.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps before them.", lower_bound=0)
_PEAK_TFLOPS = flags.DEFINE_float(
  "peak_tflops",
  None,
  "Peak TFLOP/s per device for MFU (default: the table in avcd/training/flops.py).",
)
_BASELINE_DTYPE = "float32"


def _platform_defaults() -> tuple[str, list[str]]:
  if jax.default_backend() == "cpu":
    return "1x100", ["float32"]
  return "20x100", ["float32", "bfloat16"]


def measure(
  config_path: str, dtype: str, rows: int, length: int, *, steps: int, warmup: int
) -> dict:
  """Compiles and times the train step of one config and dtype; returns one table row."""
  config = config_lib.load_config(
    config_path,
    {
      "model.compute_dtype": dtype,
      "teachers.asr.compute_dtype": dtype,
      "teachers.vsr.compute_dtype": dtype,
      "teachers.source": "random",
    },
  )
  mesh = sharding.make_mesh(ConfigDict(dict(data=-1, fsdp=1)), jax.local_devices())
  if rows % mesh.size:
    raise app.UsageError(f"--batch rows {rows} must be a multiple of the {mesh.size} devices")
  step = steps.make_train_step(config, mesh)
  started = time.perf_counter()
  lowered = step.lower(length, rows)
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - started
  step_flops = flops.program_flops(
    step.update_fn, step.arguments(length, rows), config.optim.grad_accum_steps
  )

  rng = np.random.default_rng(0)
  batches = [
    sharding.global_batch(steps.random_train_batch(step.batch(length, rows), rng), mesh)
    for _ in range(2)
  ]
  state, teachers_state = step.initial_arguments()
  seconds = []
  for i in range(warmup + steps):
    started = time.perf_counter()
    state, metrics = compiled(state, batches[i % 2], teachers_state)
    jax.block_until_ready((state, metrics))
    seconds.append(time.perf_counter() - started)
  if not np.isfinite(float(metrics["loss"])):
    raise FloatingPointError(f"{config_path} {dtype}: non-finite loss {float(metrics['loss'])}")
  step_seconds = statistics.median(seconds[warmup:])
  return dict(
    config=config_path,
    dtype=dtype,
    rows=rows,
    length=length,
    devices=mesh.size,
    compile_seconds=compile_seconds,
    step_seconds=step_seconds,
    frames_per_second=rows * length / step_seconds,
    flops_per_frame=step_flops / (rows * length),
    flops_per_second=step_flops / step_seconds,
  )


def format_table(results: list[dict], peak_per_device: float | None) -> str:
  lines = [
    "| config | dtype | B x T | devices | compile s | step ms | frames/s "
    "| frames/s/device | GFLOP/frame | TFLOP/s | MFU | vs float32 |",
    "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in results:
    baseline = next(
      (b for b in results if b["config"] == r["config"] and b["dtype"] == _BASELINE_DTYPE), None
    )
    ratio = f"{r['frames_per_second'] / baseline['frames_per_second']:.2f}" if baseline else "-"
    mfu = flops.utilisation(r["flops_per_second"], r["devices"], peak_per_device)
    lines.append(
      f"| {r['config']} | {r['dtype']} | {r['rows']} x {r['length']} | {r['devices']} "
      f"| {r['compile_seconds']:.0f} | {r['step_seconds'] * 1e3:,.1f} "
      f"| {r['frames_per_second']:,.1f} | {r['frames_per_second'] / r['devices']:,.1f} "
      f"| {r['flops_per_frame'] / 1e9:.3f} | {r['flops_per_second'] / 1e12:.3g} "
      f"| {'-' if mfu is None else f'{mfu:.1%}'} | {ratio} |"
    )
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  compilation_cache.enable()
  default_batch, default_dtypes = _platform_defaults()
  rows, length = cli.parse_pair("batch", _BATCH.value or default_batch, "BxT", "20x100")
  dtypes = _DTYPES.value or default_dtypes
  device = jax.local_devices()[0]
  peak = _PEAK_TFLOPS.value * 1e12 if _PEAK_TFLOPS.value else flops.peak_flops_per_device(device)
  print(
    f"{jax.local_device_count()} x {device.device_kind} ({jax.default_backend()}), jax "
    f"{jax.__version__}; peak {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown'} per "
    f"device; median of {_STEPS.value} steps after {_WARMUP.value}",
    flush=True,
  )
  results = []
  for config_path in _CONFIGS.value:
    for dtype in dtypes:
      results.append(
        measure(config_path, dtype, rows, length, steps=_STEPS.value, warmup=_WARMUP.value)
      )
      print(format_table(results[-1:], peak).splitlines()[-1], flush=True)
  print()
  print(format_table(results, peak))


if __name__ == "__main__":
  app.run(main)
