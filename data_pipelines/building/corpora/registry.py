"""The corpus builders `avcd prepare` builds, by name; each joins when its module is imported.

data_pipelines.building.corpora imports every corpus module, so BUILDERS is complete once that
package is imported (data_pipelines.building.prepare reads it from there).
"""

from data_pipelines.building import manifest_builder

BUILDERS: dict[str, type[manifest_builder.ManifestBuilder]] = {}


def builder(cls: type[manifest_builder.ManifestBuilder]) -> type[manifest_builder.ManifestBuilder]:
  """Class decorator: adds a corpus builder to BUILDERS under its `name` (its TFDS name)."""
  if cls.name in BUILDERS:
    raise ValueError(f"two corpus builders are named {cls.name!r}: {BUILDERS[cls.name]} and {cls}")
  BUILDERS[cls.name] = cls
  return cls
