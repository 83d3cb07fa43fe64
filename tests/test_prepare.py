"""avcd prepare on generated media: round trip, rejects, exit status, interrupt and resume."""

import fcntl
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import schema
from data_pipelines.building import clip_store, clips, extraction, manifests, prepare, process_pool
from tests import media_utils
from tests.conftest import REPO

NUM_FRAMES = 25
# The manifests name media under the authors' kind of absolute path; tests rewrite it.
AUTHORS_ROOT = "/data2/someone/corpus"


def _write_clip(
  media_dir: pathlib.Path,
  name: str,
  *,
  seconds: float = 1.0,
  tone_hz: float = 300,
  wav: bool = False,
  lips: bool = False,
  audio_track: bool = True,
) -> dict:
  """Writes <name>.mp4 (grey frames, AAC tone) and optionally <name>.wav / <name>.npy.

  Returns the clip's manifest row (a real clip) with paths under AUTHORS_ROOT.
  """
  frames = round(seconds * schema.FPS)
  media_dir.mkdir(parents=True, exist_ok=True)
  media_utils.write_video(
    media_dir / f"{name}.mp4",
    media_utils.flat_frames(media_utils.grey_levels(frames)),
    audio=media_utils.tone(seconds, 16_000, tone_hz) if audio_track else None,
  )
  if wav:
    media_utils.write_wav(
      media_dir / f"{name}.wav", media_utils.tone(seconds, 16_000, tone_hz + 50)
    )
  if lips:
    media_utils.write_npy(media_dir / f"{name}.npy", media_utils.lip_features(frames, seed=frames))
  return {
    "ID_Name": name,
    "Audio_Path": f"{AUTHORS_ROOT}/{name}.wav" if wav else "",
    "Video_Path": f"{AUTHORS_ROOT}/{name}.mp4",
    "ENtire_Label": 0,
    "Audio_Label": 0,
    "Video_Label": 0,
    "Identi_Label": 1,
    "Sync_Label": 1,
    "Frame_Len": frames,
    "Audio_Len": round(seconds * 16_000),
    "FPS": 25.0,
    "AudioSamRate": 16_000,
  }


def _fake(row: dict) -> dict:
  return {**row, "ENtire_Label": 1, "Video_Label": 1, "Identi_Label": 0}


def _prefix(tmp_path) -> str:
  return f"{AUTHORS_ROOT}={tmp_path / 'media'}"


def _build(tmp_path, manifest_specs, **kwargs) -> prepare.Summary:
  builder = prepare.make_builder(
    tmp_path / "out",
    manifests=manifest_specs,
    path_prefix=[_prefix(tmp_path)],
    num_workers=2,
    progress_interval_s=0.0,
  )
  return prepare.prepare(builder, **kwargs)


def _read_split(dataset_dir: str, split: str) -> list[dict]:
  source = tfds.builder_from_directory(dataset_dir).as_data_source()[split]
  return [source[i] for i in range(len(source))]


def _assert_same_example(stored: dict, expected: dict) -> None:
  assert sorted(stored) == sorted(expected)
  for name, value in expected.items():
    got = stored[name]
    if name in schema.TEXT_FIELDS:
      assert got.decode() == value, name
    else:
      np.testing.assert_array_equal(got, value, err_msg=name)
      if np.ndim(value):
        assert got.dtype == value.dtype, name


def _run_cli(*args, **popen_kwargs):
  return subprocess.Popen(
    [sys.executable, "-m", "avcd.commands.prepare", *args],
    cwd=REPO,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    **popen_kwargs,
  )


def test_prepared_splits_hold_what_extract_clip_gives_in_manifest_order(tmp_path):
  media = tmp_path / "media"
  train = [
    _write_clip(media, "track_only", tone_hz=200),
    _fake(_write_clip(media, "with_wav", wav=True, tone_hz=300)),
    _write_clip(media, "with_lips", wav=True, lips=True, seconds=1.4, tone_hz=400),
  ]
  test = [
    _fake(_write_clip(media, "test_a", seconds=0.8, tone_hz=500)),
    _write_clip(media, "test_b", lips=True, tone_hz=600),
  ]
  train_csv = media_utils.write_manifest(tmp_path / "train_list.csv", train)
  test_csv = media_utils.write_manifest(tmp_path / "test_list.csv", test)

  summary = _build(tmp_path, [f"train={train_csv}", str(test_csv)])

  assert summary.splits == {
    "test_list": prepare.SplitCounts(written=2, rejected=0),
    "train": prepare.SplitCounts(written=3, rejected=0),
  }
  assert "train" in str(summary) and "total" in str(summary)
  for split, csv_path in (("train", train_csv), ("test_list", test_csv)):
    rows = manifests.read_manifest(csv_path, path_prefix=[_prefix(tmp_path)])
    stored = _read_split(summary.dataset_dir, split)
    assert [s["id"].decode() for s in stored] == [row.id for row in rows]
    for example, row in zip(stored, rows):
      _assert_same_example(example, clips.extract_clip(row))
  assert not (tmp_path / "out" / "_work" / "av_manifest" / "clips").exists()
  assert (tmp_path / "out" / "rejects.jsonl").read_text() == ""


