"""TFDS builder `avdeepfake1m`: AV-Deepfake1M (Cai et al., ACM MM 2024), its labelled subsets.

The dataset is given on request, under its EULA, through the 1M-Deepfakes challenge
(https://deepfakes1m.github.io); its authors' SDK (github.com/ControlNet/AV-Deepfake1M, README
"Usage") expects the download unpacked as

  DATA_ROOT/train_metadata.json     one JSON array, one entry per clip of train/
  DATA_ROOT/train/<speaker>/<video>/<clip>/<variant>.mp4
  DATA_ROOT/val_metadata.json, DATA_ROOT/val/...       the same for the validation subset
  DATA_ROOT/test_files.txt, DATA_ROOT/test/...         test media, labels withheld

(and train_metadata/, val_metadata/ holding each entry again as one file, not needed here).

Fields read from an entry, as the README describes them: `file` (the mp4 under the subset's
directory, e.g. 'id06744/_c3CCbnZEbU/00011/real_video_fake_audio.mp4'; also the clip's id),
`modify_type` (real, visual_modified, audio_modified or both_modified), `fake_segments`,
`visual_fake_segments` and `audio_fake_segments` ([[start, end], ...] in seconds: the clip's
forged spans and each stream's), `video_frames` and `audio_frames`. Not needed: `original`,
`split`, `audio_model` (the TTS model of the forged words; the schema has no field for it).

Splits: train and validation (the 'val' subset). The test subset is left out: without labels its
clips can neither train nor be scored. A stream's frame labels come from its own spans when
`modify_type` says it was forged, and it has none otherwise (metadata_json).
"""

import pathlib

from data_pipelines.building import metadata_json, sources
from data_pipelines.building.corpora import registry

# Split here -> the subset's name: <subset>_metadata.json lists the clips under <subset>/.
SUBSETS = {"train": "train", "validation": "val"}
# modify_type -> (video forged, audio forged). The README spells both_modified so; the SDK's
# loader.py compares against 'both-modified', accepted too in case files spell it that way.
MODIFY_TYPES = {
  "real": (False, False),
  "visual_modified": (True, False),
  "audio_modified": (False, True),
  "both_modified": (True, True),
  "both-modified": (True, True),
}
DOWNLOAD = "https://deepfakes1m.github.io (see https://github.com/ControlNet/AV-Deepfake1M)"


@registry.builder
class AVDeepfake1M(metadata_json.MetadataBuilder):
  """AV-Deepfake1M: VoxCeleb2 clips with LLM-chosen words replaced in the audio, the video or
  both; splits train and validation (its 'val'; the test labels are withheld)."""

  name = "avdeepfake1m"

  @classmethod
  def metadata_files(cls, data_root: pathlib.Path) -> dict[str, list[str]]:
    files = {split: data_root / f"{subset}_metadata.json" for split, subset in SUBSETS.items()}
    present = {split: [str(path)] for split, path in files.items() if path.is_file()}
    if not present:
      raise FileNotFoundError(
        f"{data_root}: no train_metadata.json or val_metadata.json; AV-Deepfake1M is given on "
        f"request at {DOWNLOAD}; give the directory holding them and train/, val/ as data_root"
      )
    return present

  @classmethod
  def split_sources(
    cls, split: str, metadata: pathlib.Path, entries: list[metadata_json.Entry]
  ) -> list[sources.ClipSource]:
    media = metadata.parent / SUBSETS[split]
    clips = []
    for entry in entries:
      modify_type = entry.one_of("modify_type", MODIFY_TYPES)
      video_forged, audio_forged = MODIFY_TYPES[modify_type]
      clips.append(
        metadata_json.clip_source(
          entry,
          dataset=cls.name,
          video_path=media / entry.text("file"),
          video_forged=video_forged,
          audio_forged=audio_forged,
          spans=entry.spans("fake_segments"),
          video_spans=entry.spans("visual_fake_segments"),
          audio_spans=entry.spans("audio_fake_segments"),
        )
      )
    return clips
