"""TFDS builder `fakeavceleb`: FakeAVCeleb as Yu et al. split it, from their manifest lists.

Splits: train (every FAV_train*.csv) and test (every FAV_test*.csv: the per-category lists, the
combined FAV_test.csv, or both, merged by ID). The authors' lists use two path prefixes
(/projects/yucai2/data/FakeAVCeleb1.0 in the per-category lists, /data5/caiyu/data/FakeAVCeleb1.0
in FAV_test.csv); give a path_prefix rewrite for each one present.

A manifest row is FakeAVCeleb's (in any manifest, the generic av_manifest's too) when its ID is
'<identity>+<clip>+<A?V?>' or its video lies in one of the category directories such as REAL_A
or FAKE_FSGAN_D_W2L. Its method is the manipulation: real, rtvc, wav2lip, faceswap, fsgan, or
for the FakeVideo-FakeAudio face swaps faceswap_wav2lip / fsgan_wav2lip (FakeAVCeleb's
'faceswap-wav2lip' and 'fsgan-wav2lip', lip-synced to RTVC audio).
"""

import pathlib
import re

from data_pipelines.building import manifest_builder, manifests, sources
from data_pipelines.building.corpora import registry

# FakeAVCeleb's arranged category directories: (manipulation, category).
_DIRECTORIES = {
  "real_a": ("real", "RealVideo-RealAudio"),
  "fake_rtvc_b": ("rtvc", "RealVideo-FakeAudio"),
  "fake_w2l_c": ("wav2lip", "FakeVideo-RealAudio"),
  "fake_faceswap_c": ("faceswap", "FakeVideo-RealAudio"),
  "fake_fsgan_c": ("fsgan", "FakeVideo-RealAudio"),
  "org_fake_w2l_d": ("wav2lip", "FakeVideo-FakeAudio"),
  "fake_w2l_d": ("wav2lip", "FakeVideo-FakeAudio"),
  "fake_faceswap_d_w2l": ("faceswap_wav2lip", "FakeVideo-FakeAudio"),
  "fake_fsgan_d_w2l": ("fsgan_wav2lip", "FakeVideo-FakeAudio"),
}
# The last part of a FakeAVCeleb ID: A(udio) and V(ideo), each R(eal) or F(ake).
_ID = re.compile(r"\+A([RF])V([RF])$")
# VoxCeleb2 identities inside a FakeAVCeleb clip name; two mean a face swap before lip sync.
_VOXCELEB_IDENTITY = re.compile(r"(?:^|_)id\d{5}_")


def find_manifests(manifest_dir) -> dict[str, list[str]]:
  """FakeAVCeleb's splits: train from FAV_train*.csv, test from FAV_test*.csv (sorted by name).

  Raises:
    FileNotFoundError: the directory holds neither.
  """
  directory = sources.manifest_directory(manifest_dir)
  splits = {
    split: sorted(str(p) for p in directory.glob(f"FAV_{split}*.csv"))
    for split in ("train", "test")
  }
  splits = {split: paths for split, paths in splits.items() if paths}
  if not splits:
    raise FileNotFoundError(f"{directory}: no FAV_train*.csv or FAV_test*.csv manifest")
  return splits


@registry.builder
class FakeAVCeleb(manifest_builder.ListsBuilder):
  """FakeAVCeleb (Khalid et al., 2021) in the train / test split of Yu et al. (ICME 2024)."""

  name = "fakeavceleb"
  LISTS = "FAV_*.csv"
  find_manifests = staticmethod(find_manifests)


@manifests.corpus_rows(FakeAVCeleb.name)
def method_of_row(
  clip_id: str, video: pathlib.PurePath, labels: dict[str, int], category: str, where: str
) -> str | None:
  """The manipulation of a FakeAVCeleb row; None for a row without FakeAVCeleb's marks.

  Raises:
    manifests.ManifestError: the ID's A?V?, the category directory and the labels disagree.
  """
  directories = [d for d in video.parts[:-1] if d.lower() in _DIRECTORIES]
  id_kind = _ID.search(clip_id)
  if not (directories or id_kind):
    return None
  if id_kind:
    id_category = manifests.category_of(id_kind.group(1) == "F", id_kind.group(2) == "F")
    if id_category != category:
      raise manifests.ManifestError(
        f"{where}: ID {clip_id!r} says {id_category}, the audio and video labels say {category}"
      )
  clip_name = clip_id.split("+")[1] if clip_id.count("+") == 2 else video.stem
  method = _method_from_name(clip_name, category)
  if directories:
    directory_method, directory_category = _DIRECTORIES[directories[-1].lower()]
    if (directory_method, directory_category) != (method, category):
      raise manifests.ManifestError(
        f"{where}: directory {directories[-1]!r} means {directory_method} "
        f"({directory_category}), the clip name and labels mean {method} ({category})"
      )
  return method


def _method_from_name(clip_name: str, category: str) -> str:
  """FakeAVCeleb's manipulation from a clip's file name and category.

  Fakes are named after their sources: '<clip>_<identity>_<youtube>[_faceswap][_<identity>_
  <youtube>][_wavtolip]', RTVC audio fakes '<clip>_fake'. FSGAN leaves no token, and lip-synced
  FSGAN swaps carry two identities where plain Wav2Lip carries one.
  """
  name = clip_name.lower()
  faceswap, wav2lip = "faceswap" in name, "wavtolip" in name
  if category == "RealVideo-RealAudio":
    return "real"
  if category == "RealVideo-FakeAudio":
    return "rtvc"
  if category == "FakeVideo-RealAudio":
    return "faceswap" if faceswap else "wav2lip" if wav2lip else "fsgan"
  if faceswap:
    return "faceswap_wav2lip"
  return "fsgan_wav2lip" if len(_VOXCELEB_IDENTITY.findall(name)) >= 2 else "wav2lip"
