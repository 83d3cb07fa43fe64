"""avcd predict on generated videos: face detection and crop, scoring, outputs, unscorable input."""

import json
import pathlib
import subprocess
import sys

import av
import cv2
import numpy as np
import pytest

from avcd import checkpoints, config_lib
from avcd.evaluation import calibration
from avcd.models import build
from avcd.serving import export, options, predict
from data_pipelines.building.synthetic import generator
from data_pipelines.features import face_crop, face_detectors, video
from tests import media_utils
from tests.conftest import REPO

pytest.importorskip("tensorflow")

FRAME_HEIGHT, FRAME_WIDTH = 240, 320
FACE_SIDE = 168  # the synthetic 112 px face image, enlarged
FACE_TOP, FACE_LEFT = 36, 60
WINDOW_FLAGS = ("--window=20", "--stride=10")
# What each unscorable video's one line says.
REASONS = dict(
  no_audio="no audio track",
  no_face="no face found",
  short="too short: 10 frames (0.40 s at 25 fps), at least 25 needed",
  broken="unreadable file",
  audio_only="no video track",
  missing="file not found",
)
pytestmark = pytest.mark.slow


def synthetic_faces() -> np.ndarray:
  """(60, 112, 112) uint8 faces of a synthetic talking clip."""
  spec = generator.SyntheticSpec(test_clips=2, min_frames=60, max_frames=60, num_speakers=10)
  return generator.synthesize_clip(spec, "test", 1).example["faces"]


def face_in_scene(faces: np.ndarray) -> np.ndarray:
  """RGB frames of the faces, enlarged, on a green background and moving right 1 px a frame."""
  frames = np.empty((len(faces), FRAME_HEIGHT, FRAME_WIDTH, 3), np.uint8)
  frames[:] = (60, 110, 90)
  for t, face in enumerate(faces):
    face = cv2.resize(face, (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_CUBIC)
    left = FACE_LEFT + t
    frames[t, FACE_TOP : FACE_TOP + FACE_SIDE, left : left + FACE_SIDE] = face[..., None]
  return frames


def speech(num_frames: int) -> np.ndarray:
  return media_utils.tone(num_frames / 25, 16_000, frequency=220.0)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
  """Paths of videos that can and cannot be scored."""
  folder = tmp_path_factory.mktemp("media")
  faces = synthetic_faces()
  scene = face_in_scene(faces)
  flat = media_utils.flat_frames(np.full(60, 128, np.uint8), FRAME_HEIGHT, FRAME_WIDTH)
  paths = dict(
    face=media_utils.write_video(folder / "face.mp4", scene, audio=speech(60)),
    cropped=media_utils.write_video(
      folder / "cropped.mp4", np.repeat(faces[..., None], 3, -1), audio=speech(60)
    ),
    no_audio=media_utils.write_video(folder / "no_audio.mp4", scene[:40]),
    no_face=media_utils.write_video(folder / "no_face.mp4", flat, audio=speech(60)),
    short=media_utils.write_video(folder / "short.mp4", scene[:10], audio=speech(10)),
    audio_only=media_utils.write_wav(folder / "audio_only.wav", speech(40)),
    broken=folder / "broken.mp4",
    missing=folder / "missing.mp4",
  )
  paths["broken"].write_bytes(np.random.default_rng(0).bytes(4096))
  return dict(paths=paths)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """A model checkpoint of a configs/tiny.py student, and its SavedModel."""
  folder = tmp_path_factory.mktemp("model")
  config = config_lib.load_config(str(REPO / "configs" / "tiny.py"))
  _, params, batch_stats = build.split_model(build.build_student(config.model, config.seed))
  checkpoints.save_model(
    folder / "checkpoint", config=config, student_state=dict(params=params, batch_stats=batch_stats)
  )
  export.export_saved_model(
    checkpoints.restore_student(folder / "checkpoint"), folder / "saved_model", platforms=("cpu",)
  )
  return dict(checkpoint=folder / "checkpoint", saved_model=folder / "saved_model")


def run_predict(*args) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "avcd.cli", "predict", *map(str, args)],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=300,
    check=False,
  )


@pytest.fixture(scope="module")
def predicted(model, media, tmp_path_factory):
  """`avcd predict` of every test video with the SavedModel: the process and its JSON report."""
  output = tmp_path_factory.mktemp("predictions")
  result = run_predict(
    *media["paths"].values(),
    f"--saved-model={model['saved_model']}",
    f"--output={output}",
    *WINDOW_FLAGS,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads((output / predict.JSON_FILE).read_text())
  return dict(
    result=result,
    output=output,
    records={pathlib.Path(r["path"]).stem: r for r in report["videos"]},
    model=report["model"],
  )


# --- windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "num_frames, window, stride, starts",
  [
    (60, 20, 10, [0, 10, 20, 30, 40]),
    (60, 50, 25, [0, 10]),
    (100, 50, 30, [0, 30, 50]),
    (30, 50, 25, [0]),
  ],
)
def test_windows_cover_the_clip_to_its_end(num_frames, window, stride, starts):
  assert predict.window_starts(num_frames, window, stride) == starts