def test_a_finished_build_leaves_no_work_directory_and_no_temporary_files(tmp_path, monkeypatch):
  private_tmp = tmp_path / "tmp"
  private_tmp.mkdir()
  monkeypatch.setenv("TMPDIR", str(private_tmp))  # the extraction workers'
  monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))  # this process's, read once
  csv_path = media_utils.write_manifest(tmp_path / "m.csv", [_write_clip(tmp_path / "media", "a")])

  _build(tmp_path, [f"test={csv_path}"])

  assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["av_manifest", "rejects.jsonl"]
  assert list(private_tmp.iterdir()) == []
  _build(tmp_path, [f"test={csv_path}"])  # reusing it leaves none either
  assert not (tmp_path / "out" / "_work").exists()


# Damage to a good clip's files and manifest values, and the reason each one is rejected with.
def _garbage_video(media, name):
  (media / f"{name}.mp4").write_bytes(b"\x00not a video" * 100)


def _silent_wav(media, name):
  media_utils.write_wav(media / f"{name}.wav", np.zeros(16_000))


def _long_wav(media, name):
  media_utils.write_wav(media / f"{name}.wav", media_utils.tone(3.0, 16_000))


def _short_lips(media, name):
  media_utils.write_npy(media / f"{name}.npy", np.zeros((NUM_FRAMES - 1, 512), np.float32))


BAD_CLIPS = {
  "missing_video": (None, {"Video_Path": f"{AUTHORS_ROOT}/absent.mp4"}, "video file not found"),
  "garbage_video": (_garbage_video, {}, "cannot decode video"),
  "too_few_frames": (None, {"Frame_Len": 40}, "has 25 decodable frames, 40 asked"),
  "missing_wav": (None, {"Audio_Path": f"{AUTHORS_ROOT}/absent.wav"}, "audio file not found"),
  "silent": (_silent_wav, {}, "audio is silent"),
  "length_mismatch": (_long_wav, {}, "audio lasts 3.00 s"),
  "bad_lips": (_short_lips, {}, "24 rows of lip features"),
}


def _write_bad_clips(media) -> list[dict]:
  rows = []
  for name, (damage, overrides, _) in BAD_CLIPS.items():
    row = _write_clip(media, name, wav=True)
    if damage is not None:
      damage(media, name)
    rows.append({**row, **overrides})
  rows.append(_write_clip(media, "no_audio", audio_track=False))
  return rows


def test_every_bad_clip_is_listed_with_its_reason_and_every_good_clip_is_kept(tmp_path):
  media = tmp_path / "media"
  good = [_write_clip(media, f"good_{i}", wav=i % 2 == 1, tone_hz=300 + 100 * i) for i in range(3)]
  bad = _write_bad_clips(media)
  rows = [good[0], *bad[:4], good[1], *bad[4:], good[2]]
  csv_path = media_utils.write_manifest(tmp_path / "all.csv", rows)

  summary = _build(tmp_path, [f"test={csv_path}"])

  assert summary.splits == {"test": prepare.SplitCounts(written=3, rejected=len(bad))}
  assert [e["id"].decode() for e in _read_split(summary.dataset_dir, "test")] == [
    "good_0",
    "good_1",
    "good_2",
  ]
  lines = pathlib.Path(summary.rejects_path).read_text().splitlines()
  rejects = [json.loads(line) for line in lines]
  reasons = {
    **{name: reason for name, (_, _, reason) in BAD_CLIPS.items()},
    "no_audio": "no audio stream",
  }
  assert [r["id"] for r in rejects] == [row["ID_Name"] for row in bad]
  for record in rejects:
    assert reasons[record["id"]] in record["reason"]
    assert record["manifest"] == str(csv_path) and record["split"] == "test"
    assert record["dataset"] == "av_manifest"
    assert record["line"] == 2 + [row["ID_Name"] for row in rows].index(record["id"])


