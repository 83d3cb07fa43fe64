"""LAV-DF and AV-Deepfake1M built from tiny copies of their downloads.

Each copy has the corpus's own layout and a metadata JSON with the fields its authors' files have
(data_pipelines/building/corpora/lavdf.py and avdeepfake1m.py name the sources), over a few
generated two-second mp4s: a real clip and visual-only, audio-only and both-modified fakes, one
with two forged spans. The frame labels expected are written out by hand, frame by frame (a frame
is fake when its centre, (i + 0.5) / 25 s, lies in a span).
"""

import functools
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines.building import manifests, metadata_json, prepare
from data_pipelines.building.corpora import lavdf
from data_pipelines.reading import perturbations, rebuilt_split
from tests import media_utils
from tests.conftest import REPO

SECONDS = 2.0
FRAMES = 50  # at 25 fps
CATEGORY = {
  "real": "RealVideo-RealAudio",
  "visual_modified": "FakeVideo-RealAudio",
  "audio_modified": "RealVideo-FakeAudio",
  "both_modified": "FakeVideo-FakeAudio",
}
# (label, audio_label, video_label, identity_label, sync_label) of each method.
LABELS = {
  "real": (0, 0, 0, 1, 1),
  "visual_modified": (1, 0, 1, 1, 0),
  "audio_modified": (1, 1, 0, 1, 0),
  "both_modified": (1, 1, 1, 1, 1),
}
FRAME_FIELDS = ("frame_labels", "audio_frame_labels", "video_frame_labels")


def _fake_frames(*ranges: range, num_frames: int = FRAMES) -> np.ndarray:
  labels = np.zeros(num_frames, np.uint8)
  for frames in ranges:
    labels[list(frames)] = 1
  return labels


def _write_mp4(path: pathlib.Path, tone_hz: float, fps: float = 25.0) -> int:
  """A two-second clip (grey frames, AAC tone) at `fps`; returns its number of frames."""
  frames = round(SECONDS * fps)
  path.parent.mkdir(parents=True, exist_ok=True)
  media_utils.write_video(
    path,
    media_utils.flat_frames(media_utils.grey_levels(frames)),
    fps=fps,
    audio=media_utils.tone(SECONDS, 16_000, tone_hz),
  )
  return frames


def _entry_lines(metadata: pathlib.Path) -> dict[str, int]:
  """The line where each entry starts: the line before its "file" (json.dump's indent=4)."""
  lines = metadata.read_text().splitlines()
  return {
    match.group(1): number - 1
    for number, line in enumerate(lines, start=1)
    if (match := re.search(r'^\s*"file": "(.*)",$', line))
  }


def _read(dataset_dir: str, split: str) -> dict[str, dict]:
  source = tfds.builder_from_directory(dataset_dir).as_data_source()[split]
  return {example["id"].decode(): example for example in (source[i] for i in range(len(source)))}


def _assert_clip(example: dict, dataset: str, method: str, frame_labels: dict[str, np.ndarray]):
  assert example["dataset"].decode() == dataset
  assert example["method"].decode() == method
  assert example["category"].decode() == CATEGORY[method]
  assert (
    tuple(
      int(example[k])
      for k in ("label", "audio_label", "video_label", "identity_label", "sync_label")
    )
    == LABELS[method]
  )
  assert example["num_frames"] == len(frame_labels["frame_labels"])
  for field in FRAME_FIELDS:
    np.testing.assert_array_equal(example[field], frame_labels[field], err_msg=field)


# LAV-DF: metadata.json beside train/, dev/, test/ (github.com/ControlNet/LAV-DF).
def _lavdf_entry(file: str, split: str, periods: list, video: bool, audio: bool) -> dict:
  """An entry with every field of the authors' metadata.json (dataset/lavdf.py's Metadata, plus
  the `timestamps` and `transcript` that utils.py drops for metadata.min.json; their contents
  here are made up, the builder does not read them)."""
  return {
    "file": file,
    "n_fakes": len(periods),
    "fake_periods": periods,
    "duration": SECONDS,
    "original": "train/000001.mp4" if periods else None,
    "modify_video": video,
    "modify_audio": audio,
    "split": split,
    "video_frames": FRAMES,
    "audio_channels": 1,
    "audio_frames": round(SECONDS * 16_000),
    "timestamps": [["hello", 0.2, 0.6], ["there", 1.2, 1.64]],
    "transcript": "hello there",
  }


