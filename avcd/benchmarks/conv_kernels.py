r"""The visual frontend's convolutions one by one: XLA:CPU's kernels against PyTorch's, per pass.

  python -m avcd.benchmarks.conv_kernels                   # avcd's paper frontend, 100 frames
  python -m avcd.benchmarks.conv_kernels --frames=400 --no_torch

step_profile (this package) shows that on a CPU most of the gap between avcd's train step and the
reference's lies in the convolutions, but XLA:CPU's convolution kernels (Eigen's) record no
trace event, so it cannot say which. This benchmark takes the paper frontend's convolutions (the
5x7x7 stem as avcd runs it, a 7x7 conv over five stacked frames; every 3x3 conv of the four
ResNet stages; the 1x1 shortcuts) at their shapes for `--frames` frames, and times each pass
separately: the forward, the input gradient (dx) and the weight gradient (dw), in JAX as avcd
compiles it and with PyTorch's own kernels on the same arrays (`torch.ops.aten.
convolution_backward`, what autograd calls; channels-last, as PyTorch picks its oneDNN kernels
for it). Rounds alternate between the two, and each time is the median of its rounds' medians.
The stem's dx is not timed: the stem's input is data. PyTorch is optional (`pip install torch
--index-url https://download.pytorch.org/whl/cpu`); without it, or with `--no_torch`, only JAX
is timed.
"""

import dataclasses
import importlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from avcd import config_lib
from avcd.models import visual

PASSES = ("fwd", "dx", "dw")


@dataclasses.dataclass(frozen=True)
class Conv:
  name: str
  size: int  # input height and width
  in_channels: int
  out_channels: int
  kernel: int
  stride: int
  count: int  # how many convolutions of this shape one frontend pass runs
  needs_dx: bool = True

  @property
  def padding(self) -> int:
    return self.kernel // 2


