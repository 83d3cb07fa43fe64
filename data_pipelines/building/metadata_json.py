"""Corpora that list their clips in a metadata JSON of their own: LAV-DF and AV-Deepfake1M.

Both are partially forged: a fake is a real VoxCeleb2 clip in which a few words were replaced,
heard (a voice-cloning model speaks them in the speaker's voice), seen (a lip-sync model re-renders
the mouth) or both, and the metadata gives the forged spans in seconds. Each entry becomes a
manifests.ManifestRow with FakeSegments, so that the machinery of the manifest corpora (extraction,
the resumable clip store, rejects.jsonl, Beam) builds these corpora unchanged; only where the
clips come from differs (MetadataBuilder.read_sources).

What the two corpora share, and so is decided here:

- Reading. The file is one JSON array of objects. Each entry keeps the line it starts on, which
  errors and rejects.jsonl give as they give a CSV row's line (`FILE:LINE`). A file that is not
  such an array, or an entry that lacks a field the builder reads or holds a value of the wrong
  type, stops the build with one line naming the file and line (manifests.ManifestError): the
  metadata would be misread, not one clip.
- Clip labels (ManifestRow's conventions). video_label / audio_label: that stream was forged;
  label: either was. identity_label is 1 for every clip: no face or voice belongs to someone
  else (the mouth is re-rendered, the voice cloned from the speaker). sync_label is 1 (lips match
  what is heard) unless exactly one stream was forged: the new words are then heard but not
  mouthed, or mouthed but not heard. Neither corpus records these two; they follow from how the
  authors describe generating the fakes.
- method: real, visual_modified, audio_modified or both_modified (AV-Deepfake1M's `modify_type`
  values, which LAV-DF's two flags map onto), so evaluation can report each; category:
  FakeAVCeleb's, from the video and audio labels.
- Frame labels (clips.extract_clip): `frame_labels` from the corpus's spans of the clip; each
  forged stream's from its own spans where the corpus lists them per stream, else from the clip's;
  a stream that was not forged has none, whatever spans the metadata lists for it.

An entry whose flags and spans disagree (a forged clip without spans, spans in a real one) is
rejected by clips.extract_clip and listed in rejects.jsonl with the other unusable clips.
"""

import abc
import dataclasses
import json
import math
import pathlib
import re
from typing import Sequence

from data_pipelines import schema
from data_pipelines.building import manifest_builder, manifests, sources

Span = tuple[float, float]

