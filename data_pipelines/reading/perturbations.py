"""Named, seeded, parameterised degradations of decoded media, for robustness evaluation.

A perturbation acts on a clip's media as the pipelines hold them right before features are
computed: `faces`, (T, H, W) uint8 grey face crops at 25 fps, and `samples`, float32 at 16 kHz on
the 16-bit integer scale (data_pipelines.features.audio). It returns media of the same shapes, so
the clip keeps its frames and its audio its length, and everything downstream (MFCC, the model)
runs as for a clean clip.

Each perturbation has a parameter and a list of default levels, mildest first; a level is applied
as `perturbation.apply(faces, samples, level, rng)`. Its `identity` level (None for the codecs,
which have no setting that leaves media untouched) returns the media unchanged. Randomness (noise)
comes only from `rng`, which the caller derives from a seed and the clip, so a degraded corpus is
the same on every run and machine; the codecs run single-threaded on padded frames, which makes
them deterministic too (tested).

Video: `h264_crf` and `h264_bitrate` re-encode with x264 (PyAV's FFmpeg), `downscale` shrinks and
re-enlarges (OpenCV's area and bilinear filters), `blur` is a Gaussian blur and `noise` Gaussian
pixel noise (OpenCV, numpy), `fps` lowers the frame rate (each frame held until the next one of
the lower rate: what a 25 fps player shows of such a video). Audio: `snr` adds white noise at a
signal-to-noise ratio, `aac` and `mp3` re-encode at a bitrate (FFmpeg's AAC encoder, LAME),
`resample` goes down to a sample rate and back (scipy's polyphase filter), `edge_silence` mutes
the first and last seconds.

Specs, as `avcd eval --perturbations` takes them: `NAME` (its default levels) or
`NAME:LEVEL:LEVEL...`, several joined by commas, e.g. `h264_crf:28:40,snr,blur:2`; `all` is every
perturbation at its default levels.
"""

import dataclasses
import fractions
import io
import math
from collections.abc import Callable, Sequence

import av
import cv2
import numpy as np
import scipy.signal

from data_pipelines import schema
from data_pipelines.features import audio

INT16_FULL_SCALE = 32768.0


@dataclasses.dataclass(frozen=True)
class Perturbation:
  name: str
  modality: str  # 'video' or 'audio'
  parameter: str  # what a level is, with its unit
  levels: tuple  # default levels, mildest first
  identity: float | None  # the level that changes nothing (None: only "not applied")
  function: Callable  # (faces or samples, level, rng) -> same shape and dtype

  def apply(
    self, faces: np.ndarray, samples: np.ndarray, level, rng: np.random.Generator
  ) -> tuple[np.ndarray, np.ndarray]:
    """(faces, samples) degraded at `level` (None: unchanged)."""
    if level is None:
      return faces, samples
    if self.modality == "video":
      out = self.function(faces, level, rng)
      if out.shape != faces.shape or out.dtype != faces.dtype:
        raise AssertionError(f"{self.name} changed the faces' shape or dtype")
      return out, samples
    out = self.function(samples, level, rng)
    if out.shape != samples.shape:
      raise AssertionError(f"{self.name} changed the audio's length")
    return faces, out.astype(samples.dtype)


# ---- video ---------------------------------------------------------------------------------------


