r"""Throughput of the training input pipeline, beside the reference's per-clip decoding.

  python -m avcd.benchmarks.input_pipeline [--clips=40] [--repeats=5] [--batches=40]

Generates `--clips` clips (3 to 6 s of 224x224 H.264 at 25 fps, a moving textured image, and a
16 kHz wav of modulated tones and noise), lists them in a manifest in the reference's CSV format
and prepares them with `avcd prepare` into a temporary directory; none of that is timed. Then, on
the same clips, in this process:

  reference     `clips.extract_clip` per clip: decode the mp4, read the wav, MFCC and STFT, what
                the reference's dataset does for every clip it loads
  grain, N      `loader.train_dataset` over the prepared shards with N worker processes: whole
                clips (data.train_window = max_frames, as the paper), the default buckets and
                frame budget, augmentation parameters drawn on the host
  augmentation  `augment.apply` jitted on the CPU for one batch of the frame budget: the face
                warp the train step runs in-graph on the accelerator, timed per frame
  grain + aug.  the host pipeline and the augmentation on the same cores (CPU-seconds add up)

Every measurement is repeated `--repeats` times and the table shows medians. frames/s is of wall
time; "per core" is frames per CPU-second (user + system time of this process and its workers),
which stays comparable when other work shares the machine; "x ref." compares per-core rates.
A Grain run times `--batches` batches after WARMUP_BATCHES untimed ones (the time to the first
batch, worker start-up included, is shown apart as "start s"). A second table splits the
0-worker pipeline's CPU time per frame: reading the ArrayRecord shards (zstd), deserialising the
examples, and the rest (windowing, padding and batching in numpy, Grain), by difference.
"""

import csv
import dataclasses
import fractions
import os
import pathlib
import statistics
import tempfile
import time

import av
import cv2
import jax
import numpy as np
import psutil  # installed with orbax-checkpoint and tensorflow-datasets
import scipy.io.wavfile
from absl import app, flags

from avcd import config_lib
from data_pipelines import schema
from data_pipelines.building import clips, manifests, prepare
from data_pipelines.reading import augment, loader, split_index

_CLIPS = flags.DEFINE_integer("clips", 40, "Clips to generate.")
_MIN_SECONDS = flags.DEFINE_float("min_seconds", 3.0, "Shortest clip.")
_MAX_SECONDS = flags.DEFINE_float("max_seconds", 6.0, "Longest clip.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs of each measurement (median shown).")
_BATCHES = flags.DEFINE_integer("batches", 40, "Timed batches per Grain run.")
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Grain worker counts to time.")
_WORKDIR = flags.DEFINE_string(
  "workdir",
  None,
  "Keep the media and shards here (default: a temporary directory, deleted afterwards).",
)

VIDEO_SIZE = 224
AUGMENT_LENGTH = 200  # the bucket the 3-6 s clips fall in at the default bucket lengths
# Untimed batches at the start of a Grain run: start-up, and the batches prefetched meanwhile.
WARMUP_BATCHES = 8


class _CpuClock:
  """User + system seconds of this process and its child processes (Grain workers) since made.

  Children are sampled at every `sample()`; a worker that exits counts up to its last sample.
  """

  def __init__(self):
    self._start = self._read()
    self._last = dict(self._start)

  @staticmethod
  def _read() -> dict[int, float]:
    seconds = {}
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
      try:
        times = process.cpu_times()
      except psutil.NoSuchProcess:
        continue
      seconds[process.pid] = times.user + times.system
    return seconds

  def sample(self) -> None:
    self._last.update(self._read())

  def seconds(self) -> float:
    self.sample()
    return sum(value - self._start.get(pid, 0.0) for pid, value in self._last.items())


@dataclasses.dataclass(frozen=True)
class _Run:
  """One timed run: clips and frames produced, wall and CPU seconds, start-up seconds."""

  clips: int
  frames: int
  wall: float
  cpu: float
  startup: float = 0.0


