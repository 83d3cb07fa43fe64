"""Device mesh, sharding rules and JAX's multi-controller start-up.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data parallelism whose
parameters and optimizer state are also split). A batch is split along both; a parameter larger
than `min_fsdp_size` elements is split along `fsdp` on its largest divisible axis, everything else
is replicated.
"""

import os

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
MIN_FSDP_SIZE = 2 ** 18  # below this, splitting a tensor costs more in collectives than it saves


def _multi_process_environment() -> bool:
  env = os.environ
  return ("JAX_COORDINATOR_ADDRESS" in env                 # launch/local.py, Kubernetes
          or int(env.get("SLURM_NTASKS", "1")) > 1          # srun with several tasks
          or "," in env.get("TPU_WORKER_HOSTNAMES", ""))    # a multi-worker TPU VM slice


def initialize_distributed() -> None:
  """Starts JAX's multi-controller runtime when this process is one of several.

  Explicit JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (set by launch/local.py
  and the Kubernetes manifest) are passed on; under SLURM and on TPU VMs JAX detects everything
  itself. A lone process starts nothing.
  """
  if not _multi_process_environment():
    return
  env = os.environ
  explicit = {}
  if "JAX_COORDINATOR_ADDRESS" in env:
    explicit = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                    num_processes=int(env["JAX_NUM_PROCESSES"]),
                    process_id=int(env["JAX_PROCESS_ID"]))
  jax.distributed.initialize(**explicit)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def make_mesh(cfg: ml_collections.ConfigDict, devices=None) -> Mesh:
  """A `data` x `fsdp` mesh; one size may be -1 (all remaining devices)."""
  devices = np.asarray(jax.devices() if devices is None else devices)
  sizes = [cfg.data, cfg.fsdp]
  if sizes.count(-1) > 1:
    raise ValueError("at most one of mesh.data, mesh.fsdp may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if devices.size % known:
      raise ValueError(f"{devices.size} devices cannot be split into mesh {sizes}")
    sizes[sizes.index(-1)] = devices.size // known
  if int(np.prod(sizes)) != devices.size:
    raise ValueError(f"mesh data={sizes[0]} x fsdp={sizes[1]} needs {np.prod(sizes)} devices, "
                     f"{devices.size} are available")
  return Mesh(devices.reshape(sizes), BATCH_AXES, axis_types=(AxisType.Auto,) * 2)


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
  return jax.tree.map(lambda x: NamedSharding(mesh, parameter_spec(tuple(x.shape), fsdp)),
                      abstract_state)


def num_batch_shards(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def local_batch_multiple(mesh: Mesh) -> int:
  """Rows of a process-local batch must split evenly over this process's devices."""
  return max(num_batch_shards(mesh) // jax.process_count(), 1)


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
  """Assembles process-local numpy batches into global arrays split along the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
