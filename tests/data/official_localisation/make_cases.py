"""Writes cases.json: frame-aligned localisation cases scored by AV-Deepfake1M's official evaluator.

    python -m venv /tmp/official
    /tmp/official/bin/pip install --no-deps avdeepfake1m==0.0.4 numpy
    /tmp/official/bin/python tests/data/official_localisation/make_cases.py /tmp/official

Run outside avcd's environment: the wheel's compiled `ap_ar_1d` (Rust, float32) is loaded from
the site-packages of the environment named on the command line, without importing the rest of
its package (which needs torch and numpy < 2). Every time lies on the 1/25 s frame grid, where an
IoU often equals a threshold exactly (7 fake frames inside a 10-frame proposal: 0.7); scores come
from a coarse grid, so ties occur. tests/test_localisation.py checks avcd against the values.
"""

import importlib.machinery
import importlib.util
import json
import pathlib
import sys
import tempfile

import numpy as np

FPS = 25
AP_IOU_THRESHOLDS = [0.5, 0.75, 0.9, 0.95]
AR_N_PROPOSALS = [50, 30, 20, 10, 5]
AR_IOU_THRESHOLDS = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]
NUM_CASES = 40


def official_evaluator(environment: pathlib.Path):
  [library] = environment.glob("lib/python*/site-packages/avdeepfake1m/_evaluation*.so")
  loader = importlib.machinery.ExtensionFileLoader("_evaluation", str(library))
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader("_evaluation", loader))
  loader.exec_module(module)
  return module.ap_ar_1d


def frame_segment(rng, num_frames: int) -> list[float]:
  start = int(rng.integers(0, num_frames - 2))
  end = int(rng.integers(start + 1, min(start + 40, num_frames) + 1))
  return [start / FPS, end / FPS]


def case(rng) -> dict:
  """Clips of 50-125 frames with 0-2 fake segments; proposals near them (shifted by whole frames)
  and elsewhere, scored on a 0.05 grid."""
  clips, proposals = [], {}
  for index in range(int(rng.integers(3, 9))):
    num_frames = int(rng.integers(50, 126))
    segments = [frame_segment(rng, num_frames) for _ in range(int(rng.integers(0, 3)))]
    rows = []
    for start, end in segments:
      for _ in range(int(rng.integers(1, 4))):
        shift = rng.integers(-3, 4, size=2) / FPS
        rows.append([max(start + shift[0], 0.0), max(end + shift[1], start + shift[0] + 1 / FPS)])
    # At least one proposal per clip: the official reader cannot parse an empty list.
    rows += [frame_segment(rng, num_frames) for _ in range(int(rng.integers(1 - bool(rows), 4)))]
    scores = np.round(rng.uniform(0.3, 1.0, len(rows)) / 0.05) * 0.05
    order = np.argsort(-scores, kind="stable")
    name = f"clip{index}.mp4"
    clips.append(dict(file=name, fake_segments=segments))
    proposals[name] = [[float(scores[i]), *map(float, rows[i])] for i in order]
  return dict(metadata=clips, proposals=proposals)


def main(environment: str) -> None:
  ap_ar_1d = official_evaluator(pathlib.Path(environment))
  rng = np.random.default_rng(20261207)
  cases = []
  with tempfile.TemporaryDirectory() as folder:
    for _ in range(NUM_CASES):
      data = case(rng)
      metadata, prediction = pathlib.Path(folder, "metadata.json"), pathlib.Path(folder, "p.json")
      metadata.write_text(json.dumps(data["metadata"]))
      prediction.write_text(json.dumps(data["proposals"]))
      official = ap_ar_1d(
        str(prediction),
        str(metadata),
        "file",
        "fake_segments",
        1.0,
        AP_IOU_THRESHOLDS,
        AR_N_PROPOSALS,
        AR_IOU_THRESHOLDS,
      )
      data["official"] = dict(
        ap={f"{k:g}": float(v) for k, v in official["ap"].items()},
        ar={str(k): float(v) for k, v in official["ar"].items()},
      )
      cases.append(data)
  out = pathlib.Path(__file__).with_name("cases.json")
  out.write_text(json.dumps(dict(avdeepfake1m="0.0.4", fps=FPS, cases=cases), indent=None) + "\n")
  print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
  main(sys.argv[1])