def test_forged_segments_are_the_runs_at_or_above_the_threshold_in_time_order():
  probability = np.full(100, 0.1)
  probability[60:80] = 0.9  # 2.4-3.2 s, the more confident
  probability[10:30] = 0.7  # 0.4-1.2 s
  probability[45] = 0.99  # one frame: the median removes it
  assert predict.forged_segments(probability, 0.5) == [
    dict(start_s=0.4, end_s=1.2, score=0.7),
    dict(start_s=2.4, end_s=3.2, score=0.9),
  ]
  assert predict.forged_segments(probability, 0.8) == [dict(start_s=2.4, end_s=3.2, score=0.9)]
  assert predict.forged_segments(np.full(100, 0.2), 0.5) == []
  assert predict.forged_segments(np.array([0.2, np.nan, 0.9]), 0.5) is None


# --- avcd predict -----------------------------------------------------------------------------


def test_predict_scores_a_video_and_writes_table_json_and_plot(predicted, media):
  face = predicted["records"]["face"]
  assert face["status"] == "scored" and face["num_frames"] == 60 and not face["truncated"]
  detection = face["face_detection"]
  assert detection["detector"] == "yunet" and detection["found_fraction"] == 1.0
  assert (detection["faces"], detection["chosen"], detection["reason"]) == (1, 0, "only face")
  assert detection["sampled"] == detection["detected"] == 30
  assert 0.0 <= face["probability"] <= 1.0
  # The clip score is the mean of the frames' fake-class logits.
  np.testing.assert_allclose(face["score"], np.mean(face["frame_scores"]), atol=1e-5)
  assert [(w["start_frame"], w["end_frame"]) for w in face["windows"]] == [
    (s, s + 20) for s in (0, 10, 20, 30, 40)
  ]
  assert (predicted["output"] / face["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert face["segments"] == predict.forged_segments(np.array(face["frame_probabilities"]), 0.5)
  assert predicted["model"]["kind"] == "saved_model"
  table = predicted["result"].stdout.splitlines()
  assert table[0].split()[:5] == ["video", "frames", "seconds", "score", "P(fake)"]
  row = next(line for line in table if line.startswith(str(media["paths"]["face"])))
  assert f"{face['probability']:.4f}" in row and face["label"] in row
  assert "2 of 8 videos scored" in predicted["result"].stdout  # face and cropped


@pytest.mark.parametrize("name", sorted(REASONS))
def test_predict_gives_one_line_reason_per_unscorable_video(predicted, media, name):
  lines = [
    line
    for line in predicted["result"].stderr.splitlines()
    if line.startswith(f"cannot score {media['paths'][name]}: ")
  ]
  assert len(lines) == 1 and REASONS[name] in lines[0], predicted["result"].stderr[-2000:]
  record = predicted["records"][name]
  assert record["status"] == "skipped" and REASONS[name] in record["reason"]


def test_checkpoint_and_saved_model_score_alike(predicted, model, media):
  scorer = predict.CheckpointScorer(model["checkpoint"])
  inputs = predict.clip_inputs(media["paths"]["face"], predict.PredictOptions())
  # One window as long as the clip: a single shape to compile.
  record = predict.score_clip(scorer, inputs, predict.PredictOptions(window=60))
  exported = predicted["records"]["face"]
  for key in ("score", "probability", "raw_probability"):
    np.testing.assert_allclose(record[key], exported[key], rtol=0, atol=1e-4)
  np.testing.assert_allclose(record["frame_scores"], exported["frame_scores"], rtol=0, atol=1e-4)
  assert record["probability"] == record["raw_probability"]  # no calibration map


def test_a_calibration_map_of_the_checkpoint_is_applied(model, media):
  inputs = predict.clip_inputs(media["paths"]["face"], predict.PredictOptions())
  options = predict.PredictOptions(window=60)
  raw = predict.score_clip(predict.CheckpointScorer(model["checkpoint"]), inputs, options)
  fitted = calibration.Calibration(
    "platt", 2.0, -1.0, "validation", 10, checkpoint_dir=str(model["checkpoint"]), step=0
  )
  path = fitted.save(model["checkpoint"].parent)  # beside the checkpoint, as in a training run
  try:
    scorer = predict.CheckpointScorer(model["checkpoint"])
    record = predict.score_clip(scorer, inputs, options)
    uncalibrated = predict.CheckpointScorer(model["checkpoint"], calibrate=False)
    assert predict.score_clip(uncalibrated, inputs, options)["probability"] == pytest.approx(
      raw["probability"]
    )
  finally:
    path.unlink()
  assert scorer.source["calibration"]["method"] == "platt"
  logit = np.log(raw["raw_probability"]) - np.log1p(-raw["raw_probability"])
  assert record["raw_probability"] == pytest.approx(raw["raw_probability"], abs=1e-6)
  assert record["probability"] == pytest.approx(1 / (1 + np.exp(1.0 - 2.0 * logit)), abs=1e-5)
  assert record["windows"][0]["probability"] == pytest.approx(record["probability"])


def test_predict_finds_and_follows_a_real_talking_face_and_says_so(model, tmp_path):
  # The carphone sequence (a man talking in a car, QCIF, 29.97 fps) with a voice-like track.
  with av.open(str(media_utils.carphone())) as container:
    frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
  path = media_utils.write_video(
    tmp_path / "carphone.mp4", frames, fps=30000 / 1001, audio=speech(100)
  )
  result = run_predict(path, f"--workdir={model['checkpoint']}", f"--output={tmp_path / 'out'}")
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((tmp_path / "out" / predict.JSON_FILE).read_text())["videos"][0]
  detection = record["face_detection"]
  assert record["status"] == "scored" and record["num_frames"] == 100  # 4 s at 25 fps
  assert detection["detector"] == "yunet" and detection["faces"] == 1
  assert detection["reason"] == "only face" and detection["found_fraction"] == 1.0


def test_predict_options_default_to_the_face_pipeline_s_defaults():
  defaults = options.PredictOptions()
  assert (defaults.detector, defaults.crop_scale) == (
    face_crop.DEFAULT_DETECTOR,
    face_crop.DEFAULT_CROP_SCALE,
  )
  # The light options module names the detectors without importing OpenCV: the same set.
  assert set(options.DETECTORS) == {*face_detectors.DETECTORS, "none"}
  with pytest.raises(ValueError, match="detector must be one of"):
    options.PredictOptions(detector="dlib")


def test_without_detection_every_video_has_its_whole_frames_as_faces(media):
  inputs = predict.clip_inputs(media["paths"]["no_face"], predict.PredictOptions(detector="none"))
  assert inputs.face_detection is None and inputs.mfcc.shape == (240, 13)
  np.testing.assert_array_equal(inputs.faces, video.read_faces(media["paths"]["no_face"]).frames)


def test_predict_exits_non_zero_when_no_video_can_be_scored(model, media, tmp_path):
  paths = media["paths"]
  result = run_predict(
    paths["no_audio"],
    paths["broken"],
    "--detector=none",
    f"--workdir={model['checkpoint']}",
    f"--output={tmp_path}",
  )
  assert result.returncode == 1
  assert "0 of 2 videos scored" in result.stdout, result.stderr[-3000:]
  assert f"cannot score {paths['no_audio']}: no audio track" in result.stderr
  assert f"cannot score {paths['broken']}: unreadable file" in result.stderr


def test_predict_warns_of_audio_unlike_training_clips_and_names_directories(model, media, tmp_path):
  faces = np.repeat(synthetic_faces()[..., None], 3, -1)
  silent = media_utils.write_video(tmp_path / "silent.mp4", faces, audio=np.zeros_like(speech(60)))
  short = media_utils.write_video(tmp_path / "short_audio.mp4", faces, audio=speech(10))
  result = run_predict(
    silent,
    short,
    tmp_path,
    "--detector=none",
    f"--workdir={model['checkpoint']}",
    f"--output={tmp_path / 'out'}",
    *WINDOW_FLAGS,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  records = {
    pathlib.Path(r["path"]).name: r
    for r in json.loads((tmp_path / "out" / predict.JSON_FILE).read_text())["videos"]
  }
  assert records["silent.mp4"]["status"] == "scored"
  assert records["silent.mp4"]["warnings"] == ["audio is silent"]
  assert records["short_audio.mp4"]["warnings"][0].startswith("audio lasts 0.4")
  assert f"warning: {silent}: audio is silent" in result.stderr
  assert records[tmp_path.name]["reason"] == "is a directory, not a video file"


def test_predict_mistakes_are_one_line_before_any_video_is_read(model, media, tmp_path):
  (tmp_path / "a_file").write_text("")
  video = media["paths"]["face"]
  cases = [
    ([f"--workdir={tmp_path / 'nothing'}"], "--workdir=" + str(tmp_path / "nothing")),
    (
      [f"--workdir={model['checkpoint']}", f"--output={tmp_path / 'a_file'}"],
      "is a file, not a directory",
    ),
    ([f"--saved-model={model['checkpoint']}"], "is not an `avcd export` output"),
    ([f"--workdir={model['checkpoint']}", "--checkpoint=5"], "no checkpoint for step 5"),
    ([f"--workdir={model['checkpoint']}", "--window=0"], "window"),
    ([f"--workdir={model['checkpoint']}", "--threshold=1.5"], "threshold must be a probability"),
    ([f"--workdir={model['checkpoint']}", "--output=/proc/avcd-predict"], "cannot create it"),
  ]
  for args, message in cases:
    if not any(a.startswith("--output") for a in args):
      args = [*args, f"--output={tmp_path / 'out'}"]
    result = run_predict(video, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert message in result.stderr
