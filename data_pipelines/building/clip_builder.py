"""The TFDS builder base every corpus shares: the schema's features, written as ArrayRecord.

Subclasses implement `_split_generators` / `_generate_examples` yielding `(key, example)` pairs
whose examples pass `schema.validate_example`. Build with
`Builder(data_dir=DIR, file_format='array_record').download_and_prepare(...)` and read with
`data_pipelines.reading.loader` (Grain) or `builder.as_data_source()[split]`.
"""

import tensorflow_datasets as tfds
from absl import logging

from data_pipelines import schema


class _UnhostedDatasetInfo(tfds.core.DatasetInfo):
  """The DatasetInfo of a dataset TFDS does not host: nothing to fetch from TFDS's bucket.

  TFDS's own initialize_from_bucket (run for every builder whose dataset is not built yet, hence
  once per build) first makes a temporary directory for the bucket's files and never deletes it,
  even with GCS access off (its default): each build would leave an empty tmp*tfds in $TMPDIR.
  """

  def initialize_from_bucket(self) -> None:
    pass


class ClipBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Abstract: one example per clip, in the shared schema."""

  def dataset_info_from_configs(self, **kwargs) -> tfds.core.DatasetInfo:
    # TFDS's, returning an _UnhostedDatasetInfo.
    metadata = self.get_metadata()
    if metadata.description:
      kwargs["description"] = metadata.description
    if metadata.citation:
      kwargs["citation"] = metadata.citation
    return _UnhostedDatasetInfo(builder=self, **kwargs)

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      features=schema.tfds_features(),
      description=self.__doc__,
    )

  # TFDS prints these in bold to stdout, sizes "Unknown" for corpora it does not download: avcd
  # logs its own lines instead (and its own progress, not TFDS's bars, which flood a log file).
  def _log_download_bytes(self) -> None:
    logging.info("preparing %s in %s", self.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info("prepared %s in %s", self.name, self.data_dir)
