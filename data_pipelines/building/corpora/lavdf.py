"""TFDS builder `lavdf`: LAV-DF (Cai et al., DICTA 2022), from its authors' metadata and layout.

The download (github.com/ControlNet/LAV-DF, README "Download") unpacks to

  DATA_ROOT/metadata.json         one JSON array, one entry per clip
  DATA_ROOT/train/000001.mp4 ...  the clips of each split (dev/, test/ alike), 25 fps, with audio

Fields read from an entry, as the authors' dataset/lavdf.py reads them: `file` (the mp4 under
DATA_ROOT, e.g. 'train/000001.mp4'; also the clip's id), `split` ('train', 'dev' or 'test'),
`fake_periods` ([[start, end], ...] in seconds), `modify_video` and `modify_audio` (which stream
was forged), `video_frames` and `audio_frames` (audio samples, per the authors). The others
(`n_fakes`, `duration`, `original`, `audio_channels`, `transcript`, `timestamps`) are not needed.
The authors' scripts derive metadata.min.json (the same entries without `transcript` and
`timestamps`); it is read when metadata.json is absent.

Splits: train, validation (LAV-DF's 'dev') and test, each entry going where its `split` says.
LAV-DF lists the forged spans once for the clip: a forged stream is forged over all of them, as
the authors' BA-TFD labels each stream. metadata_json describes the labels.
"""

import pathlib

from data_pipelines.building import metadata_json, sources
from data_pipelines.building.corpora import registry

# The metadata files the download may hold, in order of preference.
METADATA_FILES = ("metadata.json", "metadata.min.json")
# LAV-DF's `split` value -> the split it makes here (TFDS split names; 'dev' is validation).
SPLITS = {"train": "train", "dev": "validation", "test": "test"}
DOWNLOAD = "https://github.com/ControlNet/LAV-DF#download"


@registry.builder
class LAVDF(metadata_json.MetadataBuilder):
  """LAV-DF: VoxCeleb2 clips with words replaced in the audio, the video or both; splits train,
  validation (LAV-DF's dev) and test."""

  name = "lavdf"

  @classmethod
  def metadata_files(cls, data_root: pathlib.Path) -> dict[str, list[str]]:
    for name in METADATA_FILES:
      path = data_root / name
      if path.is_file():
        return {split: [str(path)] for split in SPLITS.values()}
    raise FileNotFoundError(
      f"{data_root / METADATA_FILES[0]}: no LAV-DF metadata; download LAV-DF ({DOWNLOAD}) and "
      "give the directory holding metadata.json and train/, dev/, test/ as data_root"
    )

  @classmethod
  def split_sources(
    cls, split: str, metadata: pathlib.Path, entries: list[metadata_json.Entry]
  ) -> list[sources.ClipSource]:
    clips = []
    for entry in entries:
      if SPLITS[entry.one_of("split", SPLITS)] == split:
        clips.append(
          metadata_json.clip_source(
            entry,
            dataset=cls.name,
            video_path=metadata.parent / entry.text("file"),
            video_forged=entry.flag("modify_video"),
            audio_forged=entry.flag("modify_audio"),
            spans=entry.spans("fake_periods"),
          )
        )
    return clips
