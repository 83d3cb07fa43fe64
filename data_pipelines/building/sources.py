"""Which manifest rows make up each split: reading a split's CSVs and merging them.

A split is built from one or more manifest CSVs (data_pipelines.building.manifests format). Rows
are merged by ID in file order: an ID already seen in the split is dropped when its row is
identical after path rewriting (FakeAVCeleb's FAV_test.csv repeats the FAV_test_*.csv rows under
another path prefix), and is an error when it differs, since the two files would then disagree
about the clip.
"""

import csv
import dataclasses
import pathlib
import re
from typing import Mapping, Sequence

from data_pipelines.building import manifests

# Split names become part of shard file names ('<dataset>-<split>.array_record-...').
_SPLIT_NAME = re.compile(r"^[a-z0-9_]+$")


@dataclasses.dataclass(frozen=True)
class ClipSource:
  """One manifest row and where it was read: the CSV file and its 1-based line."""

  row: manifests.ManifestRow
  manifest: str
  line: int

  def reject_record(self, dataset: str, split: str, reason: str) -> dict:
    """The rejects.jsonl entry saying why this clip is missing from `split` of `dataset`."""
    return {
      "dataset": dataset,
      "split": split,
      "id": self.row.id,
      "manifest": self.manifest,
      "line": self.line,
      "reason": reason,
    }


def check_split_name(name: str) -> str:
  """Returns `name` when it can name a TFDS split here: [a-z0-9_]+, not 'all'."""
  if not _SPLIT_NAME.match(name) or name == "all":
    raise ValueError(f"split name {name!r} must match [a-z0-9_]+ and not be 'all'")
  return name


def split_name_of(csv_path) -> str:
  """A split name from a CSV's file name: 'FAV_test.csv' -> 'fav_test'."""
  stem = re.sub(r"[^a-z0-9]+", "_", pathlib.Path(csv_path).stem.lower()).strip("_")
  return check_split_name(stem or "manifest")


def parse_manifest_specs(specs: Sequence[str]) -> dict[str, list[str]]:
  """Groups '[SPLIT=]CSV' specs by split; without 'SPLIT=' the split is named after the file.

  Text before the first '=' is taken as a split name only when it looks like one, so a path that
  contains '=' still works as a bare CSV path.
  """
  splits: dict[str, list[str]] = {}
  for spec in specs:
    split, sep, path = spec.partition("=")
    if not sep or not _SPLIT_NAME.match(split):
      split, path = split_name_of(spec), spec
    splits.setdefault(check_split_name(split), []).append(path)
  if not splits:
    raise ValueError("no manifest given")
  return splits


def read_splits(
  split_manifests: Mapping[str, Sequence[str]], *, path_prefix: Sequence[str] = ()
) -> dict[str, list[ClipSource]]:
  """Reads each split's manifests into its clips, merged by ID (see the module docstring).

  Args:
    split_manifests: split name -> CSV paths.
    path_prefix: 'OLD=NEW' rewrites of media paths (manifests.read_manifest).

  Returns:
    Split name -> clips in file order.

  Raises:
    manifests.ManifestError: a malformed manifest, or one ID with different rows in one split.
  """
  splits = {}
  for split, paths in split_manifests.items():
    check_split_name(split)
    by_id: dict[str, ClipSource] = {}
    for path in paths:
      # read_manifest first: it names the file and line of an encoding or format error.
      rows = manifests.read_manifest(path, path_prefix=path_prefix)
      lines = _id_lines(path)
      for row in rows:
        source = ClipSource(row, str(path), lines[row.id])
        earlier = by_id.setdefault(row.id, source)
        if earlier.row != row:
          raise manifests.ManifestError(
            f"{path}:{source.line}: ID {row.id!r} is also on {earlier.manifest}:{earlier.line} "
            f"with other values ({_differences(earlier.row, row)}); if only the path prefixes "
            "differ, give a --path_prefix for each of them"
          )
    splits[split] = list(by_id.values())
  return splits


def manifest_directory(path) -> pathlib.Path:
  """`path` as a directory of manifest lists (a corpus module looks for its lists there).

  Raises:
    FileNotFoundError: there is no such directory.
  """
  directory = pathlib.Path(path)
  if not directory.is_dir():
    raise FileNotFoundError(f"{directory}: manifest directory not found")
  return directory


def _id_lines(csv_path) -> dict[str, int]:
  """The line of each ID in a manifest (manifests.ManifestRow does not keep it)."""
  with open(csv_path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    header = [name.strip().lower() for name in next(reader, [])]
    id_column = manifests.COLUMNS["id"].lower()
    if id_column not in header:
      return {}  # read_manifest reports the missing column
    column = header.index(id_column)
    return {fields[column].strip(): reader.line_num for fields in reader if len(fields) > column}


def _differences(first: manifests.ManifestRow, second: manifests.ManifestRow) -> str:
  pairs = (
    (field.name, getattr(first, field.name), getattr(second, field.name))
    for field in dataclasses.fields(first)
  )
  return "; ".join(f"{name}: {a!r} vs {b!r}" for name, a, b in pairs if a != b)
