"""avcd compile --config=configs/X.py [--mesh=DATAxFSDP] [--devices=N] [--lengths=L,...]

Lowers and compiles the train step for each bucket's batch shape on the target mesh, without
running it, and prints per device what XLA's buffer assignment needs (arguments, outputs, aliased
donations, temporaries, code) and the step's FLOPs.

By default it compiles for this machine's devices (run it on the accelerator the job will use).
--devices=N compiles for N host-CPU devices instead, to plan a mesh larger than this machine, e.g.
a pod's mesh: argument, output and aliased sizes are then exact for any backend (they follow from
the shapes and shardings), temporaries and code are XLA:CPU's and only indicative.
"""

from absl import app, flags
from ml_collections import config_flags

from avcd.commands import arguments

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (configs/*.py).", lock_config=True
)
_MESH = flags.DEFINE_string(
  "mesh", None, "Target mesh DATAxFSDP, e.g. 8x1, 4x2 or -1x2 (default: the config's mesh)."
)
_DEVICES = flags.DEFINE_integer(
  "devices",
  None,
  "Compile for this many CPU devices instead of this machine's devices.",
  lower_bound=1,
)
_LENGTHS = flags.DEFINE_multi_integer(
  "lengths", None, "Bucket lengths to compile (default: every data.bucket_lengths)."
)
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  import jax  # pylint: disable=g-import-not-at-top

  if _DEVICES.value:  # before anything starts a backend
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", _DEVICES.value)
  from avcd import aot, config_checks  # pylint: disable=g-import-not-at-top
  from avcd.core import sharding  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  config_checks.check(config)
  if _MESH.value:
    config.mesh.data, config.mesh.fsdp = arguments.parse_pair(
      "mesh", _MESH.value, "DATAxFSDP", "4x2"
    )
  mesh = sharding.make_mesh(config.mesh)
  reports = aot.compile_buckets(config, mesh, _LENGTHS.value)
  print(aot.format_reports(reports, mesh))


if __name__ == "__main__":
  app.run(main)
