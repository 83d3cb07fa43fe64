"""TFDS builder `cmdfd`: the cross-manipulation test lists of Yu et al., one split per list.

Each list (W2L.csv, MakeItTalk.csv, Audio2Head.csv, VideoReTalk.csv and their _Self variants)
holds the same 1000 real clips (origin) and one generator's fakes; the authors report each list
on its own. Splits rather than builder configs: one build reads the lists together and extracts
the shared real clips once, and a reader still picks lists by name (`split='wav2lip'`; a
concatenation such as 'wav2lip+audio2head' holds each real clip once per list). Lists missing
from the manifest directory are left out.
"""

from data_pipelines.building import manifest_builder, sources


class CMDFD(manifest_builder.ManifestBuilder):
  """CMDFD: real VoxCeleb2 clips and talking-head fakes; splits wav2lip, makeittalk, audio2head,
  videoretalk and their *_self variants (a speaker driven by their own audio)."""

  name = "cmdfd"

  def __init__(self, *, manifest_dir=None, **kwargs):
    """`manifest_dir` holds the authors' lists (needed to prepare); see ManifestBuilder."""
    super().__init__(**kwargs)
    self._manifest_dir = manifest_dir

  def split_manifests(self) -> dict[str, list[str]]:
    if self._manifest_dir is None:
      raise ValueError(f"{self.name}: preparing needs manifest_dir, the directory of W2L.csv, ...")
    return sources.cmdfd_manifests(self._manifest_dir)