# (video_label, audio_label) -> method.
METHODS = {
  (0, 0): "real",
  (1, 0): "visual_modified",
  (0, 1): "audio_modified",
  (1, 1): "both_modified",
}
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One object of a metadata array: its fields, its file and the line where it starts."""

  fields: dict
  path: str
  line: int

  @property
  def where(self) -> str:
    return f"{self.path}:{self.line}"

  def value(self, name: str, types: tuple[type, ...], expected: str):
    """The field `name`, which must be of one of `types`; ManifestError naming it otherwise."""
    if name not in self.fields:
      raise manifests.ManifestError(f"{self.where}: the entry has no field {name!r}")
    value = self.fields[name]
    # JSON's true is a Python int, but neither a count nor a span's end.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
      raise manifests.ManifestError(f"{self.where}: {name}={value!r} is not {expected}")
    return value

  def text(self, name: str) -> str:
    return self.value(name, (str,), "a string")

  def one_of(self, name: str, choices) -> str:
    """A string field that must be one of `choices` (an iterable of strings)."""
    value = self.text(name)
    if value not in choices:
      raise manifests.ManifestError(f"{self.where}: {name}={value!r} is none of {sorted(choices)}")
    return value

  def flag(self, name: str) -> bool:
    return self.value(name, (bool,), "true or false")

  def count(self, name: str, minimum: int) -> int:
    value = self.value(name, (int,), f"an integer >= {minimum}")
    if value < minimum:
      raise manifests.ManifestError(f"{self.where}: {name}={value!r} is not >= {minimum}")
    return value

  def spans(self, name: str) -> tuple[Span, ...]:
    """A list of [start, end] pairs of seconds, start <= end."""
    spans = []
    for span in self.value(name, (list,), "a list of [start, end] pairs"):
      times = span if isinstance(span, list) and len(span) == 2 else []
      numbers = [t for t in times if isinstance(t, int | float) and not isinstance(t, bool)]
      if len(numbers) != 2 or not all(map(math.isfinite, numbers)) or numbers[0] > numbers[1]:
        raise manifests.ManifestError(
          f"{self.where}: {name} holds {span!r}, not a [start, end] pair of seconds"
        )
      spans.append((float(numbers[0]), float(numbers[1])))
    return tuple(spans)


def read_entries(path) -> list[Entry]:
  """The entries of a metadata file: one JSON array of objects.

  Raises:
    FileNotFoundError: no such file.
    manifests.ManifestError: naming the file and line, for text that is not UTF-8, not JSON, not
      an array, or an element that is not an object.
  """
  path = pathlib.Path(path)
  data = path.read_bytes()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data[: e.start].count(b"\n") + 1
    raise manifests.ManifestError(f"{path}:{line}: not UTF-8 text") from None
  del data  # AV-Deepfake1M's train_metadata.json alone is hundreds of megabytes
  # The array is walked element by element (rather than json.loads'd whole) to learn the line of
  # each entry.
  decoder = json.JSONDecoder()
  position = _skip_whitespace(text, 0)
  if not text.startswith("[", position):
    raise manifests.ManifestError(f"{path}: not a JSON array of entries")
  entries, line, counted_to = [], 1, 0
  position = _skip_whitespace(text, position + 1)
  closed = text.startswith("]", position)
  while not closed:
    try:
      fields, end = decoder.raw_decode(text, position)
    except json.JSONDecodeError as e:
      raise manifests.ManifestError(f"{path}:{e.lineno}:{e.colno}: not JSON ({e.msg})") from None
    line += text.count("\n", counted_to, position)
    counted_to = position
    if not isinstance(fields, dict):
      raise manifests.ManifestError(f"{path}:{line}: entry {len(entries) + 1} is not an object")
    entries.append(Entry(fields, str(path), line))
    position = _skip_whitespace(text, end)
    closed = text.startswith("]", position)
    if not closed:
      if not text.startswith(",", position):
        raise manifests.ManifestError(
          f"{path}:{_line_at(text, position)}: ',' or ']' expected after entry {len(entries)}"
        )
      position = _skip_whitespace(text, position + 1)
  after = _skip_whitespace(text, position + 1)  # position is the closing ']'
  if after != len(text):
    raise manifests.ManifestError(f"{path}:{_line_at(text, after)}: text after the array")
  return entries


def clip_source(
  entry: Entry,
  *,
  dataset: str,
  video_path: pathlib.Path,
  video_forged: bool,
  audio_forged: bool,
  spans: tuple[Span, ...],
  video_spans: tuple[Span, ...] = (),
  audio_spans: tuple[Span, ...] = (),
) -> sources.ClipSource:
  """The clip of one entry (see the module docstring for its labels).

  Args:
    entry: its `file` (the clip's id), `video_frames` and `audio_frames` are read.
    dataset: the corpus's name.
    video_path: the clip's mp4; its audio track is the clip's audio.
    video_forged: whether the entry says the video was forged.
    audio_forged: whether it says the audio was.
    spans: where the clip is forged.
    video_spans: where the video is, when the corpus lists it; empty: `spans`.
    audio_spans: the same for the audio.
  """
  video_label, audio_label = int(video_forged), int(audio_forged)
  segments = manifests.FakeSegments(
    clip=spans,
    audio=(audio_spans or spans) if audio_forged else (),
    video=(video_spans or spans) if video_forged else (),
  )
  row = manifests.ManifestRow(
    id=entry.text("file"),
    audio_path=None,
    video_path=str(video_path),
    label=max(video_label, audio_label),
    audio_label=audio_label,
    video_label=video_label,
    identity_label=1,
    sync_label=int(video_label == audio_label),
    num_frames=entry.count("video_frames", minimum=1),
    audio_len=entry.count("audio_frames", minimum=0),
    # Both corpora are 25 fps video with 16 kHz audio (their authors' loaders assume it);
    # extraction reads the streams' own rates.
    fps=schema.FPS,
    sample_rate=schema.SAMPLE_RATE,
    dataset=dataset,
    method=METHODS[video_label, audio_label],
    category=manifests.category_of(audio_label, video_label),
    fake_segments=segments,
  )
  return sources.ClipSource(row, entry.path, entry.line)


class MetadataBuilder(manifest_builder.ManifestBuilder, skip_registration=True):
  """Abstract: a corpus read from its authors' metadata JSON and media layout under data_root."""

  def __init__(self, *, data_root=None, **kwargs):
    """`data_root` is where the corpus's download was unpacked (needed to prepare); the media
    paths are the metadata's, so ManifestBuilder's path_prefix is not used."""
    super().__init__(**kwargs)
    self._data_root = data_root

  def split_manifests(self) -> dict[str, list[str]]:
    if self._data_root is None:
      raise ValueError(f"{self.name}: preparing needs data_root, the directory of its download")
    return self.metadata_files(pathlib.Path(self._data_root))

  @classmethod
  @abc.abstractmethod
  def metadata_files(cls, data_root: pathlib.Path) -> dict[str, list[str]]:
    """Split name -> the metadata file that lists it.

    Raises:
      FileNotFoundError: one line naming the missing file and where to download the corpus.
    """

  @classmethod
  @abc.abstractmethod
  def split_sources(
    cls, split: str, metadata: pathlib.Path, entries: list[Entry]
  ) -> list[sources.ClipSource]:
    """The clips of `split` among the `entries` of the file `metadata`, in file order."""

  @classmethod
  def read_sources(
    cls, split_manifests: dict[str, list[str]], path_prefix: Sequence[str] = ()
  ) -> dict[str, list[sources.ClipSource]]:
    """Each split's clips from its metadata files, each file read once however many splits it
    lists. A `file` twice in one split is a ManifestError naming both lines."""
    del path_prefix  # the metadata's paths are relative to its own directory
    entries, splits = {}, {}
    for split, paths in split_manifests.items():
      sources.check_split_name(split)
      clips, by_id = [], {}
      for path in paths:
        if path not in entries:
          entries[path] = read_entries(path)
        for clip in cls.split_sources(split, pathlib.Path(path), entries[path]):
          earlier = by_id.setdefault(clip.row.id, clip)
          if earlier is not clip:
            raise manifests.ManifestError(
              f"{clip.manifest}:{clip.line}: file {clip.row.id!r} is also listed on line "
              f"{earlier.line}"
            )
          clips.append(clip)
      splits[split] = clips
    return splits


def _skip_whitespace(text: str, position: int) -> int:
  return _JSON_WHITESPACE.match(text, position).end()


def _line_at(text: str, position: int) -> int:
  return text.count("\n", 0, position) + 1
