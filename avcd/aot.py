"""The train step outside the training loop: compiled ahead of time for a target mesh (memory
and FLOPs per bucket, `avcd compile`), and run on random batches (benchmarks, tests).

Each bucket length L of `data.bucket_lengths` gives the train step one static batch shape: the
rows the loader plans for it on that mesh (`data.frame_budget // L`, rounded down to a multiple of
the mesh's batch shards x `optim.grad_accum_steps`). Compiling every shape without running it
shows what each device needs before a job is queued.
"""

import dataclasses

import jax
import ml_collections
import numpy as np
from flax import nnx

from avcd import checkpoints, flops, sharding, steps, train
from avcd import train_state as ts
from data_pipelines import augment, loader, schema


def train_batch_spec(rows: int, length: int, *, with_lips: bool,
                     teacher_classes: tuple[int, int] | None = None) -> dict:
  """ShapeDtypeStructs of a loader training batch, as far as the train step reads it.

  `teacher_classes`: (ASR, VSR) classes when batches carry cached teacher posteriors.
  """
  fields = [f for f in schema.ARRAY_FIELDS
            if f.name in train.TRAIN_INPUTS and (with_lips or f.name != "lips")]
  spec = {f.name: jax.ShapeDtypeStruct((rows, *f.shape(length)), f.dtype) for f in fields}
  spec.update(num_frames=jax.ShapeDtypeStruct((rows,), np.int32),
              label=jax.ShapeDtypeStruct((rows,), np.int32),
              augment={k: jax.ShapeDtypeStruct((rows,), dtype)
                       for k, dtype in augment.PARAM_DTYPES.items()})
  if teacher_classes:
    spec.update({name: jax.ShapeDtypeStruct((rows, length, classes), np.float32)
                 for name, classes in zip(("asr_probs", "vsr_probs"), teacher_classes)})
  return spec


def random_train_batch(spec: dict, rng: np.random.Generator) -> dict:
  """Numpy arrays in the layout of `spec` (a `train_batch_spec`): every clip full length, labels
  alternating real and fake, features random, augmentations drawn as the loader draws them."""
  rows, length = spec["faces"].shape[:2]

  def random_values(name, x):
    if x.dtype == np.uint8:
      return rng.integers(0, 256, x.shape, dtype=np.uint8)
    if name.endswith("_probs"):
      values = rng.random(x.shape, dtype=np.float32)
      return values / values.sum(axis=-1, keepdims=True)
    return rng.standard_normal(x.shape).astype(x.dtype)

  batch = {k: random_values(k, v) for k, v in spec.items()
           if k not in ("num_frames", "label", "augment")}
  batch.update(num_frames=np.full(rows, length, np.int32),
               label=(np.arange(rows) % 2).astype(np.int32),
               augment=augment.sample_params(rng, rows))
  return batch


def bucket_shapes(config: ml_collections.ConfigDict, mesh) -> list[tuple[int, int]]:
  """(bucket length, global rows) of every training batch shape the loader plans on `mesh`."""
  multiple = sharding.num_batch_shards(mesh) * config.optim.grad_accum_steps
  return [(length, loader.global_batch_size(config.data.frame_budget, length, multiple))
          for length in sorted(config.data.bucket_lengths)]


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """The jitted train step of a config on a mesh, as `avcd train` builds it, and the layouts
  (ShapeDtypeStructs with shardings) of its state and teachers arguments."""
  update_fn: jax.stages.Wrapped
  state: object                 # TrainState
  teachers_state: tuple | None  # (params, batch_stats); None when batches carry their posteriors
  with_lips: bool               # batches carry lip features (the VSR teacher has no frontend)
  teacher_classes: tuple[int, int] | None  # (ASR, VSR) classes of cached posteriors
  mesh: jax.sharding.Mesh
  init_fns: tuple               # () -> TrainState, () -> teachers (params, batch_stats)

  def batch(self, length: int, rows: int) -> dict:
    """The layout of a global batch of `rows` clips of `length` frames."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                       sharding=sharding.batch_sharding(self.mesh)),
        train_batch_spec(rows, length, with_lips=self.with_lips,
                         teacher_classes=self.teacher_classes))

  def arguments(self, length: int, rows: int) -> tuple:
    """Abstract (state, batch, teachers_state) of a batch of `rows` clips of `length` frames."""
    return self.state, self.batch(length, rows), self.teachers_state

  def lower(self, length: int, rows: int) -> jax.stages.Lowered:
    return self.update_fn.lower(*self.arguments(length, rows))

  def initial_arguments(self) -> tuple:
    """(state, teachers_state) on the mesh: the seed's initialisation, untrained teachers."""
    init_state, init_teachers = self.init_fns
    state = jax.jit(init_state, out_shardings=_shardings(self.state))()
    if self.teachers_state is None:
      return state, None
    return state, jax.jit(init_teachers, out_shardings=_shardings(self.teachers_state))()


