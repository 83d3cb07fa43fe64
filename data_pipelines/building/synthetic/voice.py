"""Speech for an utterance: a harmonic voice source and noise, shaped by each phoneme's formants.

Each phoneme present in the utterance filters the whole clip's source once (one FFT product), is
normalised to unit RMS so that loudness alone is set by the phoneme table, and is then faded in and
out where the phoneme sounds (attack/decay envelope, 10 ms crossfades). Vectorised over samples.
"""

import numpy as np
import scipy.ndimage

from data_pipelines import schema
from data_pipelines.building.synthetic import phonemes, speakers

SAMPLES_PER_FRAME = int(schema.SAMPLE_RATE / schema.FPS)
_HIGHEST_HARMONIC_HZ = 7600.0
_ATTACK_SECONDS = 0.012
_DECAY_TO = 0.75  # segment amplitude at its end, relative to its peak
_CROSSFADE_SECONDS = 0.010  # box filter width; applied twice (triangular 20 ms fade)
_SNR_DB = (25.0, 40.0)  # open-vowel RMS over the background noise floor
_PEAK_RMS = (1500.0, 5000.0)  # int16 RMS of an open vowel: the recording gain
_VOCODER_CUTOFF_HZ = (5000.0, 7000.0)
_VOCODER_INTONATION = 0.3  # vocoders flatten the pitch contour to this fraction
PRE_EMPHASIS = 0.97  # python_speech_features.mfcc's preemph
# |1 - 0.97 exp(-i 2 pi f / 16 kHz)| near an open vowel's first formants (~900 Hz): with
# equal_mfcc_energy, sounds are scaled by it so that an open vowel keeps its raw loudness.
_OPEN_VOWEL_PRE_EMPHASIS_GAIN = 0.35
_INT16_PEAK = 32000.0


def render_speech(
  rng: np.random.Generator,
  utterance: phonemes.Utterance,
  voice: speakers.Voice,
  *,
  vocoded: bool,
  equal_mfcc_energy: bool = False,
) -> np.ndarray:
  """int16 samples at schema.SAMPLE_RATE covering the utterance's frames (640 per frame).

  vocoded: synthesise as a voice-conversion vocoder would: a flattened pitch contour, no breath
  noise, no energy above a cutoff between 5 and 7 kHz.
  equal_mfcc_energy: give each phoneme's sound unit RMS after the MFCC's pre-emphasis instead of
  before it, over every 40 ms MFCC window. MFCC c0 is the log energy of the pre-emphasised
  signal, which favours high formants: with raw RMS equal, the members of a group differ in c0
  (iy above uw, s above f, n above m), and because the wider mouth of each group also has the
  higher formants, "energy vs mouth width" would tell a within-group phoneme swap apart. Made
  equal window by window (not just on average: the energy of a low formant between sparse
  harmonics follows the pitch, and its log would average lower), a group's members share c0 and
  only their spectral shape tells them apart.
  """
  num_frames = len(utterance.phonemes)
  num_samples = num_frames * SAMPLES_PER_FRAME
  frequencies = np.fft.rfftfreq(num_samples, 1.0 / schema.SAMPLE_RATE)
  f0 = _pitch_contour(rng, num_frames, voice, vocoded)
  harmonics = np.fft.rfft(_harmonic_source(f0))
  noise = np.fft.rfft(rng.standard_normal(num_samples))
  lowpass = 1.0
  if vocoded:
    cutoff = rng.uniform(*_VOCODER_CUTOFF_HZ)
    lowpass = np.clip((cutoff - frequencies) / 400.0, 0.0, 1.0)
  breathiness = 0.0 if vocoded else voice.breathiness

  phoneme_per_sample = np.repeat(utterance.phonemes, SAMPLES_PER_FRAME)
  amplitude = np.repeat(utterance.emphasis, SAMPLES_PER_FRAME) * _segment_envelope(utterance)
  fade = int(_CROSSFADE_SECONDS * schema.SAMPLE_RATE)
  speech = np.zeros(num_samples)
  for phoneme_id in np.unique(phoneme_per_sample):
    phoneme = phonemes.PHONEMES[phoneme_id]
    if phoneme_id == phonemes.SILENCE:
      continue
    envelope = lowpass * _formant_envelope(phoneme, voice.formant_scale, frequencies)
    sound = _unit_rms(np.fft.irfft(noise * envelope, num_samples))
    if phoneme.voiced:
      sound = _unit_rms(
        _unit_rms(np.fft.irfft(harmonics * envelope, num_samples)) + breathiness * sound
      )
    if equal_mfcc_energy:
      sound = _OPEN_VOWEL_PRE_EMPHASIS_GAIN * sound / _local_rms(pre_emphasised(sound))
    gain = np.where(phoneme_per_sample == phoneme_id, phoneme.loudness * amplitude, 0.0)
    for _ in range(2):
      gain = scipy.ndimage.uniform_filter1d(gain, fade, mode="nearest")
    speech += gain * sound

  noise_floor = 10.0 ** (-rng.uniform(*_SNR_DB) / 20.0)
  speech += noise_floor * rng.standard_normal(num_samples)
  samples = rng.uniform(*_PEAK_RMS) * speech
  peak = np.max(np.abs(samples))
  if equal_mfcc_energy and peak > _INT16_PEAK:
    # A recording levelled to its peak: clipping would change c0 more for some phonemes
    # (the loud, low, peaky ones) than for others.
    samples *= _INT16_PEAK / peak
  return np.clip(np.round(samples), -32768, 32767).astype(np.int16)


