"""Audio, video and lip features against the reference's library calls and generated media."""

import math

import av
import cv2
import numpy as np
import pytest
import python_speech_features
import scipy.io.wavfile
import scipy.signal

from data_pipelines import schema
from data_pipelines.features import audio, lips, video
from tests import media_utils


def _speech_like(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
  """Int16-valued samples: two tones under noise, as the reference reads 16-bit wav files."""
  rng = np.random.default_rng(seed)
  signal = media_utils.tone(seconds, sample_rate, 220) + media_utils.tone(
    seconds, sample_rate, 1300
  )
  signal += 0.05 * rng.standard_normal(signal.shape)
  return np.round(signal * 12000).astype(np.int16)


# --- audio features --------------------------------------------------------------------------


@pytest.mark.parametrize("sample_rate", [16_000, 8_000, 48_000])
def test_mfcc_matches_python_speech_features_as_the_reference_calls_it(sample_rate):
  samples = _speech_like(1.3, sample_rate)
  expected = python_speech_features.mfcc(
    samples,
    sample_rate,
    numcep=13,
    winlen=0.040 * 25 / 25.0,
    winstep=0.010 * 25 / 25.0,
    nfft=int(0.040 * sample_rate),
  )
  got = audio.mfcc(samples.astype(np.float32), sample_rate)
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("sample_rate", [16_000, 8_000, 48_000])
def test_stft_matches_scipy_as_the_reference_calls_it(sample_rate):
  samples = _speech_like(1.3, sample_rate)
  normalised = samples / np.max(np.abs(samples))
  normalised = normalised / np.sqrt(np.mean(normalised**2))
  _, _, spectrum = scipy.signal.stft(
    normalised,
    fs=sample_rate,
    window="hamming",
    nperseg=int(0.040 * sample_rate),
    noverlap=int(0.030 * sample_rate * 25 / 25.0),
    boundary=None,
    padded=False,
  )
  got = audio.stft_magnitude(samples.astype(np.float32), sample_rate)
  np.testing.assert_allclose(got, np.abs(spectrum).T, rtol=0, atol=1e-5)
  assert got.shape[1] == int(0.040 * sample_rate) // 2 + 1


def test_features_of_a_clip_are_4_rows_per_frame_after_the_reference_wrap_padding():
  num_frames = 10
  samples = _speech_like(num_frames / 25, 16_000).astype(np.float32)
  mfcc, stft = audio.mfcc(samples, 16_000), audio.stft_magnitude(samples, 16_000)
  # 40 ms windows every 10 ms over 400 ms leave 4T - 3 rows.
  assert mfcc.shape == (4 * num_frames - 3, schema.NUM_MFCC)
  assert stft.shape == (4 * num_frames - 3, schema.NUM_STFT_BINS)
  fitted = audio.fit_to_frames(stft, num_frames)
  assert fitted.shape == (4 * num_frames, schema.NUM_STFT_BINS)
  np.testing.assert_array_equal(fitted[-3:], stft[:3])


def test_fit_to_frames_wraps_short_and_cuts_long_features():
  short = np.arange(10).reshape(5, 2)
  np.testing.assert_array_equal(audio.fit_to_frames(short, 3)[:, 0], np.arange(12) % 5 * 2)
  long = np.arange(40).reshape(20, 2)
  np.testing.assert_array_equal(audio.fit_to_frames(long, 3), long[:12])
  with pytest.raises(ValueError, match="no audio frames"):
    audio.fit_to_frames(np.zeros((0, 2)), 3)


def test_silent_and_empty_clips_do_not_divide_by_zero():
  with np.errstate(all="raise"):
    silent_mfcc = audio.mfcc(np.zeros(16_000, np.float32), 16_000)
    silent_stft = audio.stft_magnitude(np.zeros(16_000, np.float32), 16_000)
    empty_mfcc = audio.mfcc(np.zeros(0, np.float32), 16_000)
    empty_stft = audio.stft_magnitude(np.zeros(0, np.float32), 16_000)
  assert np.all(np.isfinite(silent_mfcc)) and silent_mfcc.shape == (97, schema.NUM_MFCC)
  assert silent_stft.shape == (97, schema.NUM_STFT_BINS) and not np.any(silent_stft)
  assert empty_mfcc.shape == (0, schema.NUM_MFCC)
  assert empty_stft.shape == (0, schema.NUM_STFT_BINS)


# --- load_audio ------------------------------------------------------------------------------


def test_load_audio_resamples_a_44k_stereo_int16_wav_to_16k_mono(tmp_path):
  left = media_utils.tone(1.0, 44_100, 440, amplitude=0.6)
  right = media_utils.tone(1.0, 44_100, 440, amplitude=0.2)
  path = media_utils.write_wav(tmp_path / "stereo.wav", np.stack([left, right], 1), 44_100)
  samples, rate = audio.load_audio(path)
  assert rate == 16_000 and samples.dtype == np.float32
  assert samples.shape == (math.ceil(44_100 * 160 / 441),)
  # The mean of the channels, on the 16-bit scale, sampled at 16 kHz (filter edges excluded).
  expected = media_utils.tone(1.0, 16_000, 440, amplitude=0.4) * 32767
  np.testing.assert_allclose(samples[300:-300], expected[300:-300], atol=1e-3 * 0.4 * 32767)


def test_load_audio_reads_16k_int16_wav_exactly_as_scipy(tmp_path):
  path = media_utils.write_wav(tmp_path / "mono.wav", media_utils.tone(0.5, 16_000), 16_000)
  samples, _ = audio.load_audio(path)
  np.testing.assert_array_equal(samples, scipy.io.wavfile.read(path)[1].astype(np.float32))


def test_load_audio_reads_the_aac_track_of_an_mp4(tmp_path):
  t = np.arange(48_000) / 48_000
  chirp = 0.5 * scipy.signal.chirp(t, 200, 1.0, 3000)
  path = media_utils.write_video(
    tmp_path / "clip.mp4",
    media_utils.flat_frames(np.full(25, 128)),
    audio=chirp,
    sample_rate=48_000,
  )
  samples, rate = audio.load_audio(path)
  expected = 0.5 * scipy.signal.chirp(np.arange(16_000) / 16_000, 200, 1.0, 3000) * 32768
  assert rate == 16_000
  assert 16_000 <= samples.size <= 16_000 + 1024  # AAC pads to whole 1024-sample frames
  lag = np.argmax(scipy.signal.correlate(samples, expected)) - (expected.size - 1)
  assert lag == 0
  assert np.corrcoef(samples[:16_000], expected)[0, 1] > 0.99


def test_load_audio_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.wav"):
    audio.load_audio(tmp_path / "missing.wav")
  silent_video = media_utils.write_video(
    tmp_path / "mute.mp4", media_utils.flat_frames(np.full(5, 90))
  )
  with pytest.raises(audio.AudioError, match="mute.mp4: no audio stream"):
    audio.load_audio(silent_video)
  garbage = tmp_path / "garbage.wav"
  garbage.write_bytes(b"RIFF but not really a wav file" * 10)
  with pytest.raises(audio.AudioError, match="garbage.wav: cannot decode"):
    audio.load_audio(garbage)


# --- video -----------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_read_faces_returns_the_first_frames_resized_to_112(tmp_path, codec):
  levels = media_utils.grey_levels(12)
  path = media_utils.write_video(
    tmp_path / "clip.mp4", media_utils.flat_frames(levels), fps=25, codec=codec
  )
  faces = video.read_faces(path, 8)
  assert faces.fps == 25.0
  assert faces.frames.shape == (8, schema.FACE_SIZE, schema.FACE_SIZE)
  assert faces.frames.dtype == np.uint8
  tolerance = 3 if codec == "libx264" else 6  # qp 0 H.264 is lossless in YUV; mpeg4 is not
  np.testing.assert_allclose(faces.frames.mean(axis=(1, 2)), levels[:8], atol=tolerance)
  assert video.read_faces(path).frames.shape[0] == 12


def test_read_faces_luma_rules(tmp_path):
  red = np.zeros((3, 48, 64, 3), np.uint8)
  red[..., 0] = 200
  path = media_utils.write_video(tmp_path / "red.mp4", red)
  bt601 = video.read_faces(path, luma="bt601").frames.mean()
  reference = video.read_faces(path, luma="reference_bgr").frames.mean()
  assert abs(bt601 - 0.299 * 200) < 4
  assert abs(reference - 0.114 * 200) < 4


def test_read_faces_matches_cv2_grey_then_bilinear_resize(tmp_path):
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
  path = media_utils.write_video(tmp_path / "noise.mp4", frames)
  faces = video.read_faces(path, luma="reference_bgr").frames
  with av.open(str(path)) as container:
    decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
  expected = [
    cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_BGR2GRAY), (112, 112), interpolation=cv2.INTER_LINEAR)
    for rgb in decoded
  ]
  np.testing.assert_array_equal(faces, np.stack(expected))


