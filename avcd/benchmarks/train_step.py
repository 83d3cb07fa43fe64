r"""Step throughput: the train step and the student's predict step, frames/s, FLOP/s and MFU.

  python -m avcd.benchmarks.train_step                                   # CPU: B=1, T=100
  python -m avcd.benchmarks.train_step --batch=20x100 --steps=30         # GPU/TPU
  python -m avcd.benchmarks.train_step --suite=accelerator --output=DIR  # every accelerator row

Run from the repository root (config paths are relative to it). A `train` row builds the train
step exactly as `avcd train` does (every local device on the `data` axis, the teachers inside the
step unless the variant caches their posteriors, augmentation on); a `predict` row builds the
student's jitted predict step that training-time evaluation, `avcd eval` and `avcd predict` run.
Each is compiled for a B x T batch and timed over `--steps` steps after `--warmup`, waiting for
each; the table gives the median. Batches are random, in the loader's layout, every clip T frames
long; no corpus is read. FLOPs come from XLA's cost analysis of the same program
(`avcd.training.flops`); MFU is against the device's dense bf16 peak (`--peak_tflops` for a
device not in `avcd.training.flops`' table).

The compile column times `lower().compile()`; with JAX's persistent compilation cache on (the
default, avcd/compilation_cache.py) a rerun reads the program from the cache and reports that
time instead: pass `--compilation_cache=off` to time a cold compile.

The ratio column compares each row with the same config, step and teacher variant in float32 at
the same batch: what the compute dtype buys. Configs are not compared with each other: tiny is a
test model, not a smaller detector.

`--suite=accelerator` measures in one run what docs/scaling.md reports for a GPU or TPU: the
paper config at 20 x 100 frames in float32 and bfloat16, training with the teachers in the step
and with `teachers.cache=True`, and the predict step; it writes `train_step.json` and
`train_step.md` to `--output` as the rows finish, so a run cut short keeps what it measured.
"""

import dataclasses
import json
import pathlib
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import ConfigDict

from avcd import compilation_cache, config_lib
from avcd.commands import arguments
from avcd.core import inference, sharding
from avcd.training import flops, steps as train_steps

KINDS = ("train", "predict")
TEACHERS = ("in_step", "cached")
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
_KINDS = flags.DEFINE_multi_enum(
  "kinds", list(KINDS), KINDS, "Steps to time: train (student + teachers + optimizer), predict."
)
_TEACHERS = flags.DEFINE_multi_enum(
  "teachers",
  ["in_step"],
  TEACHERS,
  "Train rows: teachers run inside the step (in_step), or their posteriors come with the batch "
  "(cached, `teachers.cache=True`: no teachers and no VSR frontend in the step).",
)
_SUITE = flags.DEFINE_enum(
  "suite",
  None,
  ["accelerator"],
  "A prepared set of rows instead of the flags above: accelerator = configs/default.py at "
  "20x100, float32 and bfloat16, train (both teacher variants) and predict.",
)
_OUTPUT = flags.DEFINE_string(
  "output", None, "Directory for train_step.json and train_step.md (written after every row)."
)
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per row.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps before them.", lower_bound=0)
_PEAK_TFLOPS = flags.DEFINE_float(
  "peak_tflops",
  None,
  "Peak TFLOP/s per device for MFU (default: the table in avcd/training/flops.py).",
)
_BASELINE_DTYPE = "float32"


@dataclasses.dataclass(frozen=True)
class Row:
  """One measurement: which step of which config, in which dtype, on which batch."""

  config: str
  dtype: str
  kind: str = "train"
  teachers: str = "in_step"  # train rows only

  @property
  def label(self) -> str:
    return self.kind if self.kind == "predict" else f"train, teachers {self.teachers}"


def accelerator_suite() -> tuple[list[Row], str]:
  """The rows docs/scaling.md reports for one accelerator, and their batch."""
  rows = []
  for dtype in ("float32", "bfloat16"):
    rows += [Row("configs/default.py", dtype, "train", teachers) for teachers in TEACHERS]
    rows.append(Row("configs/default.py", dtype, "predict"))
  return rows, "20x100"


def _platform_defaults() -> tuple[str, list[str]]:
  if jax.default_backend() == "cpu":
    return "1x100", ["float32"]
  return "20x100", ["float32", "bfloat16"]


def _time(fn, args_of, steps: int, warmup: int) -> tuple[float, object]:
  """Median seconds of `fn(*args_of(i))` over `steps` calls after `warmup`; the last output."""
  seconds, out = [], None
  for i in range(warmup + steps):
    started = time.perf_counter()
    out = fn(*args_of(i))
    jax.block_until_ready(out)
    seconds.append(time.perf_counter() - started)
  return statistics.median(seconds[warmup:]), out


