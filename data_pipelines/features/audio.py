"""Audio features as the reference computes them: MFCC for the student, STFT for the ASR teacher.

Both give AUDIO_FRAMES_PER_VIDEO_FRAME rows per video frame at 25 fps (10 ms hop) and are cut or
wrap-padded to exactly that many rows, as the reference's data loader does.
"""

import numpy as np
import python_speech_features
import scipy.signal

from data_pipelines import schema


def fit_to_frames(features: np.ndarray, num_frames: int) -> np.ndarray:
  """Cuts to round(4 * num_frames) rows, or wrap-pads a shorter array to that length."""
  rows = int(round(schema.AUDIO_FRAMES_PER_VIDEO_FRAME * num_frames))
  if features.shape[0] == 0:
    raise ValueError("no audio frames to fit")
  if features.shape[0] < rows:
    features = np.pad(features, ((0, rows - features.shape[0]), (0, 0)), mode="wrap")
  return features[:rows]


def mfcc(samples: np.ndarray, sample_rate: int, fps: float = schema.FPS) -> np.ndarray:
  """13 MFCCs per 10 ms (at 25 fps) of the raw samples: python_speech_features as the reference."""
  return python_speech_features.mfcc(
      samples, samplerate=sample_rate, numcep=schema.NUM_MFCC,
      winlen=0.040 * 25 / fps, winstep=0.010 * 25 / fps, nfft=int(0.040 * sample_rate)
  ).astype(np.float32)


def stft_magnitude(samples: np.ndarray, sample_rate: int, fps: float = schema.FPS) -> np.ndarray:
  """|STFT| (frames, 321) of the peak- then RMS-normalised samples, as the reference.

  Periodic Hamming window of 40 ms, overlap 30 ms * 25 / fps, no boundary extension or padding,
  'spectrum' scaling. A silent clip gives zeros instead of the reference's division by zero.
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
  _, _, spectrum = scipy.signal.stft(samples, fs=sample_rate, window="hamming", nperseg=window,
                                     noverlap=overlap, boundary=None, padded=False)
  return np.abs(spectrum).T.astype(np.float32)
