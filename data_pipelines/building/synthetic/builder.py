"""TFDS builder `synthetic_av`: the synthetic corpus of one SyntheticSpec, written as ArrayRecord.

The builder config's name spells out every field of the spec, so different specs never share
files. `build(spec, data_dir)` generates once and reuses a complete earlier build (TFDS writes into
a temporary directory and renames it only when every split is written). Neither building nor
reading imports TensorFlow.

Any change to what the generator draws for a given spec must bump SyntheticAV.VERSION, or older
builds of that spec would be reused.
"""

import dataclasses
from typing import Iterator

import tensorflow_datasets as tfds

from data_pipelines import progress, schema
from data_pipelines.building import clip_builder
from data_pipelines.building.synthetic import generator

# Fields added after corpora were first built: named only when they differ from their default,
# so that the specs of earlier corpora keep their names (and their builds stay reusable).
_LATER_FIELDS = ("version", "held_out", "segment_frames")


def config_name(spec: generator.SyntheticSpec) -> str:
  """Every field of the spec, e.g. 'seed0-train_clips240-...-methodslipsync.desync-...'."""
  parts = []
  for field in dataclasses.fields(spec):
    value = getattr(spec, field.name)
    if field.name in _LATER_FIELDS and value == field.default:
      continue
    text = ".".join(map(str, value)) if isinstance(value, tuple) else repr(value)
    parts.append(f"{field.name}{text}")
  return "-".join(parts)


_PROGRESS_INTERVAL_S = 15.0


class SyntheticConfig(tfds.core.BuilderConfig):
  """The builder config of one spec."""

  def __init__(self, spec: generator.SyntheticSpec):
    super().__init__(name=config_name(spec), description=repr(spec))
    self.spec = spec


class SyntheticAV(clip_builder.ClipBuilder):
  """Procedural talking clips, real and fake (data_pipelines/building/synthetic/generator.py)."""

  name = "synthetic_av"

  def _info(self) -> tfds.core.DatasetInfo:
    # Unshuffled: record i of a split is clip i, and examples stream to disk (loaders shuffle).
    return self.dataset_info_from_configs(
      features=schema.tfds_features(), description=self.__doc__, disable_shuffling=True
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download
    return {
      split: self._generate_examples(split)
      for split in generator.SPLITS
      if self.builder_config.spec.num_clips(split) > 0
    }

  def _generate_examples(self, split: str) -> Iterator[tuple[str, dict]]:
    spec = self.builder_config.spec
    counter = progress.Progress(
      f"synthetic corpus, {split}", spec.num_clips(split), interval_s=_PROGRESS_INTERVAL_S
    )
    for example in generator.generate_examples(spec, split):
      yield example["id"], example
      counter.step()


def dataset_name(spec: generator.SyntheticSpec) -> str:
  """'synthetic_av/<config name>': what `tfds.builder` (and the config's `data.builder`) takes."""
  return f"{SyntheticAV.name}/{config_name(spec)}"


def build(spec: generator.SyntheticSpec, data_dir: str) -> SyntheticAV:
  """The prepared builder of `spec` under data_dir; splits with no clips are left out."""
  builder = SyntheticAV(config=SyntheticConfig(spec), data_dir=data_dir, file_format="array_record")
  tfds.disable_progress_bar()  # the builder logs its own progress lines
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder
