"""`avcd compile`: the train step (`steps.make_train_step`, the one `avcd train` runs) compiled
ahead of time for a target mesh, with the memory and FLOPs of every bucket.

Each bucket length L of `data.bucket_lengths` gives the train step one static batch shape: the
rows the loader plans for it on that mesh (`data.frame_budget // L`, rounded down to a multiple of
the mesh's batch shards x `optim.grad_accum_steps`). Compiling every shape without running it
shows what each device needs before a job is queued, and how long each shape takes to compile
(loaded from the persistent compilation cache on a second run: avcd/compilation_cache.py).
"""

import dataclasses
import time

import ml_collections

from avcd.core import sharding
from avcd.training import flops, steps
from data_pipelines.reading import loader


def bucket_shapes(config: ml_collections.ConfigDict, mesh) -> list[tuple[int, int]]:
  """(bucket length, global rows) of every training batch shape the loader plans on `mesh`."""
  multiple = sharding.num_batch_shards(mesh) * config.optim.grad_accum_steps
  return [
    (length, loader.global_batch_size(config.data.frame_budget, length, multiple))
    for length in sorted(config.data.bucket_lengths)
  ]


@dataclasses.dataclass(frozen=True)
class BucketReport:
  """One compiled batch shape: per-device buffer sizes (bytes) and global FLOPs per step."""

  length: int
  rows: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int  # outputs written into donated arguments (the old train state)
  temp_bytes: int
  code_bytes: int
  flops: float
  compile_seconds: float  # lowering and compiling (from the compilation cache when warm)

  @property
  def peak_bytes(self) -> int:
    """What the step holds at once: inputs, outputs not aliased to inputs, and temporaries."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


def compile_buckets(
  config: ml_collections.ConfigDict, mesh, lengths: list[int] | None = None
) -> list[BucketReport]:
  """Lowers and compiles the train step for each bucket (or only `lengths`); runs nothing."""
  step = steps.make_train_step(config, mesh)
  shapes = bucket_shapes(config, mesh)
  if lengths:
    unknown = sorted(set(lengths) - {length for length, _ in shapes})
    if unknown:
      raise ValueError(
        f"lengths {unknown} are not in data.bucket_lengths {sorted(config.data.bucket_lengths)}"
      )
    shapes = [(length, rows) for length, rows in shapes if length in lengths]
  reports = []
  for length, rows in shapes:
    start = time.perf_counter()
    compiled = step.lower(length, rows).compile()
    seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    reports.append(
      BucketReport(
        length=length,
        rows=rows,
        argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes,
        flops=flops.program_flops(
          step.update_fn, step.arguments(length, rows), config.optim.grad_accum_steps
        ),
        compile_seconds=seconds,
      )
    )
  return reports


def format_reports(reports: list[BucketReport], mesh) -> str:
  """A table of the reports, and the devices' memory where the backend reports it."""
  device = mesh.devices.flat[0]
  mib = lambda n: f"{n / 2**20:,.1f}"
  lines = [
    f"mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']} of {mesh.size} "
    f"{device.device_kind} devices; memory in MiB per device, FLOPs per step over all "
    "devices",
    "",
    "| length | rows | frames | arguments | outputs | aliased | temp | code | peak "
    "| GFLOP/step | GFLOP/frame | compile s |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in reports:
    frames = r.rows * r.length
    lines.append(
      f"| {r.length} | {r.rows} | {frames} | {mib(r.argument_bytes)} "
      f"| {mib(r.output_bytes)} | {mib(r.alias_bytes)} | {mib(r.temp_bytes)} "
      f"| {mib(r.code_bytes)} | {mib(r.peak_bytes)} | {r.flops / 1e9:,.1f} "
      f"| {r.flops / frames / 1e9:.3f} | {r.compile_seconds:.1f} |"
    )
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "bytes_limit" in stats:
    worst = max(reports, key=lambda r: r.peak_bytes)
    lines += [
      "",
      f"device memory {mib(stats['bytes_limit'])} MiB; the largest step needs "
      f"{worst.peak_bytes / stats['bytes_limit']:.0%} of it (length {worst.length})",
    ]
  return "\n".join(lines)
