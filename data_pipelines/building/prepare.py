"""Preparing a corpus: the logic of `avcd prepare`.

`make_builder` picks the builder (a named corpus with its manifest directory, or with its data
root for the corpora read from their own metadata, LAV-DF and AV-Deepfake1M; or the generic
av_manifest and its CSVs); `prepare` builds it under the TFDS data directory and returns a
Summary of the clips written and rejected per split. While building, it holds an exclusive lock
on the corpus's work directory (DATA_DIR/_work/<name>/lock), so that deleting what an interrupted
run left behind never races with another run.

Outputs under DATA_DIR: <name>/<version>/ (the TFDS dataset), rejects.jsonl (one JSON object per
rejected row: dataset, split, id, manifest, line, reason, where manifest and line are a metadata
JSON's file and the line its entry starts on for LAV-DF and AV-Deepfake1M; lines of other
datasets are kept), and while a build is unfinished, _work/<name>/ (the extracted clips that a
rerun resumes from).
"""

import contextlib
import dataclasses
import fcntl
import functools
import json
import os
from typing import Sequence

import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from data_pipelines.building import corpora, extraction, manifest_builder, metadata_json, sources
from data_pipelines.building.corpora import av_manifest

GENERIC = av_manifest.AVManifest.name
# Every builder `avcd prepare` builds, by name (rebuilt_split reads their recorded inputs again):
# each corpus's module registers its own, and importing `corpora` imports every one.
BUILDERS = dict(corpora.BUILDERS)
# The named corpora: all but the generic builder of given manifest CSVs.
CORPORA = {name: builder for name, builder in BUILDERS.items() if name != GENERIC}
# The named corpora read from their own metadata under a data root, not from manifest lists.
DATA_ROOT_CORPORA = sorted(
  name for name, builder in CORPORA.items() if issubclass(builder, metadata_json.MetadataBuilder)
)
REJECTS_FILE = "rejects.jsonl"


class PrepareError(RuntimeError):
  """A build that cannot start or found nothing usable; the message is for the user."""


@dataclasses.dataclass(frozen=True)
class SplitCounts:
  written: int
  rejected: int


@dataclasses.dataclass(frozen=True)
class Summary:
  """What a build wrote: clips per split, where the dataset and the rejects are."""

  dataset: str
  dataset_dir: str
  rejects_path: str
  splits: dict[str, SplitCounts]

  def __str__(self) -> str:
    width = max([len("split"), *map(len, self.splits)])
    lines = [
      f"{self.dataset}: {self.dataset_dir}",
      f"  {'split':<{width}}  {'written':>8}  {'rejected':>8}",
    ]
    for split, counts in self.splits.items():
      lines.append(f"  {split:<{width}}  {counts.written:>8}  {counts.rejected:>8}")
    lines.append(
      f"  {'total':<{width}}  {sum(c.written for c in self.splits.values()):>8}  "
      f"{sum(c.rejected for c in self.splits.values()):>8}"
    )
    lines.append(f"rejected clips: {self.rejects_path}")
    return "\n".join(lines)


