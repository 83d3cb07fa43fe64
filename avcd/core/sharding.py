"""Device mesh, sharding rules and JAX's multi-controller start-up.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data parallelism whose
parameters and optimizer state are also split). A batch is split along both; a tensor of at least
`MIN_FSDP_SIZE` elements is split along `fsdp` on its largest divisible axis, everything else is
replicated. The same rule places the student's train state and the frozen teachers: the teachers
hold most of the parameters (87.5M of 103M at the paper's sizes), so a run that asks for `fsdp`
to save memory wants them split too; they cost one all-gather per step and no gradient traffic.

Device order: `fsdp` is the inner mesh axis. Its all-gathers run every layer of every step, so it
gets the fastest links (devices next to each other on a TPU torus, GPUs of one host); `data` needs
one gradient all-reduce per step and may span hosts or, on multi-slice TPU, slices.
"""

import os

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
MIN_FSDP_SIZE = 2**18  # below this, splitting a tensor costs more in collectives than it saves


def _int_env(name: str) -> int | None:
  value = os.environ.get(name)
  return None if value is None else int(value)


def _is_multi_process_launch() -> bool:
  """Whether this process was started as one of several (see launch/README.md)."""
  env = os.environ
  return (
    "JAX_COORDINATOR_ADDRESS" in env  # launch/: local, Kubernetes, TPU VM
    or (_int_env("SLURM_STEP_NUM_TASKS") or 1) > 1  # an srun step of several tasks
    or "," in env.get("TPU_WORKER_HOSTNAMES", "")
  )  # a multi-host TPU slice on GKE


def initialize_distributed() -> None:
  """Starts JAX's multi-controller runtime when this process is one of several.

  JAX reads JAX_COORDINATOR_ADDRESS (and JAX_LOCAL_DEVICE_IDS) itself; JAX_NUM_PROCESSES and
  JAX_PROCESS_ID are passed on when set. What is left unset JAX detects from the cluster: srun's
  variables (one task per GPU), Cloud TPU metadata, GKE's TPU variables. A lone process starts
  nothing. Processes other than 0 log warnings and errors only.
  """
  if not _is_multi_process_launch():
    return
  jax.distributed.initialize(
    num_processes=_int_env("JAX_NUM_PROCESSES"), process_id=_int_env("JAX_PROCESS_ID")
  )
  logging.info(
    "process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)


def mesh_shape(cfg: ml_collections.ConfigDict, num_devices: int) -> tuple[int, int]:
  """(data, fsdp) sizes of `cfg` (one may be -1: all remaining devices) over `num_devices`."""
  sizes = [cfg.data, cfg.fsdp]
  if sizes.count(-1) > 1:
    raise ValueError("at most one of mesh.data, mesh.fsdp may be -1")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(
      f"mesh sizes must be positive or -1, not mesh.data={sizes[0]} mesh.fsdp={sizes[1]}"
    )
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
        f"{num_devices} devices cannot be split into mesh.data={sizes[0]} x mesh.fsdp={sizes[1]}"
      )
    sizes[sizes.index(-1)] = num_devices // known
  if sizes[0] * sizes[1] != num_devices:
    raise ValueError(
      f"mesh.data={sizes[0]} x mesh.fsdp={sizes[1]} needs {sizes[0] * sizes[1]} "
      f"devices, {num_devices} are available"
    )
  return sizes[0], sizes[1]


def make_mesh(cfg: ml_collections.ConfigDict, devices=None) -> Mesh:
  """The `data` x `fsdp` mesh of `cfg` over `devices` (default: every device of every process).

  Devices are laid out by `jax.make_mesh` (topology-aware on TPU, by device id on GPU, which keeps
  each host's devices together); several TPU slices are stacked along `data`, so `fsdp`
  collectives never cross the data-centre network.
  """
  devices = list(jax.devices() if devices is None else devices)
  data, fsdp = mesh_shape(cfg, len(devices))
  axis_types = (AxisType.Auto,) * 2  # jax.make_mesh's default (Explicit) rejects our sharding
  num_slices = len({getattr(d, "slice_index", 0) for d in devices})
  if num_slices == 1:
    return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=axis_types, devices=devices)
  if data % num_slices:
    raise ValueError(f"mesh.data={data} must be a multiple of the {num_slices} TPU slices")
  grid = mesh_utils.create_hybrid_device_mesh((data // num_slices, fsdp), (num_slices, 1), devices)
  return Mesh(grid, BATCH_AXES, axis_types=axis_types)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def parameter_spec(shape: tuple[int, ...], fsdp_size: int) -> P:
  """Splits the largest axis divisible by the fsdp size, for tensors worth splitting."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < MIN_FSDP_SIZE:
    return P()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def state_shardings(abstract_state, mesh: Mesh):
  """NamedShardings for a pytree of arrays (params, optimizer state, ...) by the rules above."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(
    lambda x: NamedSharding(mesh, parameter_spec(tuple(x.shape), fsdp)), abstract_state
  )


def jit_update(update_fn, state_sharding, mesh: Mesh, *other_shardings):
  """`update_fn(state, batch, *others) -> (state, metrics)` compiled for the mesh.

  The state and the other arguments (e.g. frozen teachers) keep their shardings, the batch is
  split along `data` x `fsdp`, the metrics are replicated, and the old state's buffers are
  donated to the new state.
  """
  return jax.jit(
    update_fn,
    in_shardings=(state_sharding, batch_sharding(mesh), *other_shardings),
    out_shardings=(state_sharding, replicated(mesh)),
    donate_argnums=0,
  )


def num_batch_shards(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def local_batch_multiple(mesh: Mesh) -> int:
  """Rows of a process-local batch must split evenly over this process's devices."""
  return max(num_batch_shards(mesh) // jax.process_count(), 1)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles process-local numpy batches into global arrays split along the batch axes.

  Each process's rows land on its own devices' shards of the batch axis, so every process must
  hold the same number of rows.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