def _pitch_contour(rng, num_frames, voice, vocoded) -> np.ndarray:
  """f0 per sample: a slow random log-f0 contour around the speaker's pitch, plus jitter."""
  contour = scipy.ndimage.gaussian_filter1d(rng.standard_normal(num_frames + 20), 4.0)[10:-10]
  contour *= voice.intonation / max(np.std(contour), 1e-6)
  if vocoded:
    contour *= _VOCODER_INTONATION
  else:
    contour += 0.005 * rng.standard_normal(num_frames)
  frame_centres = (np.arange(num_frames) + 0.5) * SAMPLES_PER_FRAME
  log_f0 = np.interp(np.arange(num_frames * SAMPLES_PER_FRAME), frame_centres, contour)
  return voice.f0 * np.exp(log_f0)


def _harmonic_source(f0: np.ndarray) -> np.ndarray:
  """Sum of cos(k * phase) for k = 1..K, all harmonics below 7.6 kHz, via the Dirichlet kernel."""
  num_harmonics = int(_HIGHEST_HARMONIC_HZ // np.max(f0))
  phase = np.mod(2.0 * np.pi * np.cumsum(f0) / schema.SAMPLE_RATE, 2.0 * np.pi)
  half = np.sin(0.5 * phase)
  near_zero = np.abs(half) < 1e-9
  kernel = np.sin((num_harmonics + 0.5) * phase) / np.where(near_zero, 1.0, 2.0 * half) - 0.5
  return np.where(near_zero, float(num_harmonics), kernel)


def _formant_envelope(phoneme, formant_scale, frequencies) -> np.ndarray:
  """Sum of the phoneme's resonances (Lorentzian magnitude), scaled to the speaker's tract."""
  envelope = np.zeros_like(frequencies)
  for centre, bandwidth, amplitude in phoneme.formants:
    offset = (frequencies - centre * formant_scale) / (0.5 * bandwidth * formant_scale)
    envelope += amplitude / np.sqrt(1.0 + offset * offset)
  return envelope


def _segment_envelope(utterance) -> np.ndarray:
  """Per sample: a linear attack over 12 ms, then a linear decay to 75% at the segment's end."""
  starts = np.flatnonzero(np.diff(utterance.segments, prepend=-1))
  lengths = np.diff(np.append(starts, len(utterance.segments))) * SAMPLES_PER_FRAME
  position = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
  attack = np.minimum(1.0, position / (_ATTACK_SECONDS * schema.SAMPLE_RATE))
  decay = 1.0 - (1.0 - _DECAY_TO) * position / np.repeat(lengths, lengths)
  return attack * decay


def pre_emphasised(x: np.ndarray) -> np.ndarray:
  """x[n] - 0.97 x[n - 1], the first step of python_speech_features' MFCC (its default)."""
  return np.append(x[:1], x[1:] - PRE_EMPHASIS * x[:-1])


def _local_rms(x: np.ndarray) -> np.ndarray:
  """RMS over the MFCC's 40 ms window around every sample."""
  window = int(0.040 * schema.SAMPLE_RATE)
  return np.sqrt(np.maximum(scipy.ndimage.uniform_filter1d(x * x, window, mode="wrap"), 1e-24))


def _rms(x: np.ndarray) -> float:
  return max(float(np.sqrt(np.mean(x * x))), 1e-12)


def _unit_rms(x: np.ndarray) -> np.ndarray:
  return x / _rms(x)