def frontend_convs(cfg=None, size: int = 112) -> list[Conv]:
  """The convolutions of `visual.VisualFrontend` (default: the paper's) on `size`-pixel faces."""
  cfg = cfg or config_lib.visual_frontend()
  convs = [Conv("stem 7x7/2", size, visual.STEM_FRAMES, cfg.stem_channels, 7, 2, 1, False)]
  size = -(-size // 2)  # the stem (stride 2, padding 3)
  size = -(-size // 2)  # the max pool (3x3, stride 2, padding 1)
  channels = cfg.stem_channels
  for stage, out in enumerate(cfg.stage_channels, 1):
    stride = 1 if stage == 1 else 2
    if stride == 1 and channels == out:
      convs.append(Conv(f"stage {stage} 3x3", size, out, out, 3, 1, 4))
      continue
    convs.append(Conv(f"stage {stage} 3x3/{stride}", size, channels, out, 3, stride, 1))
    size = -(-size // stride)
    # The shortcut runs on every stride-th pixel (visual.ResNetLayer), so its conv is 1x1/1.
    convs.append(Conv(f"stage {stage} 1x1 shortcut", size, channels, out, 1, 1, 1))
    convs.append(Conv(f"stage {stage} 3x3", size, out, out, 3, 1, 3))
    channels = out
  return convs


def _median_time(run, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _jax_passes(conv: Conv, x: np.ndarray, w: np.ndarray, dy: np.ndarray) -> dict:
  pad = ((conv.padding, conv.padding),) * 2

  def forward(x, w):
    return jax.lax.conv_general_dilated(
      x, w, (conv.stride,) * 2, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  x, w, dy = jnp.asarray(x), jnp.asarray(w), jnp.asarray(dy)
  programs = {
    "fwd": (jax.jit(forward), (x, w)),
    "dx": (jax.jit(lambda x, w, dy: jax.vjp(lambda x: forward(x, w), x)[1](dy)[0]), (x, w, dy)),
    "dw": (jax.jit(lambda x, w, dy: jax.vjp(lambda w: forward(x, w), w)[1](dy)[0]), (x, w, dy)),
  }
  if not conv.needs_dx:
    del programs["dx"]
  return {
    name: (lambda f=f, args=args: jax.block_until_ready(f(*args)))
    for name, (f, args) in programs.items()
  }


def _torch_passes(torch, conv: Conv, x: np.ndarray, w: np.ndarray, dy: np.ndarray) -> dict:
  last = torch.channels_last
  x = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(memory_format=last)
  w = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous(memory_format=last)
  dy = torch.from_numpy(dy).permute(0, 3, 1, 2).contiguous(memory_format=last)
  geometry = ([conv.stride] * 2, [conv.padding] * 2, [1, 1], False, [0, 0], 1)

  def backward(mask):
    return lambda: torch.ops.aten.convolution_backward(dy, x, w, None, *geometry, mask)

  passes = {
    "fwd": lambda: torch.nn.functional.conv2d(x, w, stride=conv.stride, padding=conv.padding),
    "dx": backward([True, False, False]),
    "dw": backward([False, True, False]),
  }
  if not conv.needs_dx:
    del passes["dx"]
  return passes


def measure(convs: list[Conv], frames: int, torch=None, rounds: int = 3, repeats: int = 5):
  """{conv name: {("jax"|"torch", pass): seconds}}."""
  rng = np.random.default_rng(0)
  results = {}
  for conv in convs:
    out = -(-conv.size // conv.stride)
    x = rng.standard_normal((frames, conv.size, conv.size, conv.in_channels), np.float32)
    w = rng.standard_normal((conv.kernel, conv.kernel, conv.in_channels, conv.out_channels))
    w = (w / np.sqrt(w[..., 0].size)).astype(np.float32)
    dy = rng.standard_normal((frames, out, out, conv.out_channels), np.float32)
    runs = {("jax", p): run for p, run in _jax_passes(conv, x, w, dy).items()}
    if torch is not None:
      runs.update({("torch", p): run for p, run in _torch_passes(torch, conv, x, w, dy).items()})
    for run in runs.values():
      run()  # compile, allocate
    samples = {key: [] for key in runs}
    for _ in range(rounds):
      for key, run in runs.items():
        samples[key].append(_median_time(run, repeats))
    results[conv.name] = {key: statistics.median(values) for key, values in samples.items()}
  return results


def format_table(convs: list[Conv], results: dict, frames: int) -> str:
  sides = sorted({side for timings in results.values() for side, _ in timings})
  header = ["convolution", "input", "per pass"]
  for p in PASSES:
    header += [f"{p} {side} ms" for side in sides]
  if len(sides) == 2:
    header.append("torch / jax, all passes x count")
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 3 + "---:|" * (len(header) - 3)]
  totals = {(side, p): 0.0 for side in sides for p in PASSES}
  for conv in convs:
    timings = results[conv.name]
    cells = [
      conv.name,
      f"{frames}x{conv.size}x{conv.size}x{conv.in_channels} -> {conv.out_channels}",
      f"x{conv.count}",
    ]
    for p in PASSES:
      for side in sides:
        seconds = timings.get((side, p))
        cells.append("-" if seconds is None else f"{1e3 * seconds:,.1f}")
        totals[side, p] += conv.count * (seconds or 0.0)
    if len(sides) == 2:
      jax_total = sum(conv.count * timings.get(("jax", p), 0.0) for p in PASSES)
      torch_total = sum(conv.count * timings.get(("torch", p), 0.0) for p in PASSES)
      cells.append(f"{torch_total / jax_total:.2f}")
    lines.append("| " + " | ".join(cells) + " |")
  cells = ["**all, x count**", "", ""]
  for p in PASSES:
    cells += [f"**{1e3 * totals[side, p]:,.1f}**" for side in sides]
  if len(sides) == 2:
    jax_sum = sum(totals["jax", p] for p in PASSES)
    cells.append(f"**{sum(totals['torch', p] for p in PASSES) / jax_sum:.2f}**")
  lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def define_flags() -> None:
  flags.DEFINE_integer("frames", 100, "Frames (batch x time) in each convolution's input.")
  flags.DEFINE_integer("size", 112, "Face size in pixels (the paper's 112).")
  flags.DEFINE_integer("rounds", 3, "Alternating rounds; each pass's time is their median.")
  flags.DEFINE_bool("torch", True, "Also time PyTorch's kernels (if PyTorch is installed).")


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  torch = None
  if FLAGS.torch:
    try:
      torch = importlib.import_module("torch")
    except ImportError:
      print(
        "PyTorch is not installed: timing JAX only (pip install torch --index-url "
        "https://download.pytorch.org/whl/cpu)"
      )
  convs = frontend_convs(size=FLAGS.size)
  results = measure(convs, FLAGS.frames, torch, FLAGS.rounds)
  print(
    f"{jax.devices()[0].device_kind}, jax {jax.__version__}"
    + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else "")
  )
  print(format_table(convs, results, FLAGS.frames))


if __name__ == "__main__":
  define_flags()
  app.run(main)