def test_read_faces_errors_name_the_file(tmp_path):
  path = media_utils.write_video(
    tmp_path / "short.mp4",
    media_utils.flat_frames(np.full(5, 90)),
    audio=media_utils.tone(0.2, 16_000),
  )
  with pytest.raises(video.VideoError, match="short.mp4: has 5 decodable frames, 9 asked"):
    video.read_faces(path, 9)
  with pytest.raises(FileNotFoundError, match="nothing.mp4"):
    video.read_faces(tmp_path / "nothing.mp4")
  wav = media_utils.write_wav(tmp_path / "sound.wav", media_utils.tone(0.2, 16_000))
  with pytest.raises(video.VideoError, match="sound.wav: no video stream"):
    video.read_faces(wav)
  truncated = tmp_path / "truncated.mp4"
  truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  with pytest.raises(video.VideoError, match="truncated.mp4"):
    video.read_faces(truncated)
  with pytest.raises(ValueError, match="luma"):
    video.read_faces(path, luma="bt709")


# --- lips ------------------------------------------------------------------------------------


def test_load_lips_returns_the_first_rows(tmp_path):
  features = media_utils.lip_features(30)
  path = media_utils.write_npy(tmp_path / "clip.npy", features)
  np.testing.assert_array_equal(lips.load_lips(path, 20), features[:20])


@pytest.mark.parametrize(
  "array, problem",
  [
    (np.zeros((30, 256), np.float32), r"shape \(30, 256\)"),
    (np.zeros((30,), np.float32), r"shape \(30,\)"),
    (np.zeros((10, 512), np.float32), "10 rows of lip features, the clip needs 20"),
    (np.full((30, 512), np.nan, np.float32), "non-finite"),
    (np.array(["a"] * 30), "dtype"),
  ],
)
def test_load_lips_rejects_bad_arrays(tmp_path, array, problem):
  path = media_utils.write_npy(tmp_path / "bad.npy", array)
  with pytest.raises(lips.LipsError, match=f"bad.npy: .*{problem}"):
    lips.load_lips(path, 20)


def test_load_lips_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="none.npy"):
    lips.load_lips(tmp_path / "none.npy", 1)
  text = tmp_path / "text.npy"
  text.write_text("not an array")
  with pytest.raises(lips.LipsError, match="text.npy: not a readable .npy"):
    lips.load_lips(text, 1)