def test_exit_status_is_1_only_when_nothing_is_usable_or_the_inputs_are_wrong(tmp_path):
  media = tmp_path / "media"
  bad_csv = media_utils.write_manifest(tmp_path / "bad.csv", _write_bad_clips(media)[:2])
  good_csv = media_utils.write_manifest(tmp_path / "good.csv", [_write_clip(media, "fine")])
  out = tmp_path / "out"
  common = [f"--path_prefix={_prefix(tmp_path)}", f"--output={out}", "--num_workers=1"]

  nothing = _run_cli(f"--manifest={bad_csv}", *common)
  _, stderr = nothing.communicate(timeout=120)
  assert nothing.returncode == 1 and "no usable clip, all 2 rejected" in stderr
  assert len((out / "rejects.jsonl").read_text().splitlines()) == 2

  mixed = _run_cli(f"--manifest={bad_csv}", f"--manifest=bad={good_csv}", *common, "--overwrite")
  stdout, _ = mixed.communicate(timeout=120)
  assert mixed.returncode == 0, stdout
  assert re.search(r"^ +bad +1 +2$", stdout, re.M), stdout

  fresh = tmp_path / "fresh"
  for wrong, message in (
    (
      [f"--manifest={good_csv}", "--path_prefix=no_equals_sign", f"--output={fresh}"],
      "not of the form OLD=NEW",
    ),
    (["--corpus=cmdfd", f"--output={fresh}"], "cmdfd needs manifest_dir"),
    ([f"--manifest={tmp_path / 'absent.csv'}", f"--output={fresh}"], "absent.csv"),
    (
      [f"--manifest={good_csv}", f"--path_prefix={_prefix(tmp_path)}", f"--output={out}"],
      f"from other inputs: split bad was built from {bad_csv}, {good_csv}, this run lists none",
    ),
  ):
    process = _run_cli(*wrong)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1 and message in stderr, (wrong, stderr)


def _ids_and_labels(dataset_dir: str, split: str) -> list[tuple[str, int]]:
  return [(e["id"].decode(), int(e["label"])) for e in _read_split(dataset_dir, split)]


def test_a_manifest_edited_in_place_is_refused_and_overwrite_replaces_the_dataset(tmp_path):
  media = tmp_path / "media"
  rows = [_write_clip(media, "a", tone_hz=300), _write_clip(media, "b", tone_hz=500)]
  csv_path = media_utils.write_manifest(tmp_path / "m.csv", rows)
  built = _build(tmp_path, [f"test={csv_path}"])
  media_utils.write_manifest(csv_path, [_fake(rows[0])])  # same path, other rows

  with pytest.raises(prepare.PrepareError) as refused:
    _build(tmp_path, [f"test={csv_path}"])

  assert str(refused.value) == (
    f"{built.dataset_dir} was prepared from other inputs: manifest {csv_path} has changed "
    "since; --overwrite rebuilds it (the old dataset is kept until the new one is complete)"
  )
  assert _ids_and_labels(built.dataset_dir, "test") == [("a", 0), ("b", 0)]
  rebuilt = _build(tmp_path, [f"test={csv_path}"], overwrite=True)
  assert _ids_and_labels(rebuilt.dataset_dir, "test") == [("a", 1)]
  assert sorted(p.name for p in (tmp_path / "out" / "av_manifest").iterdir()) == ["1.0.0"]
  assert _build(tmp_path, [f"test={csv_path}"]).splits == rebuilt.splits  # reused as it is


def test_a_changed_setting_is_named_when_the_dataset_is_refused(tmp_path):
  csv_path = media_utils.write_manifest(tmp_path / "m.csv", [_write_clip(tmp_path / "media", "a")])
  _build(tmp_path, [f"test={csv_path}"])
  builder = prepare.make_builder(
    tmp_path / "out",
    manifests=[f"test={csv_path}"],
    path_prefix=[_prefix(tmp_path), "/elsewhere=/here"],
    options=extraction.ExtractOptions(max_frames=10),
    num_workers=1,
  )

  with pytest.raises(prepare.PrepareError) as refused:
    prepare.prepare(builder)

  assert (
    f"from other inputs: --path_prefix was {_prefix(tmp_path)}, now {_prefix(tmp_path)}, "
    "/elsewhere=/here; --max_frames was None, now 10; --overwrite rebuilds it"
  ) in str(refused.value)


