"""The corpus builders: manifest discovery on the authors' lists, builds from tiny fake trees.

The fake trees keep a handful of the authors' rows (../shared/manifests), with their IDs, labels
and absolute paths, and shorten each clip to one second; media are generated where the rows point
once the authors' prefixes are rewritten into the test's directory.
"""

import csv
import pathlib

import pytest
import tensorflow_datasets as tfds

from data_pipelines.building import manifests, prepare, sources
from data_pipelines.building.corpora import cmdfd, fakeavceleb
from tests import media_utils

MANIFEST_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "manifests"
FAV_PREFIXES = ("/projects/yucai2/data/FakeAVCeleb1.0", "/data5/caiyu/data/FakeAVCeleb1.0")
CMDFD_PREFIX = "/data2/caiyu/data/My_Test"
FAV_TRAIN_LISTS = (
  "FAKE_FACESWAP_C",
  "FAKE_FACESWAP_D_W2L",
  "FAKE_FSGAN_C",
  "FAKE_FSGAN_D_W2L",
  "FAKE_RTVC_B",
  "FAKE_W2L_C",
  "REAL_A",
  "org_FAKE_W2L_D",
)


@pytest.fixture(name="authors_lists")
def _authors_lists() -> pathlib.Path:
  if not MANIFEST_DIR.is_dir():
    pytest.skip(f"the authors' manifests ({MANIFEST_DIR}) are not available")
  return MANIFEST_DIR


def _authors_rows(name: str) -> list[dict]:
  with (MANIFEST_DIR / name).open(newline="") as f:
    return list(csv.DictReader(f))


def _fake_tree(tmp_path, lists: dict[str, list[dict]], prefixes) -> tuple[pathlib.Path, list[str]]:
  """Writes `lists` (file name -> rows) as one-second clips; returns (manifest dir, rewrites)."""
  manifest_dir, media_root = tmp_path / "manifests", tmp_path / "media"
  manifest_dir.mkdir()
  rewrites = [f"{prefix}={media_root}" for prefix in prefixes]
  rules = manifests.parse_path_prefixes(rewrites)
  for name, rows in lists.items():
    rows = [{**row, "Frame_Len": "25.0", "Audio_Len": "16000"} for row in rows]
    media_utils.write_manifest(manifest_dir / name, rows)
    for i, row in enumerate(rows):
      video = pathlib.Path(manifests.rewrite_path(row["Video_Path"], rules))
      audio = pathlib.Path(manifests.rewrite_path(row["Audio_Path"], rules))
      video.parent.mkdir(parents=True, exist_ok=True)
      audio.parent.mkdir(parents=True, exist_ok=True)
      tone = media_utils.tone(1.0, 16_000, 200 + 30 * i)
      media_utils.write_video(
        video, media_utils.flat_frames(media_utils.grey_levels(25)), audio=tone
      )
      media_utils.write_wav(audio, tone)
  return manifest_dir, rewrites


def _build(tmp_path, corpus: str, manifest_dir, rewrites, **kwargs) -> prepare.Summary:
  builder = prepare.make_builder(
    tmp_path / "out", corpus=corpus, manifest_dir=manifest_dir, path_prefix=rewrites, num_workers=2
  )
  return prepare.prepare(builder, **kwargs)


def _stored(summary: prepare.Summary, split: str) -> list[dict]:
  source = tfds.builder_from_directory(summary.dataset_dir).as_data_source()[split]
  return [source[i] for i in range(len(source))]


def test_fakeavceleb_splits_are_the_authors_train_and_test_lists(authors_lists):
  split_manifests = fakeavceleb.find_manifests(authors_lists)
  assert [pathlib.Path(p).name for p in split_manifests["train"]] == sorted(
    f"FAV_train_{name}.csv" for name in FAV_TRAIN_LISTS
  )
  assert [pathlib.Path(p).name for p in split_manifests["test"]] == sorted(
    ["FAV_test.csv", *(f"FAV_test_{name}.csv" for name in FAV_TRAIN_LISTS)]
  )

  rewrites = [f"{prefix}=/media/FakeAVCeleb" for prefix in FAV_PREFIXES]
  splits = sources.read_splits({"test": split_manifests["test"]}, path_prefix=rewrites)
  assert len(splits["test"]) == len(_authors_rows("FAV_test.csv")) == 4266
  assert {c.manifest for c in splits["test"]} == {str(authors_lists / "FAV_test.csv")}  # first
  with pytest.raises(manifests.ManifestError, match="give a --path_prefix for each"):
    sources.read_splits({"test": split_manifests["test"]}, path_prefix=rewrites[:1])


