"""TFDS builder `fakeavceleb`: FakeAVCeleb as Yu et al. split it, from their manifest lists.

Splits: train (every FAV_train*.csv) and test (every FAV_test*.csv: the per-category lists, the
combined FAV_test.csv, or both, merged by ID). The authors' lists use two path prefixes
(/projects/yucai2/data/FakeAVCeleb1.0 in the per-category lists, /data5/caiyu/data/FakeAVCeleb1.0
in FAV_test.csv); give a path_prefix rewrite for each one present.
"""

from data_pipelines.building import manifest_builder, sources


class FakeAVCeleb(manifest_builder.ManifestBuilder):
  """FakeAVCeleb (Khalid et al., 2021) in the train / test split of Yu et al. (ICME 2024)."""

  name = "fakeavceleb"

  def __init__(self, *, manifest_dir=None, **kwargs):
    """`manifest_dir` holds the FAV_*.csv lists (needed to prepare); see ManifestBuilder."""
    super().__init__(**kwargs)
    self._manifest_dir = manifest_dir

  def split_manifests(self) -> dict[str, list[str]]:
    if self._manifest_dir is None:
      raise ValueError(f"{self.name}: preparing needs manifest_dir, the directory of FAV_*.csv")
    return sources.fakeavceleb_manifests(self._manifest_dir)