def make_builder(
  data_dir,
  *,
  corpus: str | None = None,
  manifest_dir=None,
  data_root=None,
  manifests: Sequence[str] = (),
  path_prefix: Sequence[str] = (),
  options: extraction.ExtractOptions = extraction.ExtractOptions(),
  num_workers: int | None = None,
  use_beam: bool = False,
  progress_interval_s: float = 30.0,
) -> manifest_builder.ManifestBuilder:
  """The builder of a named corpus (`corpus` with `manifest_dir`, or with `data_root` for
  DATA_ROOT_CORPORA) or of `manifests` (av_manifest).

  Args:
    data_dir: the TFDS data directory to build into.
    corpus: a key of CORPORA, or None / GENERIC with `manifests`.
    manifest_dir: the directory of a named corpus's manifest lists.
    data_root: the directory a corpus of DATA_ROOT_CORPORA was downloaded to (its metadata and
      media as its authors lay them out).
    manifests: '[SPLIT=]CSV' specs for the generic builder (sources.parse_manifest_specs).
    path_prefix: 'OLD=NEW' rewrites of the manifests' media paths (not for DATA_ROOT_CORPORA).
    options: extraction options.
    num_workers: extraction processes; None: every CPU this process may use.
    use_beam: generate with Apache Beam (see prepare's beam_options).
    progress_interval_s: seconds between progress lines.

  Raises:
    ValueError: an unknown corpus, or arguments that do not fit it.
  """
  common = dict(
    data_dir=os.fspath(data_dir),
    file_format="array_record",
    path_prefix=tuple(path_prefix),
    options=options,
    num_workers=num_workers,
    use_beam=use_beam,
    progress_interval_s=progress_interval_s,
  )
  if corpus in (None, GENERIC):
    if not manifests:
      raise ValueError(f"give a corpus ({sorted(CORPORA)}) with its manifest_dir, or manifests")
    if manifest_dir is not None or data_root is not None:
      raise ValueError(
        "manifest_dir and data_root are for a named corpus; give manifests (CSV files) instead"
      )
    return av_manifest.AVManifest(manifests=sources.parse_manifest_specs(manifests), **common)
  if corpus not in CORPORA:
    raise ValueError(f"unknown corpus {corpus!r}; known: {sorted(CORPORA)} or {GENERIC}")
  if manifests:
    source = "data_root" if corpus in DATA_ROOT_CORPORA else "manifest_dir"
    raise ValueError(f"{corpus} reads its clips from {source}, not from manifests")
  if corpus in DATA_ROOT_CORPORA:
    if manifest_dir is not None or path_prefix:
      raise ValueError(
        f"{corpus} reads its own metadata and media under data_root; manifest_dir and "
        "path_prefix are for the corpora listed in manifests"
      )
    if data_root is None:
      raise ValueError(f"{corpus} needs data_root, the directory its download was unpacked to")
    return CORPORA[corpus](data_root=data_root, **common)
  if data_root is not None:
    raise ValueError(f"data_root is for {DATA_ROOT_CORPORA}; {corpus} reads manifest_dir")
  if manifest_dir is None:
    raise ValueError(f"{corpus} needs manifest_dir, the directory of its manifest lists")
  return CORPORA[corpus](manifest_dir=manifest_dir, **common)


def prepare(
  builder: manifest_builder.ManifestBuilder,
  *,
  overwrite: bool = False,
  keep_extracted: bool = False,
  beam_options: str | None = None,
) -> Summary:
  """Builds `builder`'s dataset, resuming an interrupted build, and writes rejects.jsonl.

  A dataset already built from the same inputs (ManifestBuilder.inputs: the manifests' paths and
  contents, the path rewrites, the extraction options and version) is reused as it is; one built
  from other inputs is an error unless `overwrite`. A dataset prepared before the manifests'
  contents were recorded is reused with a warning (see _check_same_inputs). After a successful
  build the extracted clips (the work directory's store) are deleted unless `keep_extracted`.

  Args:
    builder: from make_builder.
    overwrite: rebuild a dataset that exists (clips still stored in the work directory are
      reused). The old dataset stays in place until the new one is complete, and is put back if
      the rebuild fails.
    keep_extracted: keep the work directory after success, e.g. to rebuild with more manifests
      without extracting the same clips again.
    beam_options: Beam pipeline options as 'runner=DirectRunner,direct_num_workers=4' (the
      `tfds build` convention), for a builder made with use_beam=True.

  Returns:
    The counts per split.

  Raises:
    PrepareError: another run holds the lock, the dataset exists with other inputs, or no clip of
      any split is usable (rejects.jsonl is written first).
  """
  work_dir = builder.work_dir
  rejects_path = builder.data_dir_root / REJECTS_FILE
  with _exclusive_lock(
    work_dir / "lock", f"{builder.name} in {builder.data_dir_root}", wait=False
  ) as remove_lock:
    _remove_incomplete_builds(builder)
    if builder.is_prepared() and not overwrite:
      _check_same_inputs(builder)
      logging.info("%s is already prepared in %s; reusing it", builder.name, builder.data_dir)
    config = tfds.download.DownloadConfig(
      # Not FORCE_REDOWNLOAD for `overwrite`: TFDS would delete the old dataset before building
      # the new one, leaving none when the rebuild fails; _replacing keeps it until then.
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
      try_download_gcs=False,
      beam_options=_beam_pipeline_options(beam_options) if beam_options else None,
    )
    try:
      with _replacing(builder) if overwrite else contextlib.nullcontext():
        # TFDS makes its download directory (empty: the media are local) even for builders that
        # download nothing; in the work directory it goes with the rest.
        builder.download_and_prepare(download_dir=work_dir / "downloads", download_config=config)
    except manifest_builder.NoUsableClips as e:
      _write_rejects(builder, e.rejects)
      raise PrepareError(f"{e}; reasons in {rejects_path}") from e
    rejects = list(builder.info.metadata.get("rejects", []))
    _write_rejects(builder, rejects)
    if not keep_extracted:
      for child in ("clips", "beam_rejects", "downloads"):
        (work_dir / child).rmtree(missing_ok=True)
    # docs/data.md promises that _work/ exists only while a build is unfinished.
    remove_lock(work_dir, builder.data_dir_root / "_work")
  return _summary(builder, rejects, rejects_path)


