"""Making sure a config's corpus is prepared before a job reads it.

Real corpora are prepared beforehand with `avcd prepare`; the built-in synthetic corpus
(`data.builder='synthetic_av'`) is generated here on first use, by process 0 while the others wait,
into `data.data_dir` (default WORKDIR/data). The config's `data.builder` then names the exact
builder config (`synthetic_av/<spec>`) so loaders find it.
"""

import pathlib

import jax
import ml_collections
from absl import logging
from jax.experimental import multihost_utils

SYNTHETIC = "synthetic_av"


def prepare_corpus(data_cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> None:
  """Resolves `data_cfg.data_dir` / `data_cfg.builder` in place, generating synthetic data."""
  if not data_cfg.data_dir:
    data_cfg.data_dir = str(pathlib.Path(workdir) / "data")
  if data_cfg.builder.split("/")[0] != SYNTHETIC:
    return
  from data_pipelines.synthetic import builder, generator  # pylint: disable=g-import-not-at-top
  if data_cfg.synthetic is None:
    raise ValueError("data.builder='synthetic_av' needs data.synthetic (a SyntheticSpec's fields)")
  spec = generator.SyntheticSpec(**data_cfg.synthetic.to_dict())
  if jax.process_index() == 0:
    logging.info("preparing the synthetic corpus in %s", data_cfg.data_dir)
    builder.build(spec, data_cfg.data_dir)
  multihost_utils.sync_global_devices("synthetic corpus ready")
  data_cfg.builder = f"{SYNTHETIC}/{builder.config_name(spec)}"
