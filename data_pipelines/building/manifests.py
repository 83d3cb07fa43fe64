"""The reference's CSV manifests: one clip per row, with labels, lengths and media paths.

Header (spelled as in the authors' files; matched case-insensitively, in any order):
ID_Name, Audio_Path, Video_Path, ENtire_Label, Audio_Label, Video_Label, Identi_Label, Sync_Label,
Frame_Len, Audio_Len, FPS, AudioSamRate.

Besides the columns, each row gets the corpus it comes from, its generation method and its
FakeAVCeleb-style category, derived from the ID and the paths and cross-checked with the labels:

- FakeAVCeleb: IDs '<identity>+<clip>+<A?V?>' and category directories such as REAL_A or
  FAKE_FSGAN_D_W2L. method is the manipulation: real, rtvc, wav2lip, faceswap, fsgan, or for
  the FakeVideo-FakeAudio face swaps faceswap_wav2lip / fsgan_wav2lip (FakeAVCeleb's
  'faceswap-wav2lip' and 'fsgan-wav2lip', lip-synced to RTVC audio).
- CMDFD: IDs '<method folder>+<clip>' with folders origin (real), wav2lip, makeittalk, audio2head,
  videoretalk, each also with '_Self'; method is the folder in lower case, origin giving 'real'.
- Anything else: corpus 'other', method 'real' or 'fake' from the label.

The category is RealVideo-RealAudio, RealVideo-FakeAudio, FakeVideo-RealAudio or
FakeVideo-FakeAudio from the audio and video labels (every CMDFD fake is FakeVideo-RealAudio).

ManifestRow is also the clip record of corpora that list their clips in their own metadata
(data_pipelines/building/metadata_json.py: LAV-DF, AV-Deepfake1M). Those are partially forged:
their rows carry FakeSegments, from which clips.extract_clip derives the frame labels. CSV rows
have none, so their frames get their clip's labels (data_pipelines.schema).
"""

import csv
import dataclasses
import io
import math
import pathlib
import re
from typing import Sequence

from data_pipelines import schema

COLUMNS = {
  "id": "ID_Name",
  "audio_path": "Audio_Path",
  "video_path": "Video_Path",
  "label": "ENtire_Label",
  "audio_label": "Audio_Label",
  "video_label": "Video_Label",
  "identity_label": "Identi_Label",
  "sync_label": "Sync_Label",
  "num_frames": "Frame_Len",
  "audio_len": "Audio_Len",
  "fps": "FPS",
  "sample_rate": "AudioSamRate",
}

FAKEAVCELEB, CMDFD, OTHER = "fakeavceleb", "cmdfd", "other"

