"""JAX's persistent compilation cache, on for every avcd command and benchmark.

A second start of the same job (a resumed run, an evaluation after training, the next seed of a
study, a rerun of a benchmark) loads its compiled programs from disk instead of compiling them
again; on GPUs the cache also keeps XLA's per-fusion autotuning results
(`jax_persistent_cache_enable_xla_caches`, JAX's default), which are much of a cold compile there.

Location: `--compilation_cache=DIR`, else $AVCD_COMPILATION_CACHE, else
$XDG_CACHE_HOME/avcd/jax (~/.cache/avcd/jax). `--compilation_cache=off` turns it off. Programs
that compile in under half a second are not stored (reading them back would not pay;
$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS changes that). Several
processes may share one directory (JAX writes entries atomically); a multi-host job should point
every host at the same shared directory or at local ones, both work. Entries are keyed by the
program, the jax/jaxlib version and the backend, so a stale entry is never used; delete the
directory to reclaim its space.
"""

import os
import pathlib

from absl import flags, logging

OFF = "off"
MIN_COMPILE_SECONDS = 0.5


def default_directory() -> str:
  if os.environ.get("AVCD_COMPILATION_CACHE"):
    return os.environ["AVCD_COMPILATION_CACHE"]
  base = os.environ.get("XDG_CACHE_HOME") or str(pathlib.Path.home() / ".cache")
  return str(pathlib.Path(base) / "avcd" / "jax")


FLAG = flags.DEFINE_string(
  "compilation_cache",
  None,
  "Directory of JAX's persistent compilation cache (compiled programs and GPU autotuning "
  "results, reused by the next start), or 'off'. Default: $AVCD_COMPILATION_CACHE, else "
  "~/.cache/avcd/jax.",
)


def enable(directory: str | None = None) -> pathlib.Path | None:
  """Points JAX at the cache (`directory`, else the flag, else the default); None when off.

  Call before the first compilation; a directory that cannot be created turns the cache off
  with a warning rather than failing the job.
  """
  import jax  # pylint: disable=g-import-not-at-top

  directory = directory or FLAG.value or default_directory()
  if directory == OFF:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  path = pathlib.Path(directory).expanduser().absolute()
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    logging.warning("compilation cache off: cannot create %s (%s)", path, e.strerror)
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:  # the user's choice wins
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  logging.info("compilation cache: %s", path)
  return path
