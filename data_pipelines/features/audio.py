"""Audio: decoding to 16 kHz mono, and the features the reference computes from it.

MFCC feeds the student, STFT the ASR teacher. Both give AUDIO_FRAMES_PER_VIDEO_FRAME rows per video
frame at 25 fps (10 ms hop) and are cut or wrap-padded to exactly that many rows, as the reference's
data loader does.

Sample scale: `load_audio` returns samples on the 16-bit integer scale (full scale 32768), the
values `scipy.io.wavfile.read` gives for the reference's 16-bit wav files, from which its MFCC is
computed. The STFT is normalised and does not depend on the scale; the MFCC's c0 (log frame
energy) does, by 2 ln(scale).
"""

import math
import pathlib

import av
import numpy as np
import python_speech_features
import scipy.signal

from data_pipelines import schema

INT16_FULL_SCALE = 32768.0

# Multiplier from each decoded sample dtype to the 16-bit integer scale (u8 is offset by 128 first).
_TO_INT16_SCALE = {
  np.dtype(np.uint8): 256.0,
  np.dtype(np.int16): 1.0,
  np.dtype(np.int32): 2.0**-16,
  np.dtype(np.int64): 2.0**-48,
  np.dtype(np.float32): INT16_FULL_SCALE,
  np.dtype(np.float64): INT16_FULL_SCALE,
}


class AudioError(ValueError):
  """Audio that cannot be read; the message names the file and the problem."""


def load_audio(path) -> tuple[np.ndarray, int]:
  """Decodes a wav file or a video's audio track to 16 kHz mono.

  Any container, codec, sample rate and channel count FFmpeg (inside PyAV) reads is accepted.
  Channels are averaged; other rates are resampled with scipy's polyphase FIR resampler
  (`resample_poly`, Kaiser window): linear phase with its delay removed, so samples stay aligned
  with the video, and an exact output length of ceil(n * 16000 / rate), independent of the FFmpeg
  build (FFmpeg's own resampler buffers and shifts samples by its filter delay).

  Args:
    path: the audio or video file.

  Returns:
    (samples, 16000): float32 (n,) on the 16-bit integer scale (see the module docstring).

  Raises:
    FileNotFoundError: the file does not exist.
    AudioError: the file has no audio stream or cannot be decoded.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: audio file not found")
  return decode_audio(str(path), what=str(path))


def decode_audio(source, *, what: str) -> tuple[np.ndarray, int]:
  """load_audio of an open file object or a path; `what` names it in errors."""
  try:
    with av.open(source) as container:
      if not container.streams.audio:
        raise AudioError(f"{what}: no audio stream")
      stream = container.streams.audio[0]
      chunks = [_to_channels_first(frame) for frame in container.decode(stream)]
      rate = stream.codec_context.sample_rate
  except av.error.FFmpegError as e:
    raise AudioError(f"{what}: cannot decode audio: {e}") from e
  if not chunks:
    return np.zeros(0, np.float32), schema.SAMPLE_RATE
  samples = np.concatenate(chunks, axis=1).mean(axis=0)
  if rate != schema.SAMPLE_RATE:
    divisor = math.gcd(rate, schema.SAMPLE_RATE)
    samples = scipy.signal.resample_poly(samples, schema.SAMPLE_RATE // divisor, rate // divisor)
  return samples.astype(np.float32), schema.SAMPLE_RATE


def _to_channels_first(frame: av.AudioFrame) -> np.ndarray:
  """One decoded frame as float64 (channels, samples) on the 16-bit integer scale."""
  data = frame.to_ndarray()
  channels = frame.layout.nb_channels
  if not frame.format.is_planar:  # interleaved: one row of samples * channels values
    data = data.reshape(-1, channels).T
  offset = 128.0 if data.dtype == np.uint8 else 0.0
  return (data.astype(np.float64) - offset) * _TO_INT16_SCALE[data.dtype]


def fit_to_frames(features: np.ndarray, num_frames: int) -> np.ndarray:
  """Cuts to round(4 * num_frames) rows, or wrap-pads a shorter array to that length."""
  rows = int(round(schema.AUDIO_FRAMES_PER_VIDEO_FRAME * num_frames))
  if features.shape[0] == 0:
    raise ValueError("no audio frames to fit")
  if features.shape[0] < rows:
    features = np.pad(features, ((0, rows - features.shape[0]), (0, 0)), mode="wrap")
  return features[:rows]


def mfcc(samples: np.ndarray, sample_rate: int, fps: float = schema.FPS) -> np.ndarray:
  """13 MFCCs per 10 ms (at 25 fps) of the raw samples: python_speech_features as the reference.

  The samples are taken in float64, as the reference's int16 samples are promoted. An empty clip
  gives no rows; a silent one gives finite values (the library floors zero energies at machine eps).
  """
  samples = np.asarray(samples, np.float64)
  if samples.size == 0:
    return np.zeros((0, schema.NUM_MFCC), np.float32)
  return python_speech_features.mfcc(
    samples,
    samplerate=sample_rate,
    numcep=schema.NUM_MFCC,
    winlen=0.040 * 25 / fps,
    winstep=0.010 * 25 / fps,
    nfft=int(0.040 * sample_rate),
  ).astype(np.float32)


def stft_magnitude(samples: np.ndarray, sample_rate: int, fps: float = schema.FPS) -> np.ndarray:
  """|STFT| (frames, int(0.04 * rate) // 2 + 1) of the peak- then RMS-normalised samples.

  As the reference: periodic Hamming window of 40 ms, overlap 30 ms * 25 / fps, no boundary
  extension or padding, 'spectrum' scaling (321 bins at 16 kHz). A silent clip gives zeros instead
  of the reference's division by zero; a clip shorter than one window gives no rows.
  """
  samples = np.asarray(samples, np.float64)
  peak = np.max(np.abs(samples)) if samples.size else 0.0
  if peak > 0:
    samples = samples / peak
    samples = samples / np.sqrt(np.mean(np.square(samples)))
  window = int(0.040 * sample_rate)
  overlap = int(0.030 * sample_rate * 25 / fps)
  if samples.size < window:
    return np.zeros((0, window // 2 + 1), np.float32)
  _, _, spectrum = scipy.signal.stft(
    samples,
    fs=sample_rate,
    window="hamming",
    nperseg=window,
    noverlap=overlap,
    boundary=None,
    padded=False,
  )
  return np.abs(spectrum).T.astype(np.float32)
