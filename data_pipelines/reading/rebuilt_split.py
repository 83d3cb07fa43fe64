"""A prepared split whose examples are made again from their clips' media, through a media hook.

Robustness evaluation (avcd.evaluation.robustness) needs each clip of a split as the pipeline
would have made it from degraded media, so degradations hit the real pipeline (MFCC of the noisy
audio, the model on the re-encoded faces) rather than stored features. A RebuiltSplit offers what
the loader's batch reader reads of a split (split_index.Split: `records.__getitems__` and
`decode`), but an item is a record number and decoding makes the example again:

  * the synthetic corpus: the generator renders the clip again from the corpus's spec (same seed,
    split and index: the same media as when the corpus was built);
  * corpora prepared by `avcd prepare`: clips.extract_clip reads the clip's video and audio files
    again, as named by the manifests (or the corpus's own metadata), path rewrites and extraction
    options recorded in the prepared dataset (the files must still be there).

`hook_factory(clip_id)` gives each clip its media hook (schema.MediaHook); it must be picklable
(Grain worker processes receive it), e.g. a functools.partial of a module-level function.
"""

import dataclasses
import functools
from collections.abc import Callable

import ml_collections
import tensorflow_datasets as tfds

from data_pipelines import schema
from data_pipelines.building import clips, extraction
from data_pipelines.reading import split_index

SYNTHETIC = "synthetic_av"


class RebuildError(RuntimeError):
  """A clip of a prepared split that cannot be made again; the message names it and why."""


@dataclasses.dataclass(frozen=True)
class RebuiltSplit:
  builder: str
  data_dir: str
  split: str
  ids: tuple[str, ...]  # per record
  hook_factory: Callable[[str], schema.MediaHook]
  synthetic: dict | None  # the SyntheticSpec fields of a synthetic corpus

  @classmethod
  def open(
    cls,
    data_cfg: ml_collections.ConfigDict,
    split: str,
    index: split_index.SplitIndex,
    hook_factory: Callable[[str], schema.MediaHook],
  ) -> "RebuiltSplit":
    synthetic = None
    if data_cfg.builder.split("/")[0] == SYNTHETIC:
      synthetic = data_cfg.synthetic.to_dict()
    return cls(
      data_cfg.builder,
      data_cfg.data_dir,
      split,
      tuple(str(i) for i in index.id),
      hook_factory,
      synthetic,
    )

  @property
  def records(self) -> "RebuiltSplit":
    return self

  def __len__(self) -> int:
    return len(self.ids)

  def __getitems__(self, keys: list[int]) -> list[int]:
    return list(keys)

  def decode(self, record: int, skip: tuple[str, ...] = ()) -> dict:
    """The example of `record`, made again with its media hook (`skip` is ignored)."""
    del skip
    clip_id = self.ids[record]
    hook = self.hook_factory(clip_id)
    if self.synthetic is not None:
      example = self._synthesize(clip_id, hook)
    else:
      example = self._extract(clip_id, hook)
    if example["id"] != clip_id:
      raise RebuildError(f"{self.builder} {self.split}: record {record} made {example['id']}")
    return example

  def _synthesize(self, clip_id: str, hook: schema.MediaHook) -> dict:
    from data_pipelines.building.synthetic import generator  # pylint: disable=g-import-not-at-top

    spec = _synthetic_spec(tuple(sorted(self.synthetic.items())))
    index = int(clip_id.rsplit("-", 1)[1])  # generator ids: '<dataset>-<split>-<index>'
    return generator.synthesize_clip(spec, self.split, index, media_hook=hook).example

  def _extract(self, clip_id: str, hook: schema.MediaHook) -> dict:
    rows, options = _manifest_rows(self.builder, self.data_dir, self.split)
    if clip_id not in rows:
      raise RebuildError(
        f"{self.builder} {self.split}: clip {clip_id} is in the prepared split but not in the "
        "manifests it was prepared from (were they changed since?)"
      )
    try:
      return clips.extract_clip(rows[clip_id], **options, media_hook=hook)
    except clips.ClipRejected as e:
      raise RebuildError(
        f"{self.builder} {self.split}: clip {clip_id} cannot be read again: {e.reason}"
      ) from e


@functools.cache
def _synthetic_spec(fields: tuple):
  from data_pipelines.building.synthetic import generator  # pylint: disable=g-import-not-at-top

  return generator.SyntheticSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields})


@functools.cache
def _manifest_rows(builder: str, data_dir: str, split: str) -> tuple[dict, dict]:
  """Rows of `split` by clip id, and extract_clip's options, as recorded when it was prepared."""
  metadata = tfds.builder(builder, data_dir=data_dir).info.metadata
  if "manifests" not in metadata:
    raise RebuildError(
      f"{builder} in {data_dir} records no manifests: only corpora prepared by `avcd prepare` "
      "and the synthetic corpus can be made again from their media"
    )
  # Here rather than at the top: every loader imports this module, and prepare registers every
  # corpus builder with TFDS; only a rebuild needs the builder classes.
  from data_pipelines.building import prepare  # pylint: disable=g-import-not-at-top

  split_manifests = {split: metadata["manifests"][split]}
  read = prepare.BUILDERS[builder.split("/")[0]].read_sources(
    split_manifests, tuple(metadata["path_prefix"])
  )
  options = dataclasses.asdict(extraction.ExtractOptions(**metadata["extraction"]))
  return {source.row.id: source.row for source in read[split]}, options