LAVDF_ENTRIES = [
  _lavdf_entry("train/000001.mp4", "train", [], False, False),
  _lavdf_entry("train/000002.mp4", "train", [[0.4, 1.0]], True, False),
  _lavdf_entry("train/000003.mp4", "train", [[0.4, 1.0]], True, True),  # its mp4 is missing
  # Flags and periods disagree: the clip is rejected, the build goes on.
  _lavdf_entry("train/000004.mp4", "train", [[0.2, 0.6]], False, False),
  _lavdf_entry("dev/000005.mp4", "dev", [[1.0, 1.4]], False, True),
  _lavdf_entry("test/000006.mp4", "test", [[0.2, 0.6], [1.2, 1.64]], True, True),
]


def _lavdf_tree(root: pathlib.Path) -> pathlib.Path:
  for i, entry in enumerate(LAVDF_ENTRIES):
    if entry["file"] != "train/000003.mp4":
      _write_mp4(root / entry["file"], tone_hz=200 + 50 * i)
  metadata = root / "metadata.json"
  metadata.write_text(json.dumps(LAVDF_ENTRIES, indent=4))
  return metadata


def test_lavdf_is_built_from_its_metadata_with_frame_labels_on_the_forged_spans(tmp_path):
  metadata = _lavdf_tree(tmp_path / "LAV-DF")
  out = tmp_path / "out"
  builder = prepare.make_builder(
    out, corpus="lavdf", data_root=tmp_path / "LAV-DF", num_workers=2, progress_interval_s=0.0
  )

  summary = prepare.prepare(builder, keep_extracted=True)

  assert summary.splits == {
    "test": prepare.SplitCounts(written=1, rejected=0),
    "train": prepare.SplitCounts(written=2, rejected=2),
    "validation": prepare.SplitCounts(written=1, rejected=0),
  }
  train = _read(summary.dataset_dir, "train")
  assert list(train) == ["train/000001.mp4", "train/000002.mp4"]
  no_fakes = _fake_frames()
  _assert_clip(
    train["train/000001.mp4"],
    "lavdf",
    "real",
    dict.fromkeys(FRAME_FIELDS, no_fakes),
  )
  visual = _fake_frames(range(10, 25))  # 0.4-1.0 s: centres 0.42 ... 0.98 s
  _assert_clip(
    train["train/000002.mp4"],
    "lavdf",
    "visual_modified",
    {"frame_labels": visual, "audio_frame_labels": no_fakes, "video_frame_labels": visual},
  )
  audio = _fake_frames(range(25, 35))  # 1.0-1.4 s
  (validation,) = _read(summary.dataset_dir, "validation").values()
  _assert_clip(
    validation,
    "lavdf",
    "audio_modified",
    {"frame_labels": audio, "audio_frame_labels": audio, "video_frame_labels": no_fakes},
  )
  both = _fake_frames(range(5, 15), range(30, 41))  # 0.2-0.6 s and 1.2-1.64 s
  (test,) = _read(summary.dataset_dir, "test").values()
  assert test["id"].decode() == "test/000006.mp4"
  _assert_clip(test, "lavdf", "both_modified", dict.fromkeys(FRAME_FIELDS, both))

  lines = _entry_lines(metadata)
  rejects = [
    json.loads(line) for line in pathlib.Path(summary.rejects_path).read_text().splitlines()
  ]
  assert [(r["dataset"], r["split"], r["id"]) for r in rejects] == [
    ("lavdf", "train", "train/000003.mp4"),
    ("lavdf", "train", "train/000004.mp4"),
  ]
  for record in rejects:
    assert (record["manifest"], record["line"]) == (str(metadata), lines[record["id"]])
  assert "video file not found" in rejects[0]["reason"]
  assert "label=0 but the metadata gives 1 fake segments" in rejects[1]["reason"]

  # Rebuilding reuses every extracted clip (the resumable store, keyed by the entries' rows).
  store = out / "_work" / "lavdf" / "clips"
  stored = {path: path.stat().st_ino for path in store.glob("*/*")}
  assert len(stored) == len(LAVDF_ENTRIES)
  assert prepare.prepare(builder, overwrite=True, keep_extracted=True).splits == summary.splits
  assert {path: path.stat().st_ino for path in store.glob("*/*")} == stored

  # Robustness evaluation makes a clip again from its media, through the same metadata.
  clean = functools.partial(perturbations.degrade, perturbations.CLEAN, 0)
  again = rebuilt_split.RebuiltSplit(
    "lavdf", str(out), "test", ("test/000006.mp4",), clean, None
  ).decode(0)
  for field in ("faces", "mfcc", *FRAME_FIELDS):
    np.testing.assert_array_equal(again[field], test[field], err_msg=field)


