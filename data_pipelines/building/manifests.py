"""The reference's CSV manifests: one clip per row, with labels, lengths and media paths.

Header (spelled as in the authors' files; matched case-insensitively, in any order):
ID_Name, Audio_Path, Video_Path, ENtire_Label, Audio_Label, Video_Label, Identi_Label, Sync_Label,
Frame_Len, Audio_Len, FPS, AudioSamRate.

Besides the columns, each row gets the corpus it comes from, its generation method and its
FakeAVCeleb-style category: RealVideo-RealAudio, RealVideo-FakeAudio, FakeVideo-RealAudio or
FakeVideo-FakeAudio from the audio and video labels. Which corpus and method, each corpus's module
says from the ID and the paths, cross-checked with the labels (corpus_rows; the modules of
data_pipelines.building.corpora, FakeAVCeleb's and CMDFD's, register their rules when imported).
A row no corpus claims is of corpus 'other', method 'real' or 'fake' from the label.

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
from typing import Callable, Sequence

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

# The corpus of rows that no corpus's rules claim.
OTHER = "other"

# A corpus's rule for manifest rows: (ID, video path, labels by field, category, 'FILE:LINE') ->
# the row's method when the row is the corpus's, else None; it raises ManifestError where the ID,
# the path and the labels contradict each other.
RowRule = Callable[[str, pathlib.PurePath, dict[str, int], str, str], str | None]
# Corpus name -> its rule, in the order registered: a row is the first claimant's.
_ROW_RULES: dict[str, RowRule] = {}


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


def corpus_rows(corpus: str) -> Callable[[RowRule], RowRule]:
  """Decorator: registers a corpus's rule for telling its manifest rows (see RowRule).

  Importing data_pipelines.building.corpora registers every corpus's rule; read_manifest needs
  them, as they say which corpus and method each row is.
  """

  def register(rule: RowRule) -> RowRule:
    if corpus in _ROW_RULES:
      raise ValueError(f"corpus {corpus!r} has registered its manifest rows' rule already")
    _ROW_RULES[corpus] = rule
    return rule

  return register


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
    RuntimeError: no corpus has registered its rule (corpus_rows) yet.
  """
  if not _ROW_RULES:
    raise RuntimeError(
      "no corpus has registered its manifest rows' rule: import data_pipelines.building.corpora "
      "before reading a manifest"
    )
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
  for corpus, rule in _ROW_RULES.items():
    method = rule(clip_id, video, labels, category, where)
    if method is not None:
      return corpus, method, category
  return OTHER, "fake" if labels["label"] else "real", category
