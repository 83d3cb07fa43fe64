"""The manifest reader on the authors' CSVs (../shared/manifests) and on malformed files."""

import collections
import pathlib
import re

import pytest

from data_pipelines.building import corpora, manifests  # noqa: F401  (corpora: the row rules)
from tests import media_utils

MANIFEST_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "manifests"

# (dataset, {method: rows}) of every CSV the authors provide.
_CMDFD_REAL = 1000
EXPECTED = {
  "Audio2Head.csv": ("cmdfd", {"real": _CMDFD_REAL, "audio2head": 1000}),
  "Audio2Head_Self.csv": ("cmdfd", {"real": _CMDFD_REAL, "audio2head_self": 1000}),
  "MakeItTalk.csv": ("cmdfd", {"real": _CMDFD_REAL, "makeittalk": 978}),
  "MakeItTalk_Self.csv": ("cmdfd", {"real": _CMDFD_REAL, "makeittalk_self": 978}),
  "VideoReTalk.csv": ("cmdfd", {"real": _CMDFD_REAL, "videoretalk": 918}),
  "VideoReTalk_Self.csv": ("cmdfd", {"real": _CMDFD_REAL, "videoretalk_self": 924}),
  "W2L.csv": ("cmdfd", {"real": _CMDFD_REAL, "wav2lip": 998}),
  "W2L_Self.csv": ("cmdfd", {"real": _CMDFD_REAL, "wav2lip_self": 996}),
  "FAV_test.csv": (
    "fakeavceleb",
    {
      "real": 99,
      "rtvc": 99,
      "wav2lip": 2400,
      "faceswap": 99,
      "fsgan": 440,
      "faceswap_wav2lip": 528,
      "fsgan_wav2lip": 601,
    },
  ),
  "FAV_test_REAL_A.csv": ("fakeavceleb", {"real": 99}),
  "FAV_test_FAKE_RTVC_B.csv": ("fakeavceleb", {"rtvc": 99}),
  "FAV_test_FAKE_W2L_C.csv": ("fakeavceleb", {"wav2lip": 1400}),
  "FAV_test_FAKE_FACESWAP_C.csv": ("fakeavceleb", {"faceswap": 99}),
  "FAV_test_FAKE_FSGAN_C.csv": ("fakeavceleb", {"fsgan": 440}),
  "FAV_test_org_FAKE_W2L_D.csv": ("fakeavceleb", {"wav2lip": 1000}),
  "FAV_test_FAKE_FACESWAP_D_W2L.csv": ("fakeavceleb", {"faceswap_wav2lip": 528}),
  "FAV_test_FAKE_FSGAN_D_W2L.csv": ("fakeavceleb", {"fsgan_wav2lip": 601}),
  "FAV_train_REAL_A.csv": ("fakeavceleb", {"real": 390}),
  "FAV_train_FAKE_RTVC_B.csv": ("fakeavceleb", {"rtvc": 360}),
  "FAV_train_FAKE_W2L_C.csv": ("fakeavceleb", {"wav2lip": 3900}),
  "FAV_train_FAKE_FACESWAP_C.csv": ("fakeavceleb", {"faceswap": 450}),
  "FAV_train_FAKE_FSGAN_C.csv": ("fakeavceleb", {"fsgan": 1884}),
  "FAV_train_org_FAKE_W2L_D.csv": ("fakeavceleb", {"wav2lip": 3900}),
  "FAV_train_FAKE_FACESWAP_D_W2L.csv": ("fakeavceleb", {"faceswap_wav2lip": 2256}),
  "FAV_train_FAKE_FSGAN_D_W2L.csv": ("fakeavceleb", {"fsgan_wav2lip": 1847}),
}
# FakeAVCeleb's category letters in the per-category file names.
_LETTER_CATEGORY = {
  "A": "RealVideo-RealAudio",
  "B": "RealVideo-FakeAudio",
  "C": "FakeVideo-RealAudio",
  "D": "FakeVideo-FakeAudio",
}