def _write_clip(
  directory: pathlib.Path, name: str, seconds: float, label: int, rng: np.random.Generator
) -> dict:
  """Writes <name>.mp4 (H.264, default quality) and <name>.wav; returns the manifest row."""
  num_frames = round(seconds * schema.FPS)
  base = cv2.resize(
    rng.uniform(0, 255, (8, 8, 3)).astype(np.float32),
    (2 * VIDEO_SIZE,) * 2,
    interpolation=cv2.INTER_CUBIC,
  )
  with av.open(str(directory / f"{name}.mp4"), mode="w") as container:
    stream = container.add_stream("libx264", rate=fractions.Fraction(int(schema.FPS)))
    stream.width = stream.height = VIDEO_SIZE
    stream.pix_fmt = "yuv420p"
    for t in range(num_frames):
      # A slowly panning texture with sensor-like noise: frames differ, as a face video's do.
      offset = int(VIDEO_SIZE / 2 * (1 + np.sin(t / 20)))
      view = base[offset : offset + VIDEO_SIZE, offset // 2 : offset // 2 + VIDEO_SIZE]
      frame = np.clip(view + rng.normal(0, 4, view.shape), 0, 255).astype(np.uint8)
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode(None))
  samples = round(seconds * schema.SAMPLE_RATE)
  t = np.arange(samples) / schema.SAMPLE_RATE
  voice = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(100, 3000, 5))
  envelope = 0.5 * (1 + np.sin(2 * np.pi * 4 * t + rng.uniform(0, 2 * np.pi)))
  audio = 0.1 * envelope * voice + 0.01 * rng.standard_normal(samples)
  scipy.io.wavfile.write(
    directory / f"{name}.wav", schema.SAMPLE_RATE, (np.clip(audio, -1, 1) * 32767).astype(np.int16)
  )
  return {
    "ID_Name": name,
    "Audio_Path": str(directory / f"{name}.wav"),
    "Video_Path": str(directory / f"{name}.mp4"),
    "ENtire_Label": label,
    "Audio_Label": 0,
    "Video_Label": label,
    "Identi_Label": 1 - label,
    "Sync_Label": 1,
    "Frame_Len": num_frames,
    "Audio_Len": samples,
    "FPS": schema.FPS,
    "AudioSamRate": schema.SAMPLE_RATE,
  }


def _prepare_corpus(workdir: pathlib.Path) -> tuple[pathlib.Path, str]:
  """Writes the media and manifest and prepares them; returns (manifest, builder name)."""
  media = workdir / "media"
  media.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  rows = [
    _write_clip(
      media, f"clip_{i:03d}", rng.uniform(_MIN_SECONDS.value, _MAX_SECONDS.value), i % 2, rng
    )
    for i in range(_CLIPS.value)
  ]
  manifest = workdir / "train.csv"
  with manifest.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(manifests.COLUMNS.values()))
    writer.writeheader()
    writer.writerows(rows)
  builder = prepare.make_builder(
    workdir / "data", manifests=[f"train={manifest}"], progress_interval_s=3600.0
  )
  prepare.prepare(builder)
  return manifest, builder.name


def _reference_run(rows: list[manifests.ManifestRow]) -> _Run:
  cpu, start = _CpuClock(), time.perf_counter()
  frames = sum(clips.extract_clip(row)["num_frames"] for row in rows)
  return _Run(len(rows), frames, time.perf_counter() - start, cpu.seconds())


def _grain_run(data_cfg, workers: int) -> _Run:
  """Times the batches after WARMUP_BATCHES, once the prefetch buffers have been drained."""
  cfg = config_lib.data(**{**data_cfg.to_dict(), "num_workers": workers})
  start = time.perf_counter()
  iterator = iter(
    loader.train_dataset(cfg, seed=0, process_index=0, process_count=1, batch_multiple=1)
  )
  next(iterator)
  startup = time.perf_counter() - start
  for _ in range(WARMUP_BATCHES - 1):
    next(iterator)
  cpu, timed = _CpuClock(), time.perf_counter()
  clip_count = frames = 0
  for _ in range(_BATCHES.value):
    batch = next(iterator)
    clip_count += len(batch["record"])
    frames += int(batch["num_frames"].sum())
    cpu.sample()
  run = _Run(clip_count, frames, time.perf_counter() - timed, cpu.seconds(), startup)
  iterator.close()  # stops the worker processes
  return run


def _augment_run(frame_budget: int, calls: int = 20) -> _Run:
  rows = loader.global_batch_size(frame_budget, AUGMENT_LENGTH, 1)
  rng = np.random.default_rng(0)
  faces = rng.integers(
    0, 256, (rows, AUGMENT_LENGTH, schema.FACE_SIZE, schema.FACE_SIZE), dtype=np.uint8
  )
  params = augment.sample_params(rng, rows)
  warp = jax.jit(augment.apply)
  faces, params = jax.device_put((faces, params))
  warp(faces, params).block_until_ready()  # compile
  cpu, start = _CpuClock(), time.perf_counter()
  for _ in range(calls):
    warp(faces, params).block_until_ready()
  return _Run(
    rows * calls, rows * AUGMENT_LENGTH * calls, time.perf_counter() - start, cpu.seconds()
  )


def _breakdown(data_cfg) -> dict[str, float]:
  """CPU microseconds per frame to read, and to deserialise, every clip of the split once.

  Reads as the loader does (`__getitems__`); the clock is this process's, all threads.
  """
  split = split_index.open_split(data_cfg.builder, data_cfg.data_dir, data_cfg.train_split)
  frames = int(split_index.load_index(split).num_frames.sum())
  cpu = time.process_time()
  serialized = split.records.__getitems__(list(range(len(split))))
  read = time.process_time() - cpu
  cpu = time.process_time()
  for data in serialized:
    split.decode(data, schema.TEXT_FIELDS)
  decode = time.process_time() - cpu
  return {"read": 1e6 * read / frames, "decode": 1e6 * decode / frames}