def _shardings(layout):
  return jax.tree.map(lambda x: x.sharding, layout)


def make_train_step(config: ml_collections.ConfigDict, mesh,
                    steps_per_epoch: int = 1) -> TrainStep:
  """The train step of `config` on `mesh`, with nothing allocated.

  With `teachers.cache` the batches carry the teachers' posteriors and the step takes no
  teachers. `steps_per_epoch` only sets the learning-rate schedule, a constant of the program: it
  changes neither buffers nor FLOPs.
  """
  optimizer = ts.make_optimizer(config.optim, steps_per_epoch)
  graphdef, abstract, shardings, init_fn = train.abstract_train_state(config, optimizer, mesh)

  def init_teachers():
    return tuple(ts.split_model(ts.build_teachers(config.teachers, config.seed))[1:])

  teachers_graphdef, *teachers = ts.split_model(
      nnx.eval_shape(lambda: ts.build_teachers(config.teachers, config.seed)))
  teachers_state, teacher_classes = None, None
  if config.teachers.cache:
    teacher_classes = (config.teachers.asr.num_classes, config.teachers.vsr.num_classes)
  else:
    teachers_state = checkpoints.abstract_like(
        tuple(teachers), sharding.state_shardings(tuple(teachers), mesh))
  update_fn = sharding.jit_update(
      steps.make_update_fn(graphdef, teachers_graphdef, optimizer, config), shardings,
      None if teachers_state is None else _shardings(teachers_state), mesh)
  return TrainStep(update_fn, checkpoints.abstract_like(abstract, shardings), teachers_state,
                   with_lips=not config.teachers.vsr.use_frontend,
                   teacher_classes=teacher_classes, mesh=mesh, init_fns=(init_fn, init_teachers))


@dataclasses.dataclass(frozen=True)
class BucketReport:
  """One compiled batch shape: per-device buffer sizes (bytes) and global FLOPs per step."""
  length: int
  rows: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int       # outputs written into donated arguments (the old train state)
  temp_bytes: int
  code_bytes: int
  flops: float

  @property
  def peak_bytes(self) -> int:
    """What the step holds at once: inputs, outputs not aliased to inputs, and temporaries."""
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes


def compile_buckets(config: ml_collections.ConfigDict, mesh,
                    lengths: list[int] | None = None) -> list[BucketReport]:
  """Lowers and compiles the train step for each bucket (or only `lengths`); runs nothing."""
  step = make_train_step(config, mesh)
  shapes = bucket_shapes(config, mesh)
  if lengths:
    unknown = sorted(set(lengths) - {length for length, _ in shapes})
    if unknown:
      raise ValueError(f"lengths {unknown} are not in data.bucket_lengths "
                       f"{sorted(config.data.bucket_lengths)}")
    shapes = [(length, rows) for length, rows in shapes if length in lengths]
  reports = []
  for length, rows in shapes:
    lowered = step.lower(length, rows)
    memory = lowered.compile().memory_analysis()
    reports.append(BucketReport(
        length=length, rows=rows, argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes, alias_bytes=memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes, code_bytes=memory.generated_code_size_in_bytes,
        flops=flops.program_flops(step.update_fn, step.arguments(length, rows),
                                  config.optim.grad_accum_steps)))
  return reports


def format_reports(reports: list[BucketReport], mesh) -> str:
  """A table of the reports, and the devices' memory where the backend reports it."""
  device = mesh.devices.flat[0]
  mib = lambda n: f"{n / 2 ** 20:,.1f}"
  lines = [f"mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']} of {mesh.size} "
           f"{device.device_kind} devices; memory in MiB per device, FLOPs per step over all "
           "devices", "",
           "| length | rows | frames | arguments | outputs | aliased | temp | code | peak "
           "| GFLOP/step | GFLOP/frame |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
  for r in reports:
    frames = r.rows * r.length
    lines.append(f"| {r.length} | {r.rows} | {frames} | {mib(r.argument_bytes)} "
                 f"| {mib(r.output_bytes)} | {mib(r.alias_bytes)} | {mib(r.temp_bytes)} "
                 f"| {mib(r.code_bytes)} | {mib(r.peak_bytes)} | {r.flops / 1e9:,.1f} "
                 f"| {r.flops / frames / 1e9:.3f} |")
  stats = device.memory_stats() if device.platform != "cpu" else None
  if stats and "bytes_limit" in stats:
    worst = max(reports, key=lambda r: r.peak_bytes)
    lines += ["", f"device memory {mib(stats['bytes_limit'])} MiB; the largest step needs "
                  f"{worst.peak_bytes / stats['bytes_limit']:.0%} of it (length {worst.length})"]
  return "\n".join(lines)