def _authors_csv(name: str) -> pathlib.Path:
  path = MANIFEST_DIR / name
  if not path.is_file():
    pytest.skip(f"the authors' manifest {path} is not available")
  return path


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_authors_csv_reads_with_its_counts_methods_and_consistent_categories(name):
  path = _authors_csv(name)
  rows = manifests.read_manifest(path)
  dataset, methods = EXPECTED[name]
  with path.open() as f:
    assert len(rows) == sum(1 for line in f if line.strip()) - 1
  assert collections.Counter(row.method for row in rows) == methods
  for row in rows:
    assert row.dataset == dataset
    assert row.category == manifests.category_of(row.audio_label, row.video_label)
    assert row.label == max(row.audio_label, row.video_label)
    assert (row.method == "real") == (row.label == 0)
    assert row.fps == 25.0 and row.sample_rate == 16_000 and row.num_frames >= 1
    assert row.audio_path and row.video_path.endswith(".mp4")
  if dataset == "fakeavceleb" and name != "FAV_test.csv":
    letter = name.removesuffix(".csv").removesuffix("_W2L")[-1]
    assert {row.category for row in rows} == {_LETTER_CATEGORY[letter]}


def test_fav_test_is_the_union_of_its_category_files():
  union = {}
  for name in EXPECTED:
    if name.startswith("FAV_test_"):
      union.update(
        {row.id: (row.method, row.category) for row in manifests.read_manifest(_authors_csv(name))}
      )
  whole = manifests.read_manifest(_authors_csv("FAV_test.csv"))
  assert {row.id: (row.method, row.category) for row in whole} == union


def test_path_prefixes_rewrite_audio_and_video_paths_first_match_wins():
  path = _authors_csv("W2L.csv")
  rows = manifests.read_manifest(
    path,
    path_prefix=[
      "/data2/caiyu/data/My_Test/origin=/mnt/real",
      "/data2/caiyu/data/My_Test=/mnt/cmdfd",
      "/data2=/unused",
    ],
  )
  for row in rows:
    assert row.audio_path.startswith(("/mnt/real/", "/mnt/cmdfd/"))
    assert row.video_path.startswith("/mnt/real/" if row.method == "real" else "/mnt/cmdfd/")
  original = manifests.read_manifest(path)
  assert [row.method for row in rows] == [row.method for row in original]


def test_parse_path_prefixes():
  assert manifests.parse_path_prefixes(["/a=/b", "/c=", "/d=e=f"]) == (
    ("/a", "/b"),
    ("/c", ""),
    ("/d", "e=f"),
  )
  for bad in ("/no/equals", "=/new"):
    with pytest.raises(ValueError, match="OLD=NEW"):
      manifests.parse_path_prefixes([bad])
  assert manifests.rewrite_path("/x/y", [("/z", "/q")]) == "/x/y"


def _row(**overrides) -> dict:
  row = {
    "ID_Name": "origin+clip1",
    "Audio_Path": "clip1.wav",
    "Video_Path": "clip1.mp4",
    "ENtire_Label": 0,
    "Audio_Label": 0,
    "Video_Label": 0,
    "Identi_Label": 1,
    "Sync_Label": 1,
    "Frame_Len": "25.0",
    "Audio_Len": 16000,
    "FPS": "25.0",
    "AudioSamRate": 16000,
  }
  row.update(overrides)
  return row


def test_relative_paths_are_taken_from_the_csv_directory_and_empty_audio_means_none(tmp_path):
  path = media_utils.write_manifest(
    tmp_path / "m.csv",
    [
      _row(),
      _row(
        ID_Name="wav2lip+clip2",
        Audio_Path="",
        Video_Path="wav2lip/clip2.mp4",
        ENtire_Label=1,
        Video_Label=1,
        Identi_Label=0,
      ),
    ],
  )
  first, second = manifests.read_manifest(path)
  assert first.video_path == str(tmp_path / "clip1.mp4")
  assert first.audio_path == str(tmp_path / "clip1.wav")
  assert (first.dataset, first.method, first.category) == ("cmdfd", "real", "RealVideo-RealAudio")
  assert first.num_frames == 25 and first.audio_len == 16_000
  assert second.audio_path is None
  assert (second.method, second.category) == ("wav2lip", "FakeVideo-RealAudio")


def test_unknown_corpora_get_a_generic_method(tmp_path):
  path = media_utils.write_manifest(
    tmp_path / "m.csv",
    [_row(ID_Name="mine_1"), _row(ID_Name="mine_2", ENtire_Label=1, Audio_Label=1)],
  )
  real, fake = manifests.read_manifest(path)
  assert (real.dataset, real.method) == ("other", "real")
  assert (fake.dataset, fake.method, fake.category) == ("other", "fake", "RealVideo-FakeAudio")


