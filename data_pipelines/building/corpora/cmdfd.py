"""TFDS builder `cmdfd`: the cross-manipulation test lists of Yu et al., one split per list.

Each list (W2L.csv, MakeItTalk.csv, Audio2Head.csv, VideoReTalk.csv and their _Self variants)
holds the same 1000 real clips (origin) and one generator's fakes; the authors report each list
on its own. Splits rather than builder configs: one build reads the lists together and extracts
the shared real clips once, and a reader still picks lists by name (`split='wav2lip'`; a
concatenation such as 'wav2lip+audio2head' holds each real clip once per list). Lists missing
from the manifest directory are left out.

A manifest row is CMDFD's (in any manifest, the generic av_manifest's too) when its ID is
'<method folder>+<clip>', or, for an ID without '+', its video lies in a method folder: origin,
wav2lip, makeittalk, audio2head or videoretalk, each also with '_Self'. Its method is the folder
in lower case, origin giving 'real'; every CMDFD fake is FakeVideo-RealAudio.
"""

import pathlib

from data_pipelines.building import manifest_builder, manifests, sources
from data_pipelines.building.corpora import registry

# The authors' lists (file stem, lower case) and the split each becomes.
SPLITS = {
  f"{stem}{suffix}": f"{method}{suffix}"
  for stem, method in (
    ("w2l", "wav2lip"),
    ("makeittalk", "makeittalk"),
    ("audio2head", "audio2head"),
    ("videoretalk", "videoretalk"),
  )
  for suffix in ("", "_self")
}
# The method folders (lower case) and the method of their clips.
_FOLDERS = {"origin": "real"} | {
  f"{name}{suffix}": f"{name}{suffix}"
  for name in ("wav2lip", "makeittalk", "audio2head", "videoretalk")
  for suffix in ("", "_self")
}


def find_manifests(manifest_dir) -> dict[str, list[str]]:
  """CMDFD's splits, one per method list present: W2L.csv -> wav2lip, W2L_Self.csv -> wav2lip_self.

  Each list holds the real clips (origin) and one method's fakes, as the authors evaluate them.

  Raises:
    FileNotFoundError: the directory holds none of the lists (SPLITS).
  """
  directory = sources.manifest_directory(manifest_dir)
  splits = {
    SPLITS[p.stem.lower()]: [str(p)]
    for p in sorted(directory.glob("*.csv"))
    if p.stem.lower() in SPLITS
  }
  if not splits:
    raise FileNotFoundError(
      f"{directory}: none of the CMDFD lists W2L.csv, W2L_Self.csv, "
      "MakeItTalk.csv, Audio2Head.csv, VideoReTalk.csv (or _Self)"
    )
  return {split: splits[split] for split in sorted(splits)}


@registry.builder
class CMDFD(manifest_builder.ListsBuilder):
  """CMDFD: real VoxCeleb2 clips and talking-head fakes; splits wav2lip, makeittalk, audio2head,
  videoretalk and their *_self variants (a speaker driven by their own audio)."""

  name = "cmdfd"
  LISTS = "W2L.csv, ..."
  find_manifests = staticmethod(find_manifests)


@manifests.corpus_rows(CMDFD.name)
def method_of_row(
  clip_id: str, video: pathlib.PurePath, labels: dict[str, int], category: str, where: str
) -> str | None:
  """The method of a CMDFD row; None for a row that names no method folder.

  Raises:
    manifests.ManifestError: the ID and the video name different method folders, or the method
      and the clip label disagree.
  """
  del category  # the labels' category stands: CMDFD's lists label each stream
  folder = clip_id.split("+")[0].lower() if "+" in clip_id else video.parent.name.lower()
  if folder not in _FOLDERS:
    return None
  method = _FOLDERS[folder]
  video_folder = video.parent.name.lower()
  if video_folder in _FOLDERS and video_folder != folder:
    raise manifests.ManifestError(
      f"{where}: ID {clip_id!r} names method folder {folder!r}, the video "
      f"is in {video.parent.name!r}"
    )
  if (method == "real") != (labels["label"] == 0):
    raise manifests.ManifestError(
      f"{where}: method {method} contradicts {manifests.COLUMNS['label']}={labels['label']}"
    )
  return method