# Where `overwrite` keeps the old dataset while the new one is built, beside TFDS's
# 'incomplete.*' directories: '<name>/replaced_<version>'.
_REPLACED_PREFIX = "replaced_"


def _replaced_path(builder) -> epath.Path:
  return builder.data_path.parent / f"{_REPLACED_PREFIX}{builder.data_path.name}"


@contextlib.contextmanager
def _replacing(builder):
  """Moves the existing dataset aside while the body builds a new one in its place, then deletes
  it; puts it back when the body fails. A killed run leaves it aside, and the next run
  (_remove_incomplete_builds) puts it back."""
  if not builder.data_path.exists():
    yield
    return
  replaced = _replaced_path(builder)
  builder.data_path.rename(replaced)
  try:
    yield
  except BaseException:
    # TFDS renames its finished build into place last, so a failure leaves the place empty.
    if not builder.data_path.exists():
      replaced.rename(builder.data_path)
    raise
  replaced.rmtree()


def _check_same_inputs(builder) -> None:
  """Refuses to reuse a dataset made from other manifests, path rewrites or options.

  A dataset prepared before the manifests' contents were recorded ('manifest_sha256') is
  compared on the rest and reused with a warning: its manifests may have changed unnoticed.
  """
  wanted = json.loads(json.dumps(builder.inputs()))
  built = {key: builder.info.metadata.get(key) for key in wanted}
  if built["manifest_sha256"] is None:
    logging.warning(
      "%s was prepared before avcd recorded its manifests' contents: they are not compared; "
      "reusing it as built (--overwrite rebuilds it from the manifests as they are now)",
      builder.data_dir,
    )
    built["manifest_sha256"] = wanted["manifest_sha256"]
  changes = _changes(built, wanted)
  if changes:
    raise PrepareError(
      f"{builder.data_dir} was prepared from other inputs: {'; '.join(changes)}; "
      "--overwrite rebuilds it (the old dataset is kept until the new one is complete)"
    )


def _changes(built: dict, wanted: dict) -> list[str]:
  """What differs between the recorded inputs of a dataset and those of this run, for people."""
  changes = []
  for split in sorted({*built["manifests"], *wanted["manifests"]}):
    then, now = built["manifests"].get(split, []), wanted["manifests"].get(split, [])
    if then != now:
      changes.append(f"split {split} was built from {_listed(then)}, this run lists {_listed(now)}")
  for path, digest in wanted["manifest_sha256"].items():
    if built["manifest_sha256"].get(path, digest) != digest:
      changes.append(f"manifest {path} has changed since")
  if built["path_prefix"] != wanted["path_prefix"]:
    changes.append(
      f"--path_prefix was {_listed(built['path_prefix'])}, now {_listed(wanted['path_prefix'])}"
    )
  for option, value in wanted["extraction"].items():
    if (built["extraction"] or {}).get(option) != value:
      changes.append(f"--{option} was {(built['extraction'] or {}).get(option)}, now {value}")
  if built["extraction_version"] != wanted["extraction_version"]:
    changes.append(
      f"it was extracted by extraction version {built['extraction_version']}, this avcd "
      f"extracts with version {wanted['extraction_version']}"
    )
  return changes


def _listed(values: list[str]) -> str:
  return ", ".join(values) if values else "none"


