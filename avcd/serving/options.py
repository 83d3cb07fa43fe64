"""The options of `avcd predict`, in a module that imports nothing heavy: the command line reads
them before anything is loaded, and `--help` stays instant.

The face defaults are data_pipelines.features.face_crop's (tests/test_predict.py checks they
agree; importing it here would load OpenCV and PyAV for --help).
"""

import dataclasses

DETECTORS = ("yunet", "haar", "none")  # 'none': the whole frame is the face


@dataclasses.dataclass(frozen=True)
class PredictOptions:
  """How videos are read and scored (the `avcd predict` flags)."""

  detector: str = "yunet"  # or 'haar', or 'none': the whole frame is the face
  luma: str = "bt601"
  crop_scale: float = 1.3
  window: int = 50  # frames per window (2 s at 25 fps)
  stride: int = 25  # frames between window starts
  min_frames: int = 25
  max_frames: int = 1000  # 0: no cap
  batch_size: int = 16  # windows per model call
  threshold: float = 0.5  # P(fake) at or above which a clip is called fake

  def __post_init__(self):
    for name in ("window", "stride", "min_frames", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
    if self.max_frames < 0 or 0 < self.max_frames < self.min_frames:
      raise ValueError(
        f"max_frames={self.max_frames} must be 0 (no cap) or at least min_frames={self.min_frames}"
      )
    if not 0.0 <= self.threshold <= 1.0:
      raise ValueError(f"threshold must be a probability in [0, 1], got {self.threshold}")
    if self.crop_scale <= 0:
      raise ValueError(f"crop_scale must be positive, got {self.crop_scale}")
    if self.detector not in DETECTORS:
      raise ValueError(f"detector must be one of {DETECTORS}, got {self.detector!r}")
