"""The TFDS builder base of corpora listed in manifest CSVs; subclasses say which CSVs form a split.

A split holds the usable clips of its manifests (sources.read_splits), in manifest order: record
i of a split is its i-th usable row. Clips that clips.extract_clip rejects are left out and listed
in `info.metadata['rejects']` (sources.ClipSource.reject_record), saved with the dataset.

Two ways to generate, with the same examples:
- local (default): `_split_generators` first brings the ClipStore under `work_dir` up to date,
  extracting in a process pool every clip of every split that it does not hold yet (each clip
  once, even when several splits list it; an interrupted run resumes from the stored clips).
  `_generate_examples` then streams each split's stored examples to the TFDS writer, which writes
  the shards into a temporary directory and renames it when every split is complete.
- Beam (`use_beam=True`): `_generate_examples` returns beam_extraction's PTransform; run it with
  `download_and_prepare(download_config=tfds.download.DownloadConfig(beam_options=...))`.

Build through `data_pipelines.building.prepare`, which also locks the work directory, writes
rejects.jsonl and reports counts; read with `tfds.builder_from_directory`, `as_data_source()` or
the loader.
"""

import abc
import dataclasses
import hashlib
import os
from typing import Sequence

import tensorflow_datasets as tfds
from etils import epath

from data_pipelines import progress, schema
from data_pipelines.building import beam_extraction, clip_builder, clip_store, extraction, sources


class NoUsableClips(RuntimeError):
  """Every clip of every split was rejected; `rejects` holds their rejects.jsonl entries."""

  def __init__(self, dataset: str, rejects: list[dict]):
    super().__init__(f"{dataset}: no usable clip, all {len(rejects)} rejected")
    self.rejects = rejects