def _rates(runs: list[_Run]) -> dict[str, float]:
  """Medians over runs of clips/s, frames/s, frames per CPU-second and start-up seconds."""
  return {
    "clips/s": statistics.median(r.clips / r.wall for r in runs),
    "frames/s": statistics.median(r.frames / r.wall for r in runs),
    "per core": statistics.median(r.frames / r.cpu for r in runs),
    "start s": statistics.median(r.startup for r in runs),
  }


def _table(results: dict[str, dict[str, float]], reference_per_core: float) -> str:
  """A markdown table; a rate a row does not have stays empty."""
  lines = [
    "| pipeline | clips/s | frames/s | frames/s per core | x ref. (per core) | start s |",
    "|---|---:|---:|---:|---:|---:|",
  ]
  cell = lambda rate, key, fmt: format(rate[key], fmt) if key in rate else ""
  for name, rate in results.items():
    cells = [
      cell(rate, "clips/s", ",.1f"),
      cell(rate, "frames/s", ",.0f"),
      cell(rate, "per core", ",.0f"),
      f"{rate['per core'] / reference_per_core:.1f}",
      cell(rate, "start s", ".1f"),
    ]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _grain_name(workers: int) -> str:
  return f"grain, {workers} worker{'' if workers == 1 else 's'}"


def run_benchmark(workdir: pathlib.Path) -> str:
  """Prepares the corpus in `workdir`, times everything, and returns the report."""
  start = time.perf_counter()
  manifest, builder = _prepare_corpus(workdir)
  rows = manifests.read_manifest(manifest)
  data_cfg = config_lib.data(builder=builder, train_split="train", data_dir=str(workdir / "data"))
  prepared = time.perf_counter() - start
  load_before = os.getloadavg()

  results = {}
  reference = [_reference_run(rows) for _ in range(_REPEATS.value)]
  results["reference: extract_clip per clip"] = {
    k: v for k, v in _rates(reference).items() if k != "start s"
  }
  grain = {}
  for workers in map(int, _WORKERS.value):
    grain[workers] = _rates([_grain_run(data_cfg, workers) for _ in range(_REPEATS.value)])
    results[_grain_name(workers)] = grain[workers]
  augmentation = _rates([_augment_run(data_cfg.frame_budget) for _ in range(_REPEATS.value)])
  results["augmentation (jit, CPU)"] = {k: augmentation[k] for k in ("frames/s", "per core")}
  for workers, rate in grain.items():
    combined = 1 / (1 / rate["per core"] + 1 / augmentation["per core"])
    results[f"{_grain_name(workers)} + augmentation"] = {"per core": combined}
  breakdown = [_breakdown(data_cfg) for _ in range(_REPEATS.value)]

  reference_per_core = results["reference: extract_clip per clip"]["per core"]
  frames = sum(row.num_frames for row in rows)
  total_us = 1e6 / grain[0]["per core"] if 0 in grain else None
  parts = {k: statistics.median(b[k] for b in breakdown) for k in ("read", "decode")}
  lines = [
    f"{len(rows)} clips, {frames} frames ({frames / len(rows):.0f} per clip), "
    f"{VIDEO_SIZE}x{VIDEO_SIZE} H.264 + 16 kHz wav; prepared in {prepared:.0f} s "
    f"(untimed); {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before and "
    f"{os.getloadavg()[0]:.1f} after; medians of {_REPEATS.value} runs, "
    f"{_BATCHES.value} timed batches per Grain run",
    "",
    _table(results, reference_per_core),
    "",
    "| CPU per frame (grain, 0 workers) | us/frame |",
    "|---|---:|",
    f"| read shards (ArrayRecord, zstd) | {parts['read']:.1f} |",
    f"| deserialise examples (TFDS) | {parts['decode']:.1f} |",
  ]
  if total_us is not None:
    rest = total_us - parts["read"] - parts["decode"]
    lines += [
      f"| the rest: window, pad, batch, Grain | {rest:.1f} |",
      f"| total (grain, 0 workers) | {total_us:.1f} |",
    ]
  return "\n".join(lines)


def main(argv):
  del argv  # Flags only.
  if _WORKDIR.value:
    print(run_benchmark(pathlib.Path(_WORKDIR.value)))
    return
  with tempfile.TemporaryDirectory() as workdir:
    print(run_benchmark(pathlib.Path(workdir)))


if __name__ == "__main__":
  app.run(main)