# AV-Deepfake1M: <subset>_metadata.json beside <subset>/ (github.com/ControlNet/AV-Deepfake1M).
def _avdf_entry(file: str, subset: str, modify_type: str, fake, visual, audio, frames) -> dict:
  """An entry with the fields the README lists and its SDK reads. `audio_model`'s values are a
  guess (the builder does not read it)."""
  return {
    "file": file,
    "original": None if modify_type == "real" else f"{file.rsplit('/', 1)[0]}/real.mp4",
    "split": subset,
    "modify_type": modify_type,
    "audio_model": "yourtts" if audio else "",
    "fake_segments": fake,
    "audio_fake_segments": audio,
    "visual_fake_segments": visual,
    "video_frames": frames,
    "audio_frames": round(SECONDS * 16_000),
  }


def _avdf_tree(root: pathlib.Path) -> None:
  clip, other = "id00001/aB3dE5fG7hI/00001", "id00002/jK9lM1nO3pQ/00002"
  # `early` is off the 40 ms frame grid, as word boundaries are: its frames are 5-14 (centres
  # 0.22-0.58 s), its stored segment must keep the corpus's times.
  late, early = [[1.0, 1.8]], [[0.213, 0.587]]
  train = [
    _avdf_entry(f"{clip}/real.mp4", "train", "real", [], [], [], FRAMES),
    # 30 fps: 60 frames in the file, 50 at 25 fps.
    _avdf_entry(
      f"{clip}/fake_video_real_audio.mp4", "train", "visual_modified", late, late, [], 60
    ),
    # The visual spans of an audio-only fake are not the video's: modify_type says it is real.
    _avdf_entry(
      f"{clip}/real_video_fake_audio.mp4", "train", "audio_modified", early, early, early, FRAMES
    ),
  ]
  val = [
    _avdf_entry(
      f"{other}/fake_video_fake_audio.mp4",
      "val",
      "both_modified",
      [[0.2, 0.6], [1.2, 1.8]],
      [[0.2, 0.6], [1.2, 1.8]],
      [[1.2, 1.8]],
      FRAMES,
    )
  ]
  for subset, entries in (("train", train), ("val", val)):
    for i, entry in enumerate(entries):
      fps = 30.0 if entry["video_frames"] == 60 else 25.0
      _write_mp4(root / subset / entry["file"], tone_hz=300 + 70 * i, fps=fps)
    (root / f"{subset}_metadata.json").write_text(json.dumps(entries, indent=4))
  # The test subset: media without labels, which the builder leaves out.
  (root / "test").mkdir()
  (root / "test_files.txt").write_text("id00003/rS5tU7vW9xY/00003/0.mp4\n")


