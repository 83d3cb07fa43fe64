"""TFDS builder `av_manifest`: any manifest CSVs in the reference's format, splits as given."""

from typing import Mapping, Sequence

from data_pipelines.building import manifest_builder
from data_pipelines.building.corpora import registry


@registry.builder
class AVManifest(manifest_builder.ManifestBuilder):
  """Clips listed in manifest CSVs (data_pipelines.building.manifests format)."""

  name = "av_manifest"

  def __init__(self, *, manifests: Mapping[str, Sequence[str]] | None = None, **kwargs):
    """`manifests` maps split names to CSV paths (needed to prepare); see ManifestBuilder.

    sources.parse_manifest_specs turns '[SPLIT=]CSV' command-line values into this mapping.
    """
    super().__init__(**kwargs)
    self._manifests = {split: list(paths) for split, paths in (manifests or {}).items()}

  def split_manifests(self) -> dict[str, list[str]]:
    if not self._manifests:
      raise ValueError(f"{self.name}: preparing needs manifests, split name -> CSV paths")
    return self._manifests
