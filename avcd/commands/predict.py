"""avcd predict: score raw videos with a checkpoint or an exported SavedModel.

  avcd predict VIDEO... (--workdir=DIR [--checkpoint=STEP] | --saved-model=DIR) [--detector=none]
               [--window=50] [--stride=25] [--output=DIR]

Prints a table of the scored videos and, on stderr, one line per video that cannot be scored;
writes OUTPUT/predictions.json and OUTPUT/plots/VIDEO.png. Exit status 1 when no video could be
scored. avcd/serving/predict.py describes the pipeline, docs/serving.md the output.
"""

import sys

from absl import app, flags

from avcd.commands import arguments, model_source
from avcd.serving import options as predict_options

_DEFAULTS = predict_options.PredictOptions()
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "A training run's directory, or a model checkpoint directory (run by JAX)."
)
_CHECKPOINT = flags.DEFINE_integer("checkpoint", None, "Step of --workdir (default: the latest).")
_SAVED_MODEL = flags.DEFINE_string(
  "saved_model", None, "A SavedModel from `avcd export` (run by TensorFlow)."
)
_DETECTOR = flags.DEFINE_enum(
  "detector",
  _DEFAULTS.detector,
  list(predict_options.DETECTORS),
  "How faces are found: yunet (landmarks, aligned crops), haar (OpenCV's cascade, the former "
  "default), or none: the whole frame is the face (already face-cropped corpora such as "
  "FakeAVCeleb and CMDFD).",
)
_CALIBRATE = flags.DEFINE_bool(
  "calibrate",
  True,
  "With --workdir: apply the run's calibration map (WORKDIR/calibration.json) to P(fake) when it "
  "was fitted for the checkpoint scored (a SavedModel carries its own from `avcd export`).",
)
flags.DEFINE_alias("saved-model", "saved_model")
_OUTPUT = flags.DEFINE_string(
  "output", "avcd_predictions", "Directory for predictions.json and the plots."
)
_WINDOW = flags.DEFINE_integer(
  "window", _DEFAULTS.window, "Frames per sliding window (25 fps).", lower_bound=1
)
_STRIDE = flags.DEFINE_integer(
  "stride", _DEFAULTS.stride, "Frames between window starts.", lower_bound=1
)
_MIN_FRAMES = flags.DEFINE_integer(
  "min_frames",
  _DEFAULTS.min_frames,
  "Shorter videos (frames at 25 fps) are not scored.",
  lower_bound=1,
)
_MAX_FRAMES = flags.DEFINE_integer(
  "max_frames",
  _DEFAULTS.max_frames,
  "Score at most this many frames from the start; 0: all.",
  lower_bound=0,
)
_BATCH_SIZE = flags.DEFINE_integer(
  "batch_size", _DEFAULTS.batch_size, "Windows per model call.", lower_bound=1
)
_THRESHOLD = flags.DEFINE_float(
  "threshold",
  _DEFAULTS.threshold,
  "P(fake) from which a video is called fake, and its frames form forged segments.",
)
_CROP_SCALE = flags.DEFINE_float(
  "crop_scale", _DEFAULTS.crop_scale, "Face crop size; 1.3 frames faces as the corpora do."
)
_LUMA = flags.DEFINE_enum(
  "luma",
  _DEFAULTS.luma,
  ["bt601", "reference_bgr"],
  "Grey conversion of faces; reference_bgr reproduces the authors' (to run their checkpoints).",
)


def main(argv):
  videos = argv[1:]
  if not videos:
    raise app.UsageError("name at least one video")
  try:
    options = predict_options.PredictOptions(
      detector=_DETECTOR.value,
      luma=_LUMA.value,
      crop_scale=_CROP_SCALE.value,
      window=_WINDOW.value,
      stride=_STRIDE.value,
      min_frames=_MIN_FRAMES.value,
      max_frames=_MAX_FRAMES.value,
      batch_size=_BATCH_SIZE.value,
      threshold=_THRESHOLD.value,
    )
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  # Everything the flags name is checked before a model is loaded or a video read.
  model_source.check(_WORKDIR.value, _SAVED_MODEL.value)
  arguments.writable_directory("output", _OUTPUT.value)
  scorer = model_source.load(
    _WORKDIR.value, _CHECKPOINT.value, _SAVED_MODEL.value, calibrate=_CALIBRATE.value
  )
  from avcd.serving import predict  # pylint: disable=g-import-not-at-top

  records = predict.predict_videos(scorer, videos, options)
  for record in records:
    if record["status"] != "scored":
      print(f"cannot score {record['path']}: {record['reason']}", file=sys.stderr)
    for warning in record.get("warnings", ()):
      print(f"warning: {record['path']}: {warning}; its score is less reliable", file=sys.stderr)
  scored = sum(r["status"] == "scored" for r in records)
  if scored:
    print(predict.format_table(records))
  json_path = predict.write_outputs(records, _OUTPUT.value, source=scorer.source, options=options)
  print(f"{scored} of {len(records)} videos scored; wrote {json_path}")
  return 0 if scored else 1


if __name__ == "__main__":
  app.run(main)