_FAV_VIDEO = (
  "/d/TEST/ARRANGED_RAW_VIDEO/FAKE_W2L_C/Asian/MEN/id00001/yt/00010_id00002_yt_wavtolip.mp4"
)


@pytest.mark.parametrize(
  "overrides, problem",
  [
    ({"ENtire_Label": 2}, "ENtire_Label='2' is not 0 or 1"),
    ({"Sync_Label": ""}, "Sync_Label='' is not 0 or 1"),
    ({"Frame_Len": "abc"}, "Frame_Len='abc' is not an integer"),
    ({"Frame_Len": "12.5"}, "Frame_Len='12.5' is not an integer"),
    ({"Frame_Len": "0"}, "Frame_Len='0' is not an integer >= 1"),
    ({"FPS": "0"}, "FPS='0' must be positive"),
    ({"FPS": "nan"}, "FPS='nan' is not a number"),
    ({"Video_Path": ""}, "empty Video_Path"),
    ({"ENtire_Label": 1}, "method real contradicts ENtire_Label=1"),
    (
      {"ID_Name": "wav2lip+clip1", "Video_Path": "makeittalk/clip1.mp4", "ENtire_Label": 1},
      "names method folder 'wav2lip', the video is in 'makeittalk'",
    ),
    (
      {"ID_Name": "id00001+00010+ARVR", "Video_Label": 1, "ENtire_Label": 1},
      "says RealVideo-RealAudio, the audio and video labels say FakeVideo-RealAudio",
    ),
    (
      {
        "ID_Name": "id00001+00010_id00002_yt_faceswap+ARVF",
        "Video_Path": _FAV_VIDEO,
        "ENtire_Label": 1,
        "Video_Label": 1,
      },
      "directory 'FAKE_W2L_C' means wav2lip",
    ),
  ],
)
def test_malformed_rows_name_the_file_and_line(tmp_path, overrides, problem):
  path = media_utils.write_manifest(
    tmp_path / "bad.csv", [_row(ID_Name="origin+ok"), _row(**overrides)]
  )
  with pytest.raises(manifests.ManifestError, match=f"bad.csv:3: .*{re.escape(problem)}"):
    manifests.read_manifest(path)


def test_malformed_files(tmp_path):
  missing = tmp_path / "missing_column.csv"
  missing.write_text("ID_Name,Audio_Path,Video_Path\norigin+a,a.wav,a.mp4\n")
  with pytest.raises(manifests.ManifestError, match=r"missing_column.csv:1: missing columns"):
    manifests.read_manifest(missing)
  empty = tmp_path / "empty.csv"
  empty.write_text("")
  with pytest.raises(manifests.ManifestError, match="empty.csv: empty file"):
    manifests.read_manifest(empty)
  header_only = media_utils.write_manifest(tmp_path / "header_only.csv", [])
  with pytest.raises(
    manifests.ManifestError, match="header_only.csv: the manifest has no rows, only its header"
  ):
    manifests.read_manifest(header_only)
  duplicate = media_utils.write_manifest(tmp_path / "duplicate.csv", [_row(), _row()])
  with pytest.raises(
    manifests.ManifestError, match="duplicate.csv:3: ID 'origin\\+clip1' already on line 2"
  ):
    manifests.read_manifest(duplicate)
  ragged = media_utils.write_manifest(tmp_path / "ragged.csv", [_row()])
  ragged.write_text(ragged.read_text() + "origin+x,only,three\n")
  with pytest.raises(manifests.ManifestError, match="ragged.csv:3: 3 fields, the header has 12"):
    manifests.read_manifest(ragged)


def test_a_manifest_that_is_not_utf8_names_the_file_and_line(tmp_path):
  path = tmp_path / "latin1.csv"
  header = ",".join(manifests.COLUMNS.values()).encode()
  path.write_bytes(header + b"\nfirst,ok\n" + "second,café".encode("latin-1") + b"\n")
  with pytest.raises(manifests.ManifestError, match=rf"{path}:3: not UTF-8 text \(byte 0xe9\)"):
    manifests.read_manifest(path)
  with pytest.raises(manifests.ManifestError, match="is a directory, not a manifest CSV"):
    manifests.read_manifest(tmp_path)
