"""avcd prepare: build a corpus into sharded ArrayRecord (TFDS) under --output.

  avcd prepare --corpus=fakeavceleb --manifest_dir=DIR [--path_prefix=OLD=NEW ...] --output=DIR
  avcd prepare --corpus=cmdfd --manifest_dir=DIR [--path_prefix=OLD=NEW ...] --output=DIR
  avcd prepare --corpus=lavdf --data_root=DIR --output=DIR
  avcd prepare --corpus=avdeepfake1m --data_root=DIR --output=DIR
  avcd prepare --manifest=[SPLIT=]CSV [--manifest=...] [--path_prefix=OLD=NEW ...] --output=DIR

Interrupted (Ctrl-C, SIGTERM, SIGKILL), the same command resumes. Exit status: 0 when clips were
written (rejected rows are listed in DIR/rejects.jsonl), 1 when nothing usable was found or the
inputs are wrong, 130 when interrupted. docs/data.md has the details.
"""

import pathlib
import signal
import sys

import tensorflow_datasets as tfds
from absl import app, flags

from avcd import paths
from avcd.commands import arguments
from data_pipelines.building import clips, extraction, manifests, prepare

_CORPUS = flags.DEFINE_enum(
  "corpus",
  None,
  [*sorted(prepare.CORPORA), prepare.GENERIC],
  "A named corpus (with --manifest_dir, or --data_root for "
  f"{', '.join(prepare.DATA_ROOT_CORPORA)}); default: the generic builder of --manifest CSVs.",
)
_MANIFEST_DIR = flags.DEFINE_string(
  "manifest_dir", None, "Directory of the named corpus's manifest lists (FAV_*.csv, W2L.csv...)."
)
_DATA_ROOT = flags.DEFINE_string(
  "data_root",
  None,
  f"Where a corpus read from its own metadata ({', '.join(prepare.DATA_ROOT_CORPORA)}) was "
  "unpacked, laid out as its authors distribute it (metadata JSON beside the mp4 directories).",
)
_MANIFEST = flags.DEFINE_multi_string(
  "manifest",
  [],
  "[SPLIT=]CSV: a manifest of the generic builder; without SPLIT= the split is "
  "named after the file. Several CSVs of one split are merged by ID.",
)
_PATH_PREFIX = flags.DEFINE_multi_string(
  "path_prefix", [], "OLD=NEW: rewrite media paths starting with OLD (first match wins)."
)
_OUTPUT = flags.DEFINE_string("output", None, "TFDS data directory to build into.")
_NUM_WORKERS = flags.DEFINE_integer(
  "num_workers", 0, "Extraction processes; 0: every CPU this process may use.", lower_bound=0
)
_LUMA = flags.DEFINE_enum(
  "luma",
  "bt601",
  ["bt601", "reference_bgr"],
  "Grey conversion of faces; reference_bgr reproduces the authors' (to run their checkpoints).",
)
_MAX_AV_MISMATCH_S = flags.DEFINE_float(
  "max_av_mismatch_s",
  clips.DEFAULT_MAX_AV_MISMATCH_S,
  "Reject clips whose audio and video durations differ by more; inf keeps all, as the authors.",
  lower_bound=0.0,
)
_MAX_FRAMES = flags.DEFINE_integer(
  "max_frames", None, "Keep at most this many frames (25 fps) of each clip.", lower_bound=1
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite",
  False,
  "Rebuild a dataset that already exists (needed when its manifests or options changed); the "
  "old one is kept until the new one is complete.",
)
_KEEP_EXTRACTED = flags.DEFINE_bool(
  "keep_extracted", False, "Keep the extracted clips (DIR/_work/<name>) after a successful build."
)
_BEAM_PIPELINE_OPTIONS = flags.DEFINE_string(
  "beam_pipeline_options",
  None,
  "Generate with Apache Beam, e.g. 'runner=DirectRunner,direct_num_workers=4'.",
)
_PROGRESS_INTERVAL_S = flags.DEFINE_float(
  "progress_interval_s", 30.0, "Seconds between progress lines.", lower_bound=0.0
)
flags.mark_flag_as_required("output")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  # Interrupts must stop the build whatever this process inherited: a parent may have left
  # SIGINT ignored or blocked (both survive fork and exec), which would let a "stopped" build run
  # on to the end.
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
  signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
  signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
  tfds.disable_progress_bar()  # prepare logs its own progress lines
  options = extraction.ExtractOptions(
    luma=_LUMA.value, max_frames=_MAX_FRAMES.value, max_av_mismatch_s=_MAX_AV_MISMATCH_S.value
  )
  arguments.writable_directory("output", _OUTPUT.value)
  for manifest in _MANIFEST.value:
    path = pathlib.Path(manifest.partition("=")[2] if "=" in manifest else manifest)
    if not path.is_file():
      problem = paths.broken_symlink(path) or (
        "is a directory, not a CSV file" if path.is_dir() else "no such file"
      )
      raise app.UsageError(f"--manifest={manifest}: {problem}")
  for flag in (_MANIFEST_DIR, _DATA_ROOT):
    if flag.value:
      arguments.existing_directory(flag.name, flag.value)
  try:
    manifests.parse_path_prefixes(_PATH_PREFIX.value)  # malformed rules fail before any work
    builder = prepare.make_builder(
      _OUTPUT.value,
      corpus=_CORPUS.value,
      manifest_dir=_MANIFEST_DIR.value,
      data_root=_DATA_ROOT.value,
      manifests=_MANIFEST.value,
      path_prefix=_PATH_PREFIX.value,
      options=options,
      num_workers=_NUM_WORKERS.value or None,
      use_beam=_BEAM_PIPELINE_OPTIONS.value is not None,
      progress_interval_s=_PROGRESS_INTERVAL_S.value,
    )
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  try:
    summary = prepare.prepare(
      builder,
      overwrite=_OVERWRITE.value,
      keep_extracted=_KEEP_EXTRACTED.value,
      beam_options=_BEAM_PIPELINE_OPTIONS.value,
    )
  except KeyboardInterrupt:
    print("avcd prepare: interrupted; run the same command again to resume", file=sys.stderr)
    return 130
  except (prepare.PrepareError, manifests.ManifestError, FileNotFoundError) as e:
    print(f"avcd prepare: error: {e}", file=sys.stderr)
    return 1
  print(summary)
  return 0


def _raise_keyboard_interrupt(signum, frame):
  del signum, frame
  raise KeyboardInterrupt


if __name__ == "__main__":
  app.run(main)