def test_cmdfd_has_one_split_per_list_of_the_authors(authors_lists):
  assert list(cmdfd.find_manifests(authors_lists)) == [
    "audio2head",
    "audio2head_self",
    "makeittalk",
    "makeittalk_self",
    "videoretalk",
    "videoretalk_self",
    "wav2lip",
    "wav2lip_self",
  ]


def test_manifest_specs_name_their_splits():
  assert sources.parse_manifest_specs(
    ["train=a/x.csv", "b/Eval-Set.csv", "train=y.csv", "/d=e/z.csv"]
  ) == {"train": ["a/x.csv", "y.csv"], "eval_set": ["b/Eval-Set.csv"], "z": ["/d=e/z.csv"]}
  for bad in ([], ["all=x.csv"]):
    with pytest.raises(ValueError):
      sources.parse_manifest_specs(bad)


def test_fakeavceleb_builds_from_a_tree_laid_out_as_the_authors(authors_lists, tmp_path):
  del authors_lists
  lists = {
    f"FAV_train_{name}.csv": _authors_rows(f"FAV_train_{name}.csv")[:1] for name in FAV_TRAIN_LISTS
  }
  real_test = _authors_rows("FAV_test_REAL_A.csv")[:2]
  ids = {row["ID_Name"] for row in real_test}
  lists["FAV_test_REAL_A.csv"] = real_test
  # The same clips in the combined list, under its other prefix: merged by ID.
  lists["FAV_test.csv"] = [r for r in _authors_rows("FAV_test.csv") if r["ID_Name"] in ids]
  lists["FAV_test_FAKE_RTVC_B.csv"] = _authors_rows("FAV_test_FAKE_RTVC_B.csv")[:1]
  manifest_dir, rewrites = _fake_tree(tmp_path, lists, FAV_PREFIXES)

  summary = _build(tmp_path, "fakeavceleb", manifest_dir, rewrites)

  assert summary.splits == {
    "test": prepare.SplitCounts(written=3, rejected=0),
    "train": prepare.SplitCounts(written=8, rejected=0),
  }
  train = _stored(summary, "train")
  assert sorted(e["method"].decode() for e in train) == sorted(
    ["faceswap", "faceswap_wav2lip", "fsgan", "fsgan_wav2lip", "rtvc", "wav2lip", "real", "wav2lip"]
  )
  assert {e["dataset"].decode() for e in train} == {"fakeavceleb"}
  by_id = {row["ID_Name"]: row for rows in lists.values() for row in rows}
  for example in train + _stored(summary, "test"):
    row = by_id[example["id"].decode()]
    assert (example["label"], example["audio_label"], example["video_label"]) == (
      int(row["ENtire_Label"]),
      int(row["Audio_Label"]),
      int(row["Video_Label"]),
    )
    assert example["num_frames"] == 25


def test_cmdfd_builds_each_list_and_extracts_shared_real_clips_once(authors_lists, tmp_path):
  del authors_lists
  origin = [r for r in _authors_rows("Audio2Head.csv") if r["ID_Name"].startswith("origin+")][:2]
  lists = {}
  for name, method in (
    ("W2L.csv", "wav2lip+"),
    ("W2L_Self.csv", "wav2lip_Self+"),
    ("Audio2Head.csv", "Audio2Head+"),
  ):
    fakes = [r for r in _authors_rows(name) if r["ID_Name"].startswith(method)][:2]
    lists[name] = [*origin, *fakes]
  manifest_dir, rewrites = _fake_tree(tmp_path, lists, [CMDFD_PREFIX])

  summary = _build(tmp_path, "cmdfd", manifest_dir, rewrites, keep_extracted=True)

  assert summary.splits == {
    split: prepare.SplitCounts(written=4, rejected=0)
    for split in ("audio2head", "wav2lip", "wav2lip_self")
  }
  for split, method in (
    ("audio2head", "audio2head"),
    ("wav2lip", "wav2lip"),
    ("wav2lip_self", "wav2lip_self"),
  ):
    assert [e["method"].decode() for e in _stored(summary, split)] == [
      "real",
      "real",
      method,
      method,
    ]
  stored_clips = list((tmp_path / "out" / "_work" / "cmdfd" / "clips").glob("*/*.example"))
  assert len(stored_clips) == 2 + 3 * 2