# FakeAVCeleb's arranged category directories: (manipulation, category).
_FAKEAVCELEB_DIRECTORIES = {
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
_FAKEAVCELEB_ID = re.compile(r"\+A([RF])V([RF])$")
# VoxCeleb2 identities inside a FakeAVCeleb clip name; two mean a face swap before lip sync.
_VOXCELEB_IDENTITY = re.compile(r"(?:^|_)id\d{5}_")

_CMDFD_FOLDERS = {"origin": "real"} | {
  f"{name}{suffix}": f"{name}{suffix}"
  for name in ("wav2lip", "makeittalk", "audio2head", "videoretalk")
  for suffix in ("", "_self")
}


class ManifestError(ValueError):
  """A malformed manifest (a CSV, or a corpus's metadata JSON); the message names file and line."""


@dataclasses.dataclass(frozen=True)
class FakeSegments:
  """Where a partially forged clip is fake: [start, end) spans in seconds from its first frame.

  `clip` is where the clip is forged, `audio` and `video` where each stream is (empty for a stream
  that was not forged). Each belongs to one clip label: a label is 1 exactly when its spans are
  not empty (clips.extract_clip rejects a row where they disagree).
  """

  clip: tuple[tuple[float, float], ...]
  audio: tuple[tuple[float, float], ...]
  video: tuple[tuple[float, float], ...]

  def by_clip_label(self) -> dict[str, tuple[tuple[float, float], ...]]:
    """The spans of each clip label field (schema.FRAME_LABEL_FIELDS's values)."""
    return {"label": self.clip, "audio_label": self.audio, "video_label": self.video}


@dataclasses.dataclass(frozen=True)
class ManifestRow:
  """One clip of a manifest.

  Labels are 0 or 1 as in the CSV: label, audio_label and video_label are 1 for fake;
  identity_label and sync_label are 1 where identity or lip sync is consistent (real clips have 1).
  """

  id: str
  audio_path: str | None  # None: the CSV names no audio file; use the video's own audio track.
  video_path: str
  label: int
  audio_label: int
  video_label: int
  identity_label: int
  sync_label: int
  num_frames: int
  audio_len: int  # samples at sample_rate
  fps: float
  sample_rate: int
  dataset: str
  method: str
  category: str
  # None: the corpus labels whole clips only (every CSV manifest).
  fake_segments: FakeSegments | None = None


def parse_path_prefixes(specs: Sequence[str]) -> tuple[tuple[str, str], ...]:
  """Parses 'OLD=NEW' prefix rewrites (split at the first '='; OLD must not be empty)."""
  rules = []
  for spec in specs:
    old, sep, new = spec.partition("=")
    if not sep or not old:
      raise ValueError(f"path prefix {spec!r} is not of the form OLD=NEW")
    rules.append((old, new))
  return tuple(rules)


def rewrite_path(path: str, prefixes: Sequence[tuple[str, str]]) -> str:
  """Replaces the first matching OLD prefix of `path` by its NEW (plain string prefixes)."""
  for old, new in prefixes:
    if path.startswith(old):
      return new + path[len(old) :]
  return path


def category_of(audio_label: int, video_label: int) -> str:
  """FakeAVCeleb's category name for a clip's audio and video labels (1 = fake)."""
  video = "Fake" if video_label else "Real"
  audio = "Fake" if audio_label else "Real"
  return f"{video}Video-{audio}Audio"


def read_manifest(csv_path, *, path_prefix: Sequence[str] = ()) -> list[ManifestRow]:
  """Reads a manifest CSV into typed rows.

  Args:
    csv_path: the CSV file.
    path_prefix: 'OLD=NEW' rewrites applied to the audio and video paths, first match wins.
      Paths that are still relative afterwards are taken relative to the CSV's directory.

  Returns:
    The rows in file order.

  Raises:
    ManifestError: naming the file and line, for a missing column, no row, a row with the wrong
      number of fields, a value that does not parse, labels outside {0, 1}, a repeated ID, or an
      ID, path and labels that contradict each other.
  """
  csv_path = pathlib.Path(csv_path)
  prefixes = parse_path_prefixes(path_prefix)
  rows, first_line = [], {}
  if csv_path.is_dir():
    raise ManifestError(f"{csv_path}: is a directory, not a manifest CSV")
  if not csv_path.is_file():
    raise ManifestError(f"{csv_path}: no such manifest CSV")
  data = csv_path.read_bytes()
  try:
    text = data.decode("utf-8-sig")
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b"\n") + 1
    raise ManifestError(
      f"{csv_path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}); save the manifest as UTF-8"
    ) from None
  with io.StringIO(text, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None:
      raise ManifestError(f"{csv_path}: empty file, expected a header")
    positions = _column_positions(header, csv_path)
    for fields in reader:
      where = f"{csv_path}:{reader.line_num}"
      if not any(field.strip() for field in fields):
        continue
      if len(fields) != len(header):
        raise ManifestError(f"{where}: {len(fields)} fields, the header has {len(header)}")
      values = {name: fields[i].strip() for name, i in positions.items()}
      row = _parse_row(values, where, csv_path.parent, prefixes)
      if row.id in first_line:
        raise ManifestError(f"{where}: ID {row.id!r} already on line {first_line[row.id]}")
      first_line[row.id] = reader.line_num
      rows.append(row)
  if not rows:
    raise ManifestError(f"{csv_path}: the manifest has no rows, only its header")
  return rows


def _column_positions(header: list[str], csv_path: pathlib.Path) -> dict[str, int]:
  by_name = {name.strip().lower(): i for i, name in enumerate(header)}
  missing = [column for column in COLUMNS.values() if column.lower() not in by_name]
  if missing:
    raise ManifestError(f"{csv_path}:1: missing columns {missing}; header is {header}")
  return {field: by_name[column.lower()] for field, column in COLUMNS.items()}


def _parse_row(
  values: dict[str, str], where: str, base: pathlib.Path, prefixes: Sequence[tuple[str, str]]
) -> ManifestRow:
  """Types one row's values and derives its corpus, method and category."""
  if not values["id"]:
    raise ManifestError(f"{where}: empty {COLUMNS['id']}")
  if not values["video_path"]:
    raise ManifestError(f"{where}: empty {COLUMNS['video_path']}")

  def number(field: str, *, integral: bool, minimum: float) -> float:
    text = values[field]
    try:
      value = float(text)
    except ValueError:
      value = math.nan
    if not math.isfinite(value) or value < minimum or (integral and not value.is_integer()):
      kind = "an integer" if integral else "a number"
      raise ManifestError(f"{where}: {COLUMNS[field]}={text!r} is not {kind} >= {minimum:g}")
    return value

  labels = {}
  for field in schema.LABEL_FIELDS:
    if values[field] not in ("0", "1", "0.0", "1.0"):
      raise ManifestError(f"{where}: {COLUMNS[field]}={values[field]!r} is not 0 or 1")
    labels[field] = int(float(values[field]))
  fps = number("fps", integral=False, minimum=0)
  if fps == 0:
    raise ManifestError(f"{where}: {COLUMNS['fps']}={values['fps']!r} must be positive")
  audio_path = _resolve(values["audio_path"], base, prefixes) if values["audio_path"] else None
  video_path = _resolve(values["video_path"], base, prefixes)
  dataset, method, category = _derive_kind(values["id"], video_path, labels, where)
  return ManifestRow(
    id=values["id"],
    audio_path=audio_path,
    video_path=video_path,
    **labels,
    num_frames=int(number("num_frames", integral=True, minimum=1)),
    audio_len=int(number("audio_len", integral=True, minimum=0)),
    fps=fps,
    sample_rate=int(number("sample_rate", integral=True, minimum=1)),
    dataset=dataset,
    method=method,
    category=category,
  )


def _resolve(path: str, base: pathlib.Path, prefixes: Sequence[tuple[str, str]]) -> str:
  path = rewrite_path(path, prefixes)
  return path if pathlib.PurePath(path).is_absolute() else str(base / path)


def _derive_kind(
  clip_id: str, video_path: str, labels: dict[str, int], where: str
) -> tuple[str, str, str]:
  """(dataset, method, category) of one row; raises ManifestError on contradictions."""
  category = category_of(labels["audio_label"], labels["video_label"])
  video = pathlib.PurePath(video_path)
  directories = [d for d in video.parts[:-1] if d.lower() in _FAKEAVCELEB_DIRECTORIES]
  id_kind = _FAKEAVCELEB_ID.search(clip_id)
  if directories or id_kind:
    if id_kind:
      id_category = category_of(id_kind.group(1) == "F", id_kind.group(2) == "F")
      if id_category != category:
        raise ManifestError(
          f"{where}: ID {clip_id!r} says {id_category}, the audio and video labels say {category}"
        )
    clip_name = clip_id.split("+")[1] if clip_id.count("+") == 2 else video.stem
    method = _fakeavceleb_method_from_name(clip_name, category)
    if directories:
      directory_method, directory_category = _FAKEAVCELEB_DIRECTORIES[directories[-1].lower()]
      if (directory_method, directory_category) != (method, category):
        raise ManifestError(
          f"{where}: directory {directories[-1]!r} means {directory_method} "
          f"({directory_category}), the clip name and labels mean {method} ({category})"
        )
    return FAKEAVCELEB, method, category

  folder = clip_id.split("+")[0].lower() if "+" in clip_id else video.parent.name.lower()
  if folder in _CMDFD_FOLDERS:
    method = _CMDFD_FOLDERS[folder]
    video_folder = video.parent.name.lower()
    if video_folder in _CMDFD_FOLDERS and video_folder != folder:
      raise ManifestError(
        f"{where}: ID {clip_id!r} names method folder {folder!r}, the video "
        f"is in {video.parent.name!r}"
      )
    if (method == "real") != (labels["label"] == 0):
      raise ManifestError(
        f"{where}: method {method} contradicts {COLUMNS['label']}={labels['label']}"
      )
    return CMDFD, method, category

  return OTHER, "fake" if labels["label"] else "real", category


def _fakeavceleb_method_from_name(clip_name: str, category: str) -> str:
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