def test_avdeepfake1m_through_the_cli_with_frame_labels_cut_at_max_frames(tmp_path):
  root, out = tmp_path / "AV-Deepfake1M", tmp_path / "out"
  _avdf_tree(root)

  process = subprocess.run(
    [
      sys.executable,
      "-m",
      "avcd.commands.prepare",
      "--corpus=avdeepfake1m",
      f"--data_root={root}",
      f"--output={out}",
      "--max_frames=40",
      "--num_workers=2",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )

  assert process.returncode == 0, process.stderr
  assert re.search(r"^ +train +3 +0$", process.stdout, re.M), process.stdout
  assert re.search(r"^ +validation +1 +0$", process.stdout, re.M), process.stdout
  dataset_dir = str(out / "avdeepfake1m" / "1.0.0")
  assert set(tfds.builder_from_directory(dataset_dir).info.splits) == {"train", "validation"}
  no_fakes = _fake_frames(num_frames=40)
  clip = "id00001/aB3dE5fG7hI/00001"
  train = _read(dataset_dir, "train")
  assert list(train) == [
    f"{clip}/real.mp4",
    f"{clip}/fake_video_real_audio.mp4",
    f"{clip}/real_video_fake_audio.mp4",
  ]
  _assert_clip(
    train[f"{clip}/real.mp4"], "avdeepfake1m", "real", dict.fromkeys(FRAME_FIELDS, no_fakes)
  )
  visual = _fake_frames(range(25, 40), num_frames=40)  # 1.0-1.8 s, cut at frame 40 (1.6 s)
  _assert_clip(
    train[f"{clip}/fake_video_real_audio.mp4"],
    "avdeepfake1m",
    "visual_modified",
    {"frame_labels": visual, "audio_frame_labels": no_fakes, "video_frame_labels": visual},
  )
  audio = _fake_frames(range(5, 15), num_frames=40)
  _assert_clip(
    train[f"{clip}/real_video_fake_audio.mp4"],
    "avdeepfake1m",
    "audio_modified",
    {"frame_labels": audio, "audio_frame_labels": audio, "video_frame_labels": no_fakes},
  )
  # The forged segments themselves, in seconds: kept at the corpus's precision, cut at 1.6 s.
  segments = {name: example["fake_segments"] for name, example in train.items()}
  np.testing.assert_allclose(segments[f"{clip}/real_video_fake_audio.mp4"], [[0.213, 0.587]])
  np.testing.assert_allclose(segments[f"{clip}/fake_video_real_audio.mp4"], [[1.0, 1.6]])
  assert segments[f"{clip}/real.mp4"].shape == (0, 2)
  (both,) = _read(dataset_dir, "validation").values()
  _assert_clip(
    both,
    "avdeepfake1m",
    "both_modified",
    {
      "frame_labels": _fake_frames(range(5, 15), range(30, 40), num_frames=40),
      "video_frame_labels": _fake_frames(range(5, 15), range(30, 40), num_frames=40),
      "audio_frame_labels": _fake_frames(range(30, 40), num_frames=40),
    },
  )


def test_a_missing_metadata_file_is_one_line_naming_it_and_where_to_get_it(tmp_path):
  (tmp_path / "LAV-DF" / "train").mkdir(parents=True)
  process = subprocess.run(
    [
      sys.executable,
      "-m",
      "avcd.commands.prepare",
      "--corpus=lavdf",
      f"--data_root={tmp_path / 'LAV-DF'}",
      f"--output={tmp_path / 'out'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert process.returncode == 1
  assert "Traceback" not in process.stderr
  (error,) = [line for line in process.stderr.splitlines() if line.startswith("avcd prepare:")]
  assert error == (
    f"avcd prepare: error: {tmp_path / 'LAV-DF' / 'metadata.json'}: no LAV-DF metadata; "
    f"download LAV-DF ({lavdf.DOWNLOAD}) and give the directory holding metadata.json and "
    "train/, dev/, test/ as data_root"
  )


@pytest.mark.parametrize(
  "text, message",
  [
    ('[{"file": "train/1.mp4"},\n {"file": }]', r"metadata.json:2:11: not JSON \(Expecting value"),
    ('{"file": "train/1.mp4"}', "metadata.json: not a JSON array of entries"),
    (json.dumps([{**LAVDF_ENTRIES[0], "split": "val"}]), "metadata.json:1: split='val' is none of"),
    (
      json.dumps([{k: v for k, v in LAVDF_ENTRIES[0].items() if k != "modify_audio"}], indent=1),
      "metadata.json:2: the entry has no field 'modify_audio'",
    ),
    (
      json.dumps([{**LAVDF_ENTRIES[0], "fake_periods": [[1.0, 0.5]]}]),
      r"fake_periods holds \[1.0, 0.5\], not a \[start, end\] pair",
    ),
    (json.dumps([{**LAVDF_ENTRIES[0], "video_frames": True}]), "video_frames=True is not"),
    (json.dumps([LAVDF_ENTRIES[0]] * 2), "file 'train/000001.mp4' is also listed on line 1"),
  ],
)
def test_malformed_metadata_stops_the_build_naming_file_and_line(tmp_path, text, message):
  (tmp_path / "metadata.json").write_text(text)
  builder = prepare.make_builder(tmp_path / "out", corpus="lavdf", data_root=tmp_path)
  with pytest.raises(manifests.ManifestError, match=message):
    builder.read_sources(builder.split_manifests())


def test_the_metadata_corpora_take_a_data_root_and_nothing_of_the_manifest_corpora(tmp_path):
  for kwargs, message in (
    (dict(corpus="lavdf"), "lavdf needs data_root"),
    (dict(corpus="avdeepfake1m", data_root=tmp_path, path_prefix=["/a=/b"]), "path_prefix"),
    (dict(corpus="lavdf", data_root=tmp_path, manifest_dir=tmp_path), "manifest_dir"),
    (dict(corpus="cmdfd", data_root=tmp_path), "data_root is for"),
    (dict(corpus="lavdf", manifests=["x.csv"]), "lavdf reads its clips from data_root"),
  ):
    with pytest.raises(ValueError, match=message):
      prepare.make_builder(tmp_path / "out", **kwargs)
  assert isinstance(
    prepare.make_builder(tmp_path / "out", corpus="lavdf", data_root=tmp_path),
    metadata_json.MetadataBuilder,
  )
