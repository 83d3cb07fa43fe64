"""Extraction under Apache Beam, for corpora that outgrow one machine.

Each split becomes `Create(clips) | FlatMap(extract)`: Beam spreads clips over its workers and
retries failed bundles, so there is no store to resume from (a runner such as Dataflow resumes
itself). Rejected clips go to a tagged output written as JSON lines under a directory that every
worker can reach (the TFDS data_dir's file system); read_rejects gathers them after the run.
Clips listed by several splits are extracted once per split.

Only needs apache_beam when a pipeline is built (TFDS's lazy import).
"""

import json

from etils import epath
from tensorflow_datasets.core.utils.lazy_imports_utils import apache_beam as beam

from data_pipelines.building import clips, extraction, sources

_REJECTED = "rejected"


def extract_split(
  dataset: str,
  split: str,
  clip_sources: list[sources.ClipSource],
  options: extraction.ExtractOptions,
  rejects_dir: epath.Path,
):
  """A PTransform (pipeline -> (position, example) pairs) extracting one split's clips.

  The key of a clip is its position in `clip_sources`: with TFDS's disable_shuffling, Beam
  writes records in key order, the manifest order of local generation.
  """

  @beam.ptransform_fn
  def _extract(root):
    results = (
      root
      | "Clips" >> beam.Create(list(enumerate(clip_sources)))
      | "Extract"
      >> beam.FlatMap(
        _extract_or_reject, dataset=dataset, split=split, options=options
      ).with_outputs(_REJECTED, main="examples")
    )
    _ = (
      results[_REJECTED]
      | "ToJson" >> beam.Map(json.dumps)
      | "WriteRejects" >> beam.io.WriteToText(str(rejects_dir / split), file_name_suffix=".jsonl")
    )
    return results.examples

  return _extract()  # pylint: disable=no-value-for-parameter


def read_rejects(rejects_dir: epath.Path) -> list[dict]:
  """The rejects written by extract_split's pipelines, by split file then line."""
  records = []
  for path in sorted(rejects_dir.glob("*.jsonl")):
    records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return records


def _extract_or_reject(
  position_source: tuple[int, sources.ClipSource],
  *,
  dataset: str,
  split: str,
  options: extraction.ExtractOptions,
):
  position, source = position_source
  try:
    example = extraction.extract_example(source.row, options)
  except clips.ClipRejected as e:
    yield beam.pvalue.TaggedOutput(_REJECTED, source.reject_record(dataset, split, e.reason))
    return
  yield position, example
