"""FLOPs of compiled steps and model FLOPs utilisation (MFU).

FLOPs come from XLA's cost analysis of the step's lowering: the whole (unpartitioned) program, so
the count is global, the same on any mesh, and counts a multiply-add as 2 FLOPs. MFU is
    FLOPs per step / step time / (devices x the device's dense bf16 peak),
against the bf16 peak whatever the compute dtype (the usual convention: a float32 run reads low).
"""

import jax
import jax.numpy as jnp

# Dense (no sparsity) bf16 matmul peak per JAX device, from the vendors' data sheets. The first
# entry whose text occurs in `device.device_kind` wins, so more specific names come first. TPU v2
# and v3 expose each of a chip's two cores as a device; later TPUs one device per chip.
PEAK_BF16_FLOPS_PER_DEVICE = (
  ("H100 PCIe", 756e12),
  ("H100 NVL", 835e12),
  ("H200 NVL", 835e12),
  ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
  ("H200", 989e12),  # SXM and GH200: the H100's compute with more, faster memory
  ("A100", 312e12),
  ("TPU v2", 23e12),
  ("TPU v3", 61.5e12),
  ("TPU v4 lite", 137e12),
  ("TPU v4", 275e12),
  ("TPU v5 lite", 197e12),
  ("TPU v5e", 197e12),
  ("TPU v5", 459e12),  # v5p ("TPU v5" or "TPU v5p")
  ("TPU v6", 918e12),  # v6e ("TPU v6 lite" or "TPU v6e")
)


def peak_flops_per_device(device: jax.Device | None = None) -> float | None:
  """The device's dense bf16 peak FLOP/s, or None for a kind not in the table (e.g. CPUs)."""
  kind = (device or jax.devices()[0]).device_kind
  return next((peak for name, peak in PEAK_BF16_FLOPS_PER_DEVICE if name in kind), None)


def program_flops(fn, args: tuple, accum_steps: int = 1) -> float:
  """FLOPs of one call `fn(*args)`, from XLA's cost analysis of the program lowered for the CPU.

  The count is a property of the program, not of the backend, and only the CPU's analysis sees
  all of it: GPU backends analyse no unoptimised program and count none of the cuDNN/cuBLAS calls
  of compiled ones. `fn` may be jitted with shardings; it is re-traced from shapes alone.
  XLA counts a while loop's body once; the step's scan over `accum_steps` micro-batches runs it
  accum_steps times. Scaling the whole count also scales the optimizer update outside the loop,
  ~15 FLOPs per parameter against millions per frame: negligible.
  """
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), args)
  lowered = (
    jax.jit(getattr(fn, "__wrapped__", fn)).trace(*shapes).lower(lowering_platforms=("cpu",))
  )
  return float(lowered.cost_analysis()["flops"]) * accum_steps


class StepFlops:
  """FLOPs of a jitted `update_fn(state, batch, teachers_state)`, counted once per batch shape.

  Batches come in a few bucket shapes; each has its own count, from one CPU lowering (no
  compilation) the first time the shape appears.
  """

  def __init__(self, update_fn, accum_steps: int):
    self._update_fn = update_fn
    self._accum_steps = accum_steps
    self._by_shape = {}

  def __call__(self, state, batch, teachers_state) -> float:
    shape = tuple(x.shape for x in jax.tree.leaves(batch))
    if shape not in self._by_shape:
      self._by_shape[shape] = program_flops(
        self._update_fn, (state, batch, teachers_state), self._accum_steps
      )
    return self._by_shape[shape]


def utilisation(
  flops_per_second: float, num_devices: int, peak_per_device: float | None
) -> float | None:
  """MFU in [0, 1], or None when the peak is unknown."""
  if not peak_per_device:
    return None
  return flops_per_second / (num_devices * peak_per_device)
