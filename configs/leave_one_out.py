r"""Leave one generation method out: train on a corpus's other methods, test on all of them.

`--config=configs/leave_one_out.py:CORPUS/METHOD`, e.g.

  avcd train --config=configs/leave_one_out.py:fakeavceleb/wav2lip --workdir=runs/loo-wav2lip \
      --config.data.data_dir=DATA_DIR --config.teachers.checkpoint=TEACHERS \
      --config.train.init_from=TALKNET

Real clips are always used; training fakes are every method of CORPUS except METHOD; the test
split holds them all, so WORKDIR/eval/test/metrics.json's `per_method[METHOD]` is the held-out
result. Any corpus with method labels works: add it to METHODS (or pass the methods with
--config.data.train_methods). The synthetic corpus has its own variant with the distillation
ablation: configs/synthetic.py:generalisation.

Hardware: one or more GPU/TPU hosts (FakeAVCeleb). Expected result: the held-out method's AUC
next to the trained methods' in metrics.md.
"""

from avcd import config_lib

# Fake methods of each corpus (data_pipelines/building/manifests.py derives them).
METHODS = {
  "fakeavceleb": ("faceswap", "fsgan", "wav2lip", "rtvc", "faceswap_wav2lip", "fsgan_wav2lip"),
}
TEST_SPLIT = {"fakeavceleb": "test"}


def get_config(corpus_and_method: str = "fakeavceleb/wav2lip"):
  corpus, _, held_out = corpus_and_method.partition("/")
  if corpus not in METHODS or held_out not in METHODS[corpus]:
    raise ValueError(
      f"unknown CORPUS/METHOD {corpus_and_method!r}; choose a corpus from "
      f"{sorted(METHODS)} and one of its methods {METHODS.get(corpus)}"
    )
  config = config_lib.sibling(__file__, "default.py")  # the paper's setup, plus:
  config.teachers.vsr.use_frontend = False  # the authors' lip features are stored in the shards
  config.data.update(
    builder=corpus, train_methods=tuple(m for m in METHODS[corpus] if m != held_out)
  )
  config.eval.update(splits=(TEST_SPLIT[corpus],), every_steps=5000)
  config.train.checkpoint_every_steps = 5000
  return config