def test_a_failed_or_killed_rebuild_leaves_the_old_dataset_in_place(tmp_path):
  media = tmp_path / "media"
  good = media_utils.write_manifest(tmp_path / "good.csv", [_write_clip(media, "a")])
  bad = media_utils.write_manifest(
    tmp_path / "bad.csv", [{**_write_clip(media, "b"), "Video_Path": f"{AUTHORS_ROOT}/absent.mp4"}]
  )
  built = _build(tmp_path, [f"test={good}"])
  dataset_dir = pathlib.Path(built.dataset_dir)

  with pytest.raises(prepare.PrepareError, match="no usable clip"):
    _build(tmp_path, [f"test={bad}"], overwrite=True)

  assert _ids_and_labels(built.dataset_dir, "test") == [("a", 0)]
  # A rebuild killed while building leaves the old dataset moved aside; the next run puts it back.
  dataset_dir.rename(dataset_dir.parent / f"replaced_{dataset_dir.name}")
  assert _build(tmp_path, [f"test={good}"]).splits == built.splits
  assert sorted(p.name for p in dataset_dir.parent.iterdir()) == ["1.0.0"]


def test_a_dataset_prepared_before_manifest_digests_were_recorded_is_reused(tmp_path, caplog):
  media = tmp_path / "media"
  csv_path = media_utils.write_manifest(tmp_path / "m.csv", [_write_clip(media, "a")])
  built = _build(tmp_path, [f"test={csv_path}"])
  metadata_path = pathlib.Path(built.dataset_dir) / "metadata.json"
  metadata = json.loads(metadata_path.read_text())
  del metadata["manifest_sha256"]
  metadata_path.write_text(json.dumps(metadata))
  media_utils.write_manifest(csv_path, [_fake(_write_clip(media, "a"))])

  with caplog.at_level("WARNING"):
    reused = _build(tmp_path, [f"test={csv_path}"])

  assert reused.splits == built.splits
  assert _ids_and_labels(built.dataset_dir, "test") == [("a", 0)]
  assert "before avcd recorded its manifests' contents" in caplog.text
  with pytest.raises(prepare.PrepareError, match="--max_frames was None, now 5"):
    prepare.prepare(
      prepare.make_builder(
        tmp_path / "out",
        manifests=[f"test={csv_path}"],
        path_prefix=[_prefix(tmp_path)],
        options=extraction.ExtractOptions(max_frames=5),
      )
    )


def test_a_second_run_of_the_same_corpus_is_refused_while_one_holds_it(tmp_path):
  csv_path = media_utils.write_manifest(tmp_path / "m.csv", [_write_clip(tmp_path / "media", "a")])
  builder = prepare.make_builder(
    tmp_path / "out", manifests=[str(csv_path)], path_prefix=[_prefix(tmp_path)]
  )
  builder.work_dir.mkdir(parents=True)
  with open(builder.work_dir / "lock", "a") as held:
    fcntl.flock(held, fcntl.LOCK_EX)
    with pytest.raises(prepare.PrepareError, match="another avcd prepare is building"):
      prepare.prepare(builder)


def _finished_files(out: pathlib.Path) -> dict[pathlib.Path, int]:
  """The stored clips (path -> inode): a rewritten file would get a new inode."""
  store = out / "_work" / "av_manifest" / "clips"
  return {p: p.stat().st_ino for p in store.glob("*/*") if p.suffix in (".example", ".rejected")}


def _start_blocked_and_slow() -> None:
  # A parent (a test runner's worker, a job scheduler) may hand down SIGINT ignored or blocked:
  # exec keeps both. The CLI must undo them, or the interrupted build runs on to the end.
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
  os.nice(19)


# Only against a hang: the run is at nice 19, and on a loaded machine (the rest of the suite, a
# study beside it) it can take minutes to start and store its first clips.
INTERRUPT_DEADLINE_S = 900


def _run_cli_slowly(*args):
  """Runs the CLI at the lowest CPU priority, SIGINT ignored and blocked, in its own process group.

  On a loaded machine a build at normal priority can finish all its clips between two polls of
  `_interrupt_after`; at nice 19 it yields the CPU to the poll. It stays in the test's session:
  with scheduler autogroups (Linux's default) a new session would be a CPU group of its own,
  where nice has no effect against the test.
  """
  return _run_cli(*args, process_group=0, preexec_fn=_start_blocked_and_slow)


