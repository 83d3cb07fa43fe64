"""Making sure a config's corpus is prepared before a job reads it.

Real corpora are prepared beforehand with `avcd prepare`; the built-in synthetic corpus
(`data.builder='synthetic_av'`) is generated here on first use, by process 0 while the others wait,
into `data.data_dir` (default WORKDIR/data). The config returned names the exact builder config
(`synthetic_av/<spec>`) so loaders find it; it is the config a run records and checkpoints.
"""

import pathlib

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

SYNTHETIC = "synthetic_av"


def resolve_corpus(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path
) -> ml_collections.ConfigDict:
  """A locked copy of `config` as `prepare_corpus` returns it, without preparing anything:
  `data.data_dir` defaulted to WORKDIR/data and a synthetic builder named by its exact config (a
  resumed run compares it with its checkpoint's config before any work)."""
  resolved = ml_collections.ConfigDict(config.to_dict())
  data = resolved.data
  if not data.data_dir:
    data.data_dir = str(pathlib.Path(workdir) / "data")
  if data.builder.split("/")[0] == SYNTHETIC:
    from data_pipelines.building.synthetic import builder, generator  # pylint: disable=g-import-not-at-top

    if data.synthetic is None:
      raise ValueError(
        "data.builder='synthetic_av' needs data.synthetic (a SyntheticSpec's fields)"
      )
    spec = generator.SyntheticSpec(**data.synthetic.to_dict())
    data.builder = f"{SYNTHETIC}/{builder.config_name(spec)}"
  resolved.lock()
  return resolved


def prepare_corpus(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path
) -> ml_collections.ConfigDict:
  """A locked copy of `config` whose data section names a prepared corpus.

  `data.data_dir` defaults to WORKDIR/data; a synthetic corpus is generated there when absent
  and `data.builder` becomes its exact builder config. `config` itself is not changed.
  """
  resolved = resolve_corpus(config, workdir)
  data = resolved.data
  if data.builder.split("/")[0] == SYNTHETIC:
    from data_pipelines.building.synthetic import builder, generator  # pylint: disable=g-import-not-at-top

    spec = generator.SyntheticSpec(**data.synthetic.to_dict())
    if jax.process_index() == 0:
      logging.info("preparing the synthetic corpus in %s", data.data_dir)
      builder.build(spec, data.data_dir)
    multihost_utils.sync_global_devices("synthetic corpus ready")
  return resolved
