r"""The built-in demo: teachers and a narrow student trained on the synthetic corpus, on a CPU.

  avcd train --config=configs/synthetic.py --workdir=runs/synthetic

Generates the synthetic corpus into WORKDIR/data, trains the ASR/VSR teachers into
WORKDIR/teachers if none are there yet, trains the student and evaluates it on the held-out
speakers of the test split (reports in WORKDIR/eval/test).

Hardware: 2 CPU cores. Expected time: 6 min 34 s end to end (corpus 1 min 4 s, 829 MB;
teachers 1 min 32 s; student 3 min 41 s, 960 steps with the phoneme heads; evaluation 12 s; commit
c1e7fda, fresh clone on a new machine, the train steps compiling cold). Expected result: test
ROC-AUC 100.0 / 100.0 / 100.0 / 100.0 for seed 0 at c1e7fda (desync, lipsync, talking_head,
voice_swap; teachers ASR 98.0%, VSR 90.3% per-frame on validation), and >= 99% on every method in
each of seeds 0-9 of the seed study (at 135ba06, before later rounding changes; with and without
the heads: docs/demo_seeds.md).

Variant `generalisation` (`--config=configs/synthetic.py:generalisation`): the base config of the
claim study (docs/generalisation.md), run by `python -m avcd.studies.generalisation`, which sets
the corpus seed, teachers, losses and recipe of each run. Version 2 of the synthetic corpus:
lip-sync generators ls_a (trained), ls_b and ls_c (held out) and ls_a_clean (diagnostic), 100
speakers, 2800 test clips.

Variant `partial` (`--config=configs/synthetic.py:partial`): temporal localisation
(docs/localisation.md). Every fake is a real clip of 3-5 s with one or two forged segments of
0.5-2 s (lipsync_part, desync_part, voice_swap_part); the student learns each frame's label, 16
epochs, with the demo's phoneme heads. Hardware: 2 CPU cores. Expected time: about 34 min
(corpus 1 min 54 s, 1.5 GB; teachers 3 min; student 29 min; evaluation 15 s; at 5aee223, before
fbbf0d6, afd7baa and 21dbf71 made the train step faster; not measured since). Expected result on
the test split (trained at 5aee223, evaluated at 41e1d90): AP@0.5 47.7%, AR@10 65.2%, frame AUC
98.0%, video AUC 99.1% (per method, at 8 epochs, without the heads and against clip-label
training: docs/localisation.md).
"""

import ml_collections

from avcd import config_lib
from data_pipelines.building.synthetic import generator, phonemes

VARIANTS = ("demo", "generalisation", "partial")
HELD_OUT_V2 = ("ls_a_clean", "ls_b", "ls_c")


def get_config(variant: str = "demo"):
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Narrow variants of the paper's networks (same code, fewer channels and layers).
  config.model = config_lib.student(
    embed_dim=32,
    num_heads=4,
    audio=dict(
      stem_channels=8,
      stage_blocks=(1, 1, 1, 1),
      stage_channels=(8, 16, 32, 32),
      stage_strides=(1, 2, 2, 1),
      se_reduction=4,
    ),
    visual=dict(
      frontend=config_lib.visual_frontend(8, (8, 16, 32, 64), input_size=56),
      tcn_blocks=2,
      tcn_kernel=3,
      proj_channels=64,
      proj_kernel=5,
      embed_dim=32,
    ),
  )
  config.teachers = config_lib.teachers()
  config.teachers.source = "train"
  for teacher in (config.teachers.asr, config.teachers.vsr):
    teacher.update(
      width=64,
      num_heads=4,
      ffn_dim=128,
      encoder_layers=2,
      decoder_layers=2,
      num_classes=phonemes.NUM_PHONEMES,
      max_len=256,
    )
  config.teachers.vsr.frontend = config_lib.visual_frontend(8, (8, 16, 32, 64))
  config.teachers.vsr.mouth_size = 32
  config.teachers.training.update(num_epochs=8, learning_rate=2e-3, warmup_steps=100)
  config.loss = config_lib.losses()
  # Phoneme heads (an addition to the paper, README "Faithfulness"): without them the student
  # learns the audio-visual content late and by chance (seed study, README), with them in every
  # seed of the study.
  config.model.phoneme_classes = (phonemes.NUM_PHONEMES, phonemes.NUM_PHONEMES)
  config.loss.phoneme_weight = 0.5

  config.data = config_lib.data(
    builder="synthetic_av",
    train_split="train",
    max_frames=75,
    train_window=50,
    # Small batches: on a CPU budget many small steps beat few large ones (4 clips a step here).
    frame_budget=200,
    bucket_lengths=(50, 75),
    synthetic=dict(
      seed=0,
      train_clips=960,
      validation_clips=60,
      test_clips=160,
      min_frames=50,
      max_frames=75,
      num_speakers=64,
    ),
  )
  # A temperature fitted on the validation split calibrates P(fake) (docs/evaluation.md).
  config.eval = config_lib.evaluation(
    splits=("test",), frame_budget=1500, calibration_split="validation"
  )

  config.optim = config_lib.optimizer(learning_rate=1e-3)
  # 4 epochs (960 steps): with the phoneme heads every seed of the seed study has learned every
  # method by then (at 480 steps talking_head was still 71-99%); without them 7 of 10 seeds never
  # left the voice-cue plateau within these steps (docs/demo_seeds.md).
  config.train = config_lib.training(num_epochs=4, log_every_steps=120, checkpoint_every_steps=480)
  config.mesh = config_lib.mesh()

  if variant == "generalisation":
    # The claim study (docs/generalisation.md, `python -m avcd.studies.generalisation`): version 2
    # of the corpus, whose lip-sync generators differ from real clips in content only (plus each
    # generator's own trace); ls_a trains, ls_b and ls_c are held out, ls_a_clean is ls_a without
    # its trace. About 100 speakers; the test split holds 200 clips of every method.
    config.data.synthetic = dict(
      seed=0,
      version=2,
      methods=generator.METHODS_V2,
      held_out=HELD_OUT_V2,
      num_speakers=100,
      train_clips=2400,
      validation_clips=480,
      test_clips=2800,
      min_frames=50,
      max_frames=75,
    )
    # Whole clips (the teacher cache needs them), in two length buckets.
    config.data.update(train_window=75, bucket_lengths=(60, 75))
    config.teachers.cache = True
    config.eval.update(splits=("validation", "test"), calibration_split="")
    # The study's rows are the paper's losses; the heads are a treatment row of their own (R5).
    config.model.phoneme_classes = (0, 0)
    config.loss.phoneme_weight = 0.0
  if variant == "partial":
    # Temporal localisation (docs/localisation.md): every fake is a real clip with one or two
    # forged segments of 0.5-2 s (lip-sync, desync or voice swap); the student learns each
    # frame's own label. Whole clips of 3-5 s are trained (a window could miss the segments).
    config.data.synthetic = dict(
      seed=0,
      methods=generator.PARTIAL_METHODS,
      train_clips=960,
      validation_clips=60,
      test_clips=240,
      min_frames=75,
      max_frames=125,
      num_speakers=64,
    )
    config.data.update(
      max_frames=125, train_window=125, frame_budget=500, bucket_lengths=(100, 125)
    )
    config.train.labels = "frame"
    # Without the heads the frame classifier leaves the class prior (P(fake) ~0.12 on every frame)
    # after ~9 epochs; with them it has by 8, but segment edges keep sharpening to 16
    # (docs/localisation.md).
    config.train.num_epochs = 16
  return config