def _interrupt_after(process, out: pathlib.Path, finished: int, sig: int) -> None:
  """Sends `sig` to the run's process group once `finished` clips are stored.

  While waiting, checks that no dataset directory is visible before it is complete and that
  every visible stored clip is whole.
  """
  deadline = time.monotonic() + INTERRUPT_DEADLINE_S
  while len(_finished_files(out)) < finished:
    assert process.poll() is None, process.communicate()
    assert time.monotonic() < deadline
    assert not (out / "av_manifest" / "1.0.0").exists()
    time.sleep(0.02)
  os.killpg(process.pid, sig)
  process.communicate(timeout=60)
  assert not (out / "av_manifest" / "1.0.0").exists()
  store = clip_store.ClipStore(out / "_work" / "av_manifest" / "clips")
  features = schema.tfds_features()
  for key, reason in store.finished().items():
    if reason is None:
      features.deserialize_example_np(store.read_example(key))


def test_an_interrupted_build_resumes_without_redoing_or_losing_clips(tmp_path):
  media = tmp_path / "media"
  rows = [_write_clip(media, f"clip_{i:02d}", seconds=3.0, tone_hz=200 + 20 * i) for i in range(14)]
  rows.append(_write_clip(media, "unusable", seconds=3.0, audio_track=False))
  csv_path = media_utils.write_manifest(tmp_path / "test.csv", rows)
  out = tmp_path / "out"
  args = [
    f"--manifest=test={csv_path}",
    f"--path_prefix={_prefix(tmp_path)}",
    f"--output={out}",
    "--num_workers=1",
    "--keep_extracted",
    "--progress_interval_s=0",
  ]

  ctrl_c = _run_cli_slowly(*args)
  _interrupt_after(ctrl_c, out, finished=2, sig=signal.SIGINT)
  assert ctrl_c.returncode == 130
  killed = _run_cli_slowly(*args)
  _interrupt_after(killed, out, finished=len(_finished_files(out)) + 3, sig=signal.SIGKILL)
  assert killed.returncode == -signal.SIGKILL
  done_before = _finished_files(out)
  assert 5 <= len(done_before) < len(rows)
  (out / "av_manifest" / "incomplete.ABCDEF_1.0.0").mkdir(parents=True)  # as a killed TFDS write

  resumed = _run_cli(*args)
  stdout, stderr = resumed.communicate(timeout=300)

  assert resumed.returncode == 0, stderr
  assert f"{len(done_before)} finished by an earlier run" in stderr
  done_after = _finished_files(out)
  assert len(done_after) == len(rows)
  assert all(done_after[path] == inode for path, inode in done_before.items())
  assert not list((out / "av_manifest").glob("incomplete.*"))
  assert re.search(r"^ +test +14 +1$", stdout, re.M), stdout
  stored = _read_split(str(out / "av_manifest" / "1.0.0"), "test")
  assert [e["id"].decode() for e in stored] == [row["ID_Name"] for row in rows[:-1]]
  (row,) = manifests.read_manifest(
    media_utils.write_manifest(tmp_path / "one.csv", [rows[7]]), path_prefix=[_prefix(tmp_path)]
  )
  _assert_same_example(stored[7], clips.extract_clip(row))


def _square_unless_7(x: int) -> int:
  if x == 7:
    os._exit(3)  # pylint: disable=protected-access
  return x * x


def test_a_worker_that_dies_fails_only_its_own_item():
  results = dict(
    process_pool.imap_unordered(_square_unless_7, [(i,) for i in range(4, 10)], num_workers=1)
  )
  assert results.pop((7,)) == process_pool.WorkerDied()
  assert results == {(i,): i * i for i in range(4, 10) if i != 7}


def test_workers_that_cannot_start_are_an_error_not_a_rejected_item(tmp_path, monkeypatch):
  module = tmp_path / "vanishing_module.py"
  module.write_text("def square(x):\n  return x * x\n")
  monkeypatch.syspath_prepend(str(tmp_path))
  import vanishing_module  # pylint: disable=g-import-not-at-top,import-outside-toplevel

  module.unlink()  # new worker processes cannot import it any more
  with pytest.raises(process_pool.WorkerStartError, match="vanishing_module.square"):
    list(process_pool.imap_unordered(vanishing_module.square, [(2,)], num_workers=1))