def _summary(builder, rejects: list[dict], rejects_path: epath.Path) -> Summary:
  rejected = {}
  for record in rejects:
    rejected[record["split"]] = rejected.get(record["split"], 0) + 1
  names = sorted({*builder.info.splits.keys(), *rejected})
  splits = {
    name: SplitCounts(
      written=builder.info.splits[name].num_examples if name in builder.info.splits else 0,
      rejected=rejected.get(name, 0),
    )
    for name in names
  }
  return Summary(
    dataset=builder.name,
    dataset_dir=os.fspath(builder.data_dir),
    rejects_path=os.fspath(rejects_path),
    splits=splits,
  )


@contextlib.contextmanager
def _exclusive_lock(path: epath.Path, what: str, *, wait: bool):
  """Holds an exclusive flock on a local file (remote file systems, e.g. gs://, are not locked).

  Yields a function that deletes the lock file and then its parent directories that are empty up
  to and including `DATA_DIR/_work` (the arguments: those directories, innermost first), for a
  holder that leaves nothing behind. Deleting a lock file that another process has opened is safe:
  once a process holds the lock it checks that the file it locked is still the one at `path`,
  and locks again otherwise.

  Raises:
    PrepareError: without `wait`, when another process holds the lock.
  """
  if "://" in os.fspath(path):
    yield lambda *directories: None
    return
  while True:
    try:
      path.parent.mkdir(parents=True, exist_ok=True)
      f = open(path, "a")
    except FileNotFoundError:  # a finishing run removed the directory in between
      continue
    with f:
      try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
      except BlockingIOError as e:
        raise PrepareError(f"another avcd prepare is building {what} (lock {path})") from e
      if _is_file_at(f, path):
        yield functools.partial(_remove_lock_file, path)
        return


def _is_file_at(f, path: epath.Path) -> bool:
  try:
    at_path = os.stat(path)
  except FileNotFoundError:
    return False
  held = os.fstat(f.fileno())
  return (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)


def _remove_lock_file(path: epath.Path, *directories: epath.Path) -> None:
  """Deletes a held lock file, then each of `directories` while it is empty."""
  path.unlink(missing_ok=True)
  for directory in directories:
    try:
      os.rmdir(directory)  # not epath's rmdir, which raises ValueError when not empty
    except OSError:  # not empty: another dataset's work, or this one's kept clips
      return


def _remove_incomplete_builds(builder) -> None:
  """Deletes TFDS's temporary directories left by killed runs (TFDS deletes them otherwise), and
  puts back a dataset that a killed rebuild had moved aside (_replacing)."""
  dataset_dir = builder.data_path.parent
  if not dataset_dir.exists():
    return
  for stale in dataset_dir.glob(f"incomplete.*_{builder.data_path.name}"):
    logging.info("deleting %s, left by an interrupted build", stale)
    stale.rmtree()
  replaced = _replaced_path(builder)
  if not replaced.exists():
    return
  if builder.data_path.exists():  # killed after the new dataset was complete
    logging.info("deleting %s, replaced by %s", replaced, builder.data_path)
    replaced.rmtree()
    return
  logging.info("putting back %s, moved aside by an interrupted rebuild", builder.data_path)
  replaced.rename(builder.data_path)
  # The builder was made while the dataset was aside, without its recorded inputs.
  builder.info.read_from_directory(builder.data_path)


def _write_rejects(builder, rejects: list[dict]) -> None:
  """Replaces the builder's lines of the rejects file (atomically), keeping other datasets'.

  Builds of other datasets in the same data directory may finish at the same moment, hence the
  lock around reading and replacing the file.
  """
  path = builder.data_dir_root / REJECTS_FILE
  work_root = builder.data_dir_root / "_work"
  with _exclusive_lock(work_root / f"{REJECTS_FILE}.lock", str(path), wait=True) as remove_lock:
    kept = []
    if path.exists():
      kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("dataset") != builder.name
      ]
    lines = kept + [json.dumps(record, sort_keys=True) for record in rejects]
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_text("".join(f"{line}\n" for line in lines))
    tmp.replace(path)
    remove_lock(work_root)


def _beam_pipeline_options(text: str):
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top

  return pipeline_options.PipelineOptions(
    flags=[f"--{option}" for option in text.split(",") if option]
  )