def _encode_decode_video(faces: np.ndarray, options: dict[str, str]) -> np.ndarray:
  """The faces through x264 in an MP4 in memory (yuv420p, as platforms deliver) and back.

  The grey face is the luma plane and the chroma planes are neutral, written and read directly.
  Frames are widened to a multiple of 64 pixels by repeating the right edge (and cut back after
  decoding): at other widths x264 read past the rows' ends, and its output differed from run to
  run.
  """
  buffer = io.BytesIO()
  height, width = faces.shape[1:]
  if height % 2:
    raise ValueError(f"x264 in yuv420p needs an even frame height, got {height}")
  padded = -(-width // 64) * 64
  faces = np.pad(faces, ((0, 0), (0, 0), (0, padded - width)), mode="edge")
  neutral_chroma = np.full((height // 2, padded), 128, np.uint8)  # U then V, each (h/2, w/2)
  with av.open(buffer, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=fractions.Fraction(int(schema.FPS)))
    stream.width, stream.height, stream.pix_fmt = padded, height, "yuv420p"
    stream.options = {"preset": "medium", "threads": "1", **options}
    if "b" in options:
      stream.bit_rate = int(options["b"])
    for face in faces:
      frame = av.VideoFrame.from_ndarray(np.vstack([face, neutral_chroma]), format="yuv420p")
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  buffer.seek(0)
  with av.open(buffer) as container:
    decoded = [frame.to_ndarray()[:height, :width] for frame in container.decode(video=0)]
  if len(decoded) != len(faces):
    raise RuntimeError(f"x264 returned {len(decoded)} frames for {len(faces)}")
  return np.stack(decoded)


def h264_crf(faces, crf, rng):
  del rng
  return _encode_decode_video(faces, {"crf": str(int(crf))})


def h264_bitrate(faces, kbps, rng):
  """x264 at an average of `kbps` kbit/s (one-pass ABR, the VBV buffer two seconds of it)."""
  del rng
  rate = int(kbps * 1000)
  return _encode_decode_video(
    faces, {"b": str(rate), "maxrate": str(rate), "bufsize": str(2 * rate)}
  )


def downscale(faces, factor, rng):
  """Each face shrunk to `factor` of its side (area filter), then enlarged back (bilinear)."""
  del rng
  if factor >= 1:
    return faces
  height, width = faces.shape[1:]
  small = (max(1, round(width * factor)), max(1, round(height * factor)))
  return np.stack(
    [
      cv2.resize(
        cv2.resize(face, small, interpolation=cv2.INTER_AREA),
        (width, height),
        interpolation=cv2.INTER_LINEAR,
      )
      for face in faces
    ]
  )


def blur(faces, sigma, rng):
  """Gaussian blur of standard deviation `sigma` pixels (OpenCV's kernel size for it)."""
  del rng
  if sigma <= 0:
    return faces
  return np.stack([cv2.GaussianBlur(face, (0, 0), sigmaX=float(sigma)) for face in faces])


def noise(faces, std, rng):
  """Gaussian noise of `std` grey levels on every pixel, rounded and clipped to uint8."""
  if std <= 0:
    return faces
  noisy = faces.astype(np.float32) + rng.normal(0.0, float(std), faces.shape).astype(np.float32)
  return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def frame_rate(faces, fps, rng):
  """The video as if recorded at `fps`: at each 25 fps instant, the last frame of the lower rate."""
  del rng
  instants = np.arange(len(faces)) / schema.FPS
  shown = np.floor(np.floor(instants * fps + 1e-9) / fps * schema.FPS + 1e-9).astype(int)
  return faces[np.minimum(shown, len(faces) - 1)]


# ---- audio ---------------------------------------------------------------------------------------


def snr(samples, decibels, rng):
  """White Gaussian noise at `decibels` below the clip's mean power (silent clips stay silent)."""
  if math.isinf(decibels):
    return samples
  power = float(np.mean(np.square(samples, dtype=np.float64)))
  std = math.sqrt(power / 10 ** (float(decibels) / 10))
  return samples + rng.normal(0.0, std, samples.shape)


def _encode_decode_audio(
  samples: np.ndarray, codec: str, container_format: str, kbps, *, priming: int = 0
) -> np.ndarray:
  """The samples through `codec` at `kbps` kbit/s in a container in memory and back: the first
  `priming` decoded samples (an encoder delay the container does not mark) dropped, the rest cut
  or zero-padded to the input's length."""
  buffer = io.BytesIO()
  with av.open(buffer, "w", format=container_format) as container:
    stream = container.add_stream(codec, rate=schema.SAMPLE_RATE, layout="mono")
    stream.bit_rate = int(kbps * 1000)
    stream.options = {"threads": "1"}
    frame = av.AudioFrame.from_ndarray(
      (samples / INT16_FULL_SCALE).astype(np.float32)[None], format="fltp", layout="mono"
    )
    frame.sample_rate = schema.SAMPLE_RATE
    for packet in stream.encode(frame):
      container.mux(packet)
    container.mux(stream.encode(None))
  buffer.seek(0)
  decoded, rate = audio.decode_audio(buffer, what=f"{codec} re-encoding")
  if rate != schema.SAMPLE_RATE:
    raise RuntimeError(f"{codec} returned {rate} Hz audio")
  decoded = decoded[priming : priming + len(samples)]
  return np.pad(decoded, (0, len(samples) - len(decoded)))


def aac(samples, kbps, rng):
  del rng
  # FFmpeg's AAC encoder primes one frame (1024 samples) that the MP4 written here does not mark
  # for removal; LAME's MP3 header does mark its delay, which FFmpeg then skips.
  return _encode_decode_audio(samples, "aac", "mp4", kbps, priming=1024)


def mp3(samples, kbps, rng):
  del rng
  return _encode_decode_audio(samples, "libmp3lame", "mp3", kbps)


def resample(samples, rate, rng):
  """Down to `rate` Hz and back to 16 kHz with scipy's polyphase filter (what a phone line or a
  low-rate recording keeps)."""
  del rng
  rate = int(rate)
  if rate >= schema.SAMPLE_RATE:
    return samples
  divisor = math.gcd(rate, schema.SAMPLE_RATE)
  up, down = rate // divisor, schema.SAMPLE_RATE // divisor
  low = scipy.signal.resample_poly(samples.astype(np.float64), up, down)
  back = scipy.signal.resample_poly(low, down, up)[: len(samples)]
  return np.pad(back, (0, len(samples) - len(back)))


def edge_silence(samples, seconds, rng):
  """The first and the last `seconds` muted (the clip keeps its length and its timing)."""
  del rng
  count = min(int(round(float(seconds) * schema.SAMPLE_RATE)), len(samples) // 2)
  out = samples.copy()
  if count:
    out[:count] = 0
    out[-count:] = 0
  return out


PERTURBATIONS = {
  p.name: p
  for p in (
    Perturbation("h264_crf", "video", "x264 CRF", (23, 30, 37, 44, 51), None, h264_crf),
    Perturbation("h264_bitrate", "video", "kbit/s", (100, 50, 25, 12), None, h264_bitrate),
    Perturbation("downscale", "video", "side factor", (0.75, 0.5, 0.35, 0.25), 1.0, downscale),
    Perturbation("blur", "video", "sigma (px of 112)", (0.5, 1.0, 2.0, 3.0), 0.0, blur),
    Perturbation("noise", "video", "std (grey levels)", (2.0, 5.0, 10.0, 20.0), 0.0, noise),
    Perturbation("fps", "video", "frames/s", (20, 15, 10, 5), schema.FPS, frame_rate),
    Perturbation("snr", "audio", "SNR (dB)", (30, 20, 10, 5, 0), math.inf, snr),
    Perturbation("aac", "audio", "kbit/s", (64, 32, 16, 8), None, aac),
    Perturbation("mp3", "audio", "kbit/s", (64, 32, 16, 8), None, mp3),
    Perturbation("resample", "audio", "Hz", (11025, 8000, 4000), schema.SAMPLE_RATE, resample),
    Perturbation("edge_silence", "audio", "seconds", (0.1, 0.25, 0.5), 0.0, edge_silence),
  )
}


@dataclasses.dataclass(frozen=True)
class Setting:
  """One perturbation at one level; `level` None is the clean media."""

  perturbation: str
  level: float | None

  @property
  def name(self) -> str:
    if self.level is None:
      return "clean"
    return f"{self.perturbation}:{self.level:g}"

  def apply(self, faces, samples, rng):
    if self.level is None:
      return faces, samples
    return PERTURBATIONS[self.perturbation].apply(faces, samples, self.level, rng)


CLEAN = Setting("", None)


def parse(spec: str) -> list[Setting]:
  """`NAME[:LEVEL...][,NAME...]` or `all` -> the settings, in the order given.

  Raises:
    ValueError: an unknown name or a level that is not a number, naming it.
  """
  settings = []
  parts = [part.strip() for part in spec.split(",") if part.strip()]
  if parts == ["all"]:
    parts = list(PERTURBATIONS)
  if not parts:
    raise ValueError("no perturbation named; choose from " + ", ".join(PERTURBATIONS))
  for part in parts:
    name, *levels = part.split(":")
    if name not in PERTURBATIONS:
      raise ValueError(
        f"unknown perturbation {name!r} in {spec!r}; choose from {', '.join(PERTURBATIONS)} "
        "or 'all'"
      )
    try:
      values = [float(level) for level in levels] or list(PERTURBATIONS[name].levels)
    except ValueError as e:
      raise ValueError(f"{part!r}: levels must be numbers ({e})") from e
    settings += [Setting(name, value) for value in values]
  return settings


def clip_rng(seed: int, setting: Setting, clip_id: str) -> np.random.Generator:
  """The generator of one clip under one setting: the same on every run, machine and process."""
  key = f"{setting.name}|{clip_id}".encode()
  return np.random.default_rng([seed, *np.frombuffer(key.ljust(-(-len(key) // 4) * 4), np.uint32)])


def degrade(
  setting: Setting, seed: int, clip_id: str
) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
  """The media hook of one clip: (faces, samples) -> degraded (faces, samples)."""
  return lambda faces, samples: setting.apply(faces, samples, clip_rng(seed, setting, clip_id))


def describe(settings: Sequence[Setting]) -> list[dict]:
  """The settings with their perturbation's modality and parameter, for reports."""
  return [
    dict(
      name=s.name,
      perturbation=s.perturbation or "clean",
      level=s.level,
      modality=PERTURBATIONS[s.perturbation].modality if s.level is not None else "",
      parameter=PERTURBATIONS[s.perturbation].parameter if s.level is not None else "",
    )
    for s in settings
  ]
