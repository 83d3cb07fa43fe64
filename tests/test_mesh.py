"""Mesh shapes and sharding rules; the same training on meshes 1x1, 8x1, 4x2 and 2x4.

The equivalence runs in subprocesses with 8 fake CPU devices: the device count is fixed when
JAX's backend starts, and this pytest process has started it with one. Each subprocess runs this
file (`python -m tests.test_mesh OUT_DIR MESH...`), trains NUM_STEPS steps of configs/tiny.py on
its meshes from the same seed and the same global batches, and saves losses and final parameters.

Tolerance: the meshes compute the same sums in different orders (per-device partial sums, then
all-reduces), which in float32 changes results by ~1e-6 relative per reduction: the first step's
loss differs by ~4e-6 between one device and eight. Adam's default eps (1e-8) would turn such
noise into whole steps: a parameter whose gradient is zero in exact arithmetic (the attention key
biases, the bias ahead of a BatchNorm) moves by +-lr on the sign of rounding noise. The test uses
eps=1, which makes every update nearly proportional to its gradient (gradient RMS << 1), so that
rounding stays rounding:
losses agree to LOSS_RTOL and parameters to PARAM_ATOL after NUM_STEPS steps (measured: 6e-6 and
1.2e-7, one float32 ulp at 1.0). Clips are kept as they are or mirrored: rotations and crops
interpolate and round to uint8 as OpenCV does, and differently compiled programs (one device or
eight) may round a pixel that lands on .5 differently; on the synthetic corpus's faces such +-1
changes in a few pixels moved the tiny network's first loss by 7e-5 between one device and four.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from avcd.core import sharding
from tests.conftest import ADAM_EPS, FAST_COMPILE_FLAGS, LOSS_RTOL, REPO

MESHES = ((1, 1), (8, 1), (4, 2), (2, 4))
NUM_STEPS = 3
ROWS, FRAMES, FACE = 8, 16, 32  # every mesh splits the 8 rows; 32 px faces keep steps short
PARAM_ATOL = 1e-6


def test_parameter_spec_splits_the_largest_divisible_axis():
  assert sharding.parameter_spec((3, 3, 256, 512), 4) == P(None, None, None, "fsdp")
  assert sharding.parameter_spec((1024, 256), 4) == P("fsdp", None)
  # 1000 is not divisible by 16: the next largest axis is split.
  assert sharding.parameter_spec((1000, 512), 16) == P(None, "fsdp")


def test_parameter_spec_replicates_small_indivisible_and_unsplit():
  assert sharding.parameter_spec((512,), 4) == P()  # below MIN_FSDP_SIZE
  assert sharding.parameter_spec((1023, 1023), 4) == P()  # no axis divisible by 4
  assert sharding.parameter_spec((1024, 1024), 1) == P()  # no fsdp axis


@pytest.mark.parametrize(
  "data,fsdp,devices,expected",
  [(-1, 1, 8, (8, 1)), (-1, 2, 8, (4, 2)), (2, -1, 8, (2, 4)), (1, 1, 1, (1, 1))],
)
def test_mesh_shape_fills_the_remaining_devices(data, fsdp, devices, expected):
  assert sharding.mesh_shape(ConfigDict(dict(data=data, fsdp=fsdp)), devices) == expected


@pytest.mark.parametrize(
  "data,fsdp,devices,message",
  [
    (-1, -1, 8, "at most one"),
    (-1, 3, 8, "cannot be split"),
    (2, 2, 8, "needs 4 devices"),
    (0, 1, 8, "positive"),
  ],
)
def test_mesh_shape_rejects_impossible_meshes(data, fsdp, devices, message):
  with pytest.raises(ValueError, match=message):
    sharding.mesh_shape(ConfigDict(dict(data=data, fsdp=fsdp)), devices)


@pytest.fixture(scope="module")
def mesh_runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("meshes")
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="8", XLA_FLAGS=FAST_COMPILE_FLAGS)
  # Two workers of two meshes each: compiling is single-threaded, so they share the cores.
  workers = [
    subprocess.Popen([sys.executable, "-m", "tests.test_mesh", str(out), *names], cwd=REPO, env=env)
    for names in (_names()[:2], _names()[2:])
  ]
  assert [worker.wait(timeout=900) for worker in workers] == [0, 0]
  return (
    {name: json.loads((out / f"run_{name}.json").read_text()) for name in _names()},
    {name: dict(np.load(out / f"params_{name}.npz")) for name in _names()},
  )


def _names() -> list[str]:
  return [f"{data}x{fsdp}" for data, fsdp in MESHES]


def test_losses_match_on_every_mesh(mesh_runs):
  runs, _ = mesh_runs
  reference = runs["1x1"]["losses"]
  assert len(reference) == NUM_STEPS and np.all(np.isfinite(reference))
  for name in _names()[1:]:
    np.testing.assert_allclose(runs[name]["losses"], reference, rtol=LOSS_RTOL, err_msg=name)


def test_final_parameters_match_on_every_mesh(mesh_runs):
  _, params = mesh_runs
  reference = params["1x1"]
  for name in _names()[1:]:
    assert params[name].keys() == reference.keys()
    for key, value in params[name].items():
      np.testing.assert_allclose(value, reference[key], atol=PARAM_ATOL, err_msg=f"{name} {key}")


def test_fsdp_meshes_split_parameters_moments_and_teachers(mesh_runs):
  runs, _ = mesh_runs
  for name in _names():
    split = runs[name]["split"]
    fsdp = int(name.split("x")[1])
    for part in ("params", "opt_state", "teachers"):
      assert (split[part] > 0) == (fsdp > 1), (name, part, split)


def test_batch_rows_are_spread_over_every_device(mesh_runs):
  runs, _ = mesh_runs
  for name in _names():
    data, fsdp = map(int, name.split("x"))
    assert runs[name]["rows_per_device"] == [ROWS // (data * fsdp)] * (data * fsdp)


def _train_on_meshes(out: pathlib.Path, names: list[str]) -> None:
  """NUM_STEPS train steps of the tiny config on each named mesh; writes what the tests compare."""
  import jax  # pylint: disable=g-import-not-at-top

  from avcd import config_lib  # pylint: disable=g-import-not-at-top
  from avcd.training import steps  # pylint: disable=g-import-not-at-top
  from data_pipelines.reading import augment  # pylint: disable=g-import-not-at-top

  # The tiny model's tensors are all below the production threshold; lowered, the fsdp meshes
  # split its larger parameters, their Adam moments and the teachers' like a full-size model's.
  sharding.MIN_FSDP_SIZE = 2**9
  config = config_lib.load_config(REPO / "configs" / "tiny.py", {"optim.eps": ADAM_EPS})
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(NUM_STEPS):
    spec = steps.train_batch_spec(ROWS, FRAMES, with_lips=False)
    spec["faces"] = jax.ShapeDtypeStruct((ROWS, FRAMES, FACE, FACE), np.uint8)
    batch = steps.random_train_batch(spec, rng)
    batch["augment"] = augment.identity_params(ROWS)
    batch["augment"]["kind"][:] = rng.choice([augment.ORIGINAL, augment.FLIP], ROWS)
    # Clips of several lengths, zero beyond their end as the loader gives them.
    batch["num_frames"] = rng.integers(FRAMES // 2, FRAMES + 1, ROWS).astype(np.int32)
    for field in ("mfcc", "stft", "faces"):
      length = batch[field].shape[1]
      valid = np.arange(length)[None, :] < length // FRAMES * batch["num_frames"][:, None]
      batch[field] *= valid.reshape(valid.shape + (1,) * (batch[field].ndim - 2))
    batches.append(batch)

  for name in names:
    data, fsdp = map(int, name.split("x"))
    config.mesh.data, config.mesh.fsdp = data, fsdp
    mesh = sharding.make_mesh(config.mesh, jax.devices()[: data * fsdp])
    step = steps.make_train_step(config, mesh, steps_per_epoch=NUM_STEPS)
    state, teachers_state = step.initial_arguments()
    losses = []
    for batch in batches:
      inputs = sharding.global_batch(batch, mesh)
      state, metrics = step.update_fn(state, inputs, teachers_state)
      losses.append(float(metrics["loss"]))
    count_split = lambda tree: sum("fsdp" in x.sharding.spec for x in jax.tree.leaves(tree))
    run = dict(
      losses=losses,
      split=dict(
        params=count_split(state.params),
        opt_state=count_split(state.opt_state),
        teachers=count_split(teachers_state),
      ),
      rows_per_device=[s.data.shape[0] for s in inputs["faces"].addressable_shards],
    )
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    np.savez(
      out / f"params_{name}.npz",
      **{jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves},
    )
    (out / f"run_{name}.json").write_text(json.dumps(run))


if __name__ == "__main__":
  _train_on_meshes(pathlib.Path(sys.argv[1]), sys.argv[2:])