def measure(row: Row, rows: int, length: int, *, steps: int, warmup: int) -> dict:
  """Compiles and times one row's step; returns the row's numbers."""
  config = config_lib.load_config(
    row.config,
    {
      "model.compute_dtype": row.dtype,
      "teachers.asr.compute_dtype": row.dtype,
      "teachers.vsr.compute_dtype": row.dtype,
      "teachers.source": "random",
      "teachers.cache": row.kind == "train" and row.teachers == "cached",
    },
  )
  mesh = sharding.make_mesh(ConfigDict(dict(data=-1, fsdp=1)), jax.local_devices())
  if rows % mesh.size:
    raise app.UsageError(f"--batch rows {rows} must be a multiple of the {mesh.size} devices")
  step = train_steps.make_train_step(config, mesh)
  rng = np.random.default_rng(0)
  batches = [
    sharding.global_batch(train_steps.random_train_batch(step.batch(length, rows), rng), mesh)
    for _ in range(2)
  ]
  if row.kind == "train":
    state, teachers_state = step.initial_arguments()
    started = time.perf_counter()
    compiled = step.lower(length, rows).compile()
    compile_seconds = time.perf_counter() - started
    program_flops = flops.program_flops(
      step.update_fn, step.arguments(length, rows), config.optim.grad_accum_steps
    )
    # The step donates its state: each call takes the state the previous one returned.
    carried = [state]

    def train(batch):
      carried[0], metrics = compiled(carried[0], batch, teachers_state)
      return carried[0], metrics

    step_seconds, (_, metrics) = _time(train, lambda i: (batches[i % 2],), steps, warmup)
    if not np.isfinite(float(metrics["loss"])):
      raise FloatingPointError(f"{row}: non-finite loss {float(metrics['loss'])}")
  else:
    state = step.init_state()  # the student's; predict runs no teachers and no optimizer
    started = time.perf_counter()
    predict = step.predict_step()
    inputs = [{k: b[k] for k in inference.MODEL_INPUTS} for b in batches]
    first = (state.params, state.batch_stats, inputs[0])
    compiled = predict.lower(*first).compile()
    compile_seconds = time.perf_counter() - started
    program_flops = flops.program_flops(predict, first)
    step_seconds, out = _time(
      compiled, lambda i: (state.params, state.batch_stats, inputs[i % 2]), steps, warmup
    )
    if not np.all(np.isfinite(np.asarray(out["score"]))):
      raise FloatingPointError(f"{row}: non-finite scores")
  return dict(
    **dataclasses.asdict(row),
    rows=rows,
    length=length,
    devices=mesh.size,
    compile_seconds=compile_seconds,
    step_seconds=step_seconds,
    frames_per_second=rows * length / step_seconds,
    flops_per_frame=program_flops / (rows * length),
    flops_per_second=program_flops / step_seconds,
  )


def format_table(results: list[dict], peak_per_device: float | None) -> str:
  lines = [
    "| config | step | dtype | B x T | devices | compile s | step ms | frames/s "
    "| frames/s/device | GFLOP/frame | TFLOP/s | MFU | vs float32 |",
    "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  same = ("config", "kind", "teachers", "rows", "length")
  for r in results:
    baseline = next(
      (b for b in results if all(b[k] == r[k] for k in same) and b["dtype"] == _BASELINE_DTYPE),
      None,
    )
    ratio = f"{r['frames_per_second'] / baseline['frames_per_second']:.2f}" if baseline else "-"
    mfu = flops.utilisation(r["flops_per_second"], r["devices"], peak_per_device)
    label = Row(r["config"], r["dtype"], r["kind"], r["teachers"]).label
    lines.append(
      f"| {r['config']} | {label} | {r['dtype']} | {r['rows']} x {r['length']} | {r['devices']} "
      f"| {r['compile_seconds']:.0f} | {r['step_seconds'] * 1e3:,.1f} "
      f"| {r['frames_per_second']:,.1f} | {r['frames_per_second'] / r['devices']:,.1f} "
      f"| {r['flops_per_frame'] / 1e9:.3f} | {r['flops_per_second'] / 1e12:.3g} "
      f"| {'-' if mfu is None else f'{mfu:.1%}'} | {ratio} |"
    )
  return "\n".join(lines)


def _write(output: pathlib.Path, header: str, results: list[dict], peak: float | None) -> None:
  output.mkdir(parents=True, exist_ok=True)
  (output / "train_step.json").write_text(
    json.dumps(dict(header=header, peak_flops_per_device=peak, rows=results), indent=1) + "\n"
  )
  (output / "train_step.md").write_text(f"{header}\n\n{format_table(results, peak)}\n")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  compilation_cache.enable()
  if _SUITE.value == "accelerator":
    planned, batch = accelerator_suite()
  else:
    default_batch, default_dtypes = _platform_defaults()
    batch = _BATCH.value or default_batch
    planned = [
      Row(config, dtype, kind, teachers)
      for config in _CONFIGS.value
      for kind in _KINDS.value
      for teachers in (_TEACHERS.value if kind == "train" else ["in_step"])
      for dtype in _DTYPES.value or default_dtypes
    ]
  rows, length = arguments.parse_pair("batch", batch, "BxT", "20x100")
  device = jax.local_devices()[0]
  peak = _PEAK_TFLOPS.value * 1e12 if _PEAK_TFLOPS.value else flops.peak_flops_per_device(device)
  header = (
    f"{jax.local_device_count()} x {device.device_kind} ({jax.default_backend()}), jax "
    f"{jax.__version__}; peak {f'{peak / 1e12:.0f} TFLOP/s' if peak else 'unknown'} per "
    f"device; median of {_STEPS.value} steps after {_WARMUP.value}"
  )
  print(header, flush=True)
  results = []
  for i, row in enumerate(planned):
    print(f"[{i + 1}/{len(planned)}] {row.config} {row.label} {row.dtype} ...", flush=True)
    results.append(measure(row, rows, length, steps=_STEPS.value, warmup=_WARMUP.value))
    print(format_table(results[-1:], peak).splitlines()[-1], flush=True)
    if _OUTPUT.value:
      _write(pathlib.Path(_OUTPUT.value), header, results, peak)
  print()
  print(format_table(results, peak))


if __name__ == "__main__":
  app.run(main)
