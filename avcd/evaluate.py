"""Scoring whole evaluation splits and writing their reports.

Every clip of a split is scored exactly once (the loader pads the last batch with filler rows,
which are dropped here by their record index), on every process; process 0 writes
`WORKDIR/eval/SPLIT/` (metrics.json, metrics.md, scores.csv, roc.png, score_histograms.png).
"""

import pathlib

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from avcd import reports, sharding
from data_pipelines import loader, split_index

# What the student needs on the device; the rest of a batch stays on the host.
MODEL_INPUTS = ("mfcc", "faces", "num_frames")


def score_split(predict_fn, params, batch_stats, cfg: ml_collections.ConfigDict, split: str,
                mesh) -> list[dict]:
  """Per-clip records (id, dataset, method, category, label, score, probability) of `split`."""
  dataset = loader.eval_dataset(cfg.data, cfg.eval, split=split,
                                process_index=jax.process_index(),
                                process_count=jax.process_count(),
                                batch_multiple=sharding.local_batch_multiple(mesh))
  scores, probabilities, records = [], [], []
  for batch in dataset:
    inputs = sharding.global_batch({k: batch[k] for k in MODEL_INPUTS}, mesh)
    out = predict_fn(params, batch_stats, inputs)
    scores.append(np.asarray(multihost_utils.process_allgather(out["score"], tiled=True)))
    probabilities.append(np.asarray(multihost_utils.process_allgather(out["probability"],
                                                                      tiled=True)))
    records.append(np.asarray(multihost_utils.process_allgather(batch["record"], tiled=True)))
  records = np.concatenate(records)
  keep = records >= 0
  index = split_index.load_index(split_index.open_split(cfg.data.builder, cfg.data.data_dir, split))
  clips = index.clips(records[keep])
  if len(np.unique(records[keep])) != len(index):
    raise RuntimeError(f"{split}: scored {keep.sum()} rows for {len(index)} clips; every clip "
                       "must be scored exactly once")
  score, probability = np.concatenate(scores)[keep], np.concatenate(probabilities)[keep]
  return [dict(id=str(clips["id"][i]), dataset=str(clips["dataset"][i]),
               method=str(clips["method"][i]), category=str(clips["category"][i]),
               label=int(clips["label"][i]), score=float(score[i]),
               probability=float(probability[i])) for i in range(len(score))]


def evaluate_splits(predict_fn, params, batch_stats, cfg: ml_collections.ConfigDict, mesh,
                    workdir: str | pathlib.Path, *, write: bool = True) -> dict[str, dict]:
  """Scores every split in `eval.splits` and returns {split: metrics}; reports under workdir/eval.

  With `eval.threshold_split`, the threshold chosen there is applied to the other splits too.
  """
  splits = list(cfg.eval.splits)
  chosen_threshold = None
  if cfg.eval.threshold_split:
    records = score_split(predict_fn, params, batch_stats, cfg, cfg.eval.threshold_split, mesh)
    from avcd import metrics  # pylint: disable=g-import-not-at-top
    chosen_threshold = metrics.choose_threshold(np.array([r["label"] for r in records]),
                                                np.array([r["probability"] for r in records]),
                                                name=cfg.eval.threshold_split)
  results = {}
  for split in splits:
    records = score_split(predict_fn, params, batch_stats, cfg, split, mesh)
    kwargs = dict(split=split, chosen_threshold=chosen_threshold,
                  threshold_split=cfg.eval.threshold_split)
    if write and jax.process_index() == 0:
      out_dir = pathlib.Path(workdir) / "eval" / split
      results[split] = reports.write_report(records, out_dir, **kwargs)
      logging.info("%s: wrote %s", split, out_dir)
    else:
      results[split] = reports.split_metrics(records, **kwargs)
  return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        step: int | None = None) -> dict[str, dict]:
  """`avcd eval`: restores a training checkpoint, scores the config's splits, prints the tables."""
  from avcd import checkpoints, steps, train  # pylint: disable=g-import-not-at-top
  from avcd import train_state as ts  # pylint: disable=g-import-not-at-top
  from data_pipelines import corpus_setup  # pylint: disable=g-import-not-at-top

  workdir = pathlib.Path(workdir).absolute()
  mesh = sharding.make_mesh(config.mesh)
  corpus_setup.prepare_corpus(config.data, workdir)
  # The optimizer only shapes the restore target; its schedule's length does not matter here.
  graphdef, abstract, shardings, _ = train.abstract_train_state(
      config, ts.make_optimizer(config.optim, steps_per_epoch=1), mesh)
  checkpointer = checkpoints.TrainCheckpointer(
      workdir / "checkpoints", keep_latest=config.train.keep_checkpoints,
      keep_best=config.train.keep_best, best_metric=config.train.best_metric)
  step = checkpointer.latest_step() if step is None else step
  if step is None or step not in checkpointer.all_steps():
    raise FileNotFoundError(f"no checkpoint {'at all' if step is None else f'for step {step}'} "
                            f"in {checkpointer.directory} (steps: {checkpointer.all_steps()})")
  state = checkpointer.restore(step, checkpoints.abstract_like(abstract, shardings))
  checkpointer.close()
  batch_sharding = sharding.batch_sharding(mesh)
  predict_fn = jax.jit(steps.make_predict_fn(graphdef),
                       in_shardings=(shardings.params, shardings.batch_stats, batch_sharding),
                       out_shardings=sharding.replicated(mesh))
  results = evaluate_splits(predict_fn, state.params, state.batch_stats, config, mesh, workdir)
  if jax.process_index() == 0:
    for split, result in results.items():
      print(f"\n## {split} (checkpoint step {step})\n")
      print(reports.markdown_table(result))
  return results