class ManifestBuilder(clip_builder.ClipBuilder, skip_registration=True):
  """Abstract: a corpus whose splits are manifest CSVs (see the module docstring)."""

  def __init__(
    self,
    *,
    path_prefix: Sequence[str] = (),
    options: extraction.ExtractOptions = extraction.ExtractOptions(),
    num_workers: int | None = None,
    work_dir=None,
    use_beam: bool = False,
    progress_interval_s: float = 30.0,
    **kwargs,
  ):
    """Args besides TFDS's (data_dir, file_format, ...) are only needed to prepare.

    Args:
      path_prefix: 'OLD=NEW' rewrites of the manifests' media paths, first match wins.
      options: extraction options; they are part of each stored clip's key.
      num_workers: extraction processes (local generation); default: the CPUs this process
        may use.
      work_dir: for the clip store and Beam's rejects; default DATA_DIR/_work/<name>.
      use_beam: generate with Apache Beam instead of the local process pool.
      progress_interval_s: seconds between progress lines.
      **kwargs: tfds.core.GeneratorBasedBuilder's arguments.
    """
    super().__init__(**kwargs)
    self._path_prefix = tuple(path_prefix)
    self._options = options
    self._num_workers = num_workers or len(os.sched_getaffinity(0))
    self._work_dir = epath.Path(work_dir) if work_dir else None
    self._use_beam = use_beam
    self._progress_interval_s = progress_interval_s

  @property
  def work_dir(self) -> epath.Path:
    return self._work_dir or self.data_dir_root / "_work" / self.name

  @property
  def store(self) -> clip_store.ClipStore:
    """The extracted clips of local generation, which needs a local work_dir."""
    if "://" in os.fspath(self.work_dir):
      raise ValueError(
        f"{self.work_dir}: local generation stores clips on a local file system; "
        "give a local work_dir (or data_dir), or generate with Beam"
      )
    return clip_store.ClipStore(self.work_dir / "clips")

  @abc.abstractmethod
  def split_manifests(self) -> dict[str, list[str]]:
    """Split name -> the manifest files that make it (CSVs, or a corpus's own metadata)."""

  @classmethod
  def read_sources(
    cls, split_manifests: dict[str, list[str]], path_prefix: Sequence[str] = ()
  ) -> dict[str, list[sources.ClipSource]]:
    """Each split's clips, in order, from its manifest files: CSV rows here; corpora with
    metadata of their own override it. A class method: rebuilt_split reads a prepared corpus's
    recorded manifests again without a builder."""
    return sources.read_splits(split_manifests, path_prefix=path_prefix)

  def inputs(self) -> dict:
    """What the examples are made from, as saved in info.metadata: manifests (their paths and
    the SHA-256 of their contents, so that a manifest edited in place is noticed), rewrites,
    options."""
    split_manifests = self.split_manifests()
    return {
      "manifests": split_manifests,
      "manifest_sha256": {
        path: _sha256(path) for paths in split_manifests.values() for path in paths
      },
      "path_prefix": list(self._path_prefix),
      "extraction": dataclasses.asdict(self._options),
      "extraction_version": extraction.EXTRACTION_VERSION,
    }

  def _info(self) -> tfds.core.DatasetInfo:
    # Unshuffled: record i of a split is its i-th usable manifest row; loaders shuffle.
    return self.dataset_info_from_configs(
      features=schema.tfds_features(),
      description=self.__doc__,
      disable_shuffling=True,
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # the media are local files named by the manifests
    inputs = self.inputs()
    splits = self.read_sources(inputs["manifests"], self._path_prefix)
    self.info.metadata.update(inputs)
    if self._use_beam:
      self._beam_rejects_dir.rmtree(missing_ok=True)
      return {split: self._generate_examples(split, clips) for split, clips in splits.items()}

    keys = {
      split: [extraction.clip_key(c.row, self._options) for c in clips]
      for split, clips in splits.items()
    }
    rows = {}
    for split, clips in splits.items():
      for key, clip in zip(keys[split], clips):
        rows.setdefault(key, clip.row)
    status = extraction.extract_missing(
      self.store,
      rows,
      self._options,
      num_workers=self._num_workers,
      what=f"{self.name}: extracting",
      progress_interval_s=self._progress_interval_s,
    )
    rejects, usable = [], {}
    for split, clips in splits.items():
      usable[split] = [
        (position, key, clip)
        for position, (key, clip) in enumerate(zip(keys[split], clips))
        if status[key] is None
      ]
      rejects += [
        clip.reject_record(self.name, split, status[key])
        for key, clip in zip(keys[split], clips)
        if status[key] is not None
      ]
    self.info.metadata["rejects"] = rejects
    if not any(usable.values()):
      raise NoUsableClips(self.name, rejects)
    # TFDS cannot write a split without examples; such a split is only in the rejects.
    return {
      split: self._generate_examples(split, clips) for split, clips in usable.items() if clips
    }

  def _generate_examples(self, split: str, clips):
    """Beam: a PTransform extracting `clips` (ClipSources). Local: the stored clips, streamed.

    Locally `clips` are (position, store key, ClipSource) triples. Either way an example's key is
    its position among the split's manifest rows: TFDS's Beam writer orders unshuffled records by
    key, and the local writer by arrival.
    """
    if self._use_beam:
      return beam_extraction.extract_split(
        self.name, split, clips, self._options, self._beam_rejects_dir
      )
    return self._stored_examples(split, clips)

  def _stored_examples(self, split: str, clips):
    store, features = self.store, self.info.features
    tracker = progress.Progress(
      f"{self.name}: writing {split}", len(clips), interval_s=self._progress_interval_s
    )
    for position, key, _ in clips:
      yield position, features.deserialize_example_np(store.read_example(key))
      tracker.step()

  def _process_pipeline_result(self, pipeline_result) -> None:
    del pipeline_result  # the rejects are in files
    self.info.metadata["rejects"] = beam_extraction.read_rejects(self._beam_rejects_dir)

  @property
  def _beam_rejects_dir(self) -> epath.Path:
    return self.work_dir / "beam_rejects"


def _sha256(path) -> str:
  digest = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


class ListsBuilder(ManifestBuilder, skip_registration=True):
  """Abstract: a named corpus whose authors' manifest lists lie in one directory (manifest_dir);
  the corpus says which files there make which split (`find_manifests`)."""

  LISTS: str  # the lists, for a message: "FAV_*.csv"

  def __init__(self, *, manifest_dir=None, **kwargs):
    """`manifest_dir` holds the corpus's lists (needed to prepare); see ManifestBuilder."""
    super().__init__(**kwargs)
    self._manifest_dir = manifest_dir

  @staticmethod
  @abc.abstractmethod
  def find_manifests(manifest_dir) -> dict[str, list[str]]:
    """Split name -> the lists in `manifest_dir` that make it."""

  def split_manifests(self) -> dict[str, list[str]]:
    if self._manifest_dir is None:
      raise ValueError(f"{self.name}: preparing needs manifest_dir, the directory of {self.LISTS}")
    return self.find_manifests(self._manifest_dir)
