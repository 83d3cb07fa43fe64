"""A tiny corpus of random, schema-valid clips for the loader tests and throughput checks.

`build(data_dir, config_name)` writes it as ArrayRecord through the real `ClipBuilder` path, so the
loader reads exactly what a corpus builder would produce. Clips vary in length, method and label;
some open with a silent lead-in (MFCC c0 at python_speech_features' log(eps) for digital silence)
so that `trim_leading_silence` has something to find.
"""

import dataclasses
import zlib

import cv2
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import schema
from data_pipelines.building import clip_builder

# (method, category, label, audio_label, video_label): real clips and three kinds of fakes.
METHODS = (
  ("real", "A", 0, 0, 0),
  ("rtvc", "B", 1, 1, 0),
  ("faceswap", "C", 1, 0, 1),
  ("wav2lip", "D", 1, 1, 1),
)
SPEECH_LOG_ENERGY = 18.0  # typical c0 of speech at 16-bit scale
DIGITAL_SILENCE_LOG_ENERGY = float(np.log(np.finfo(np.float64).eps))  # what pspeech writes for 0


@dataclasses.dataclass
class RandomCorpusConfig(tfds.core.BuilderConfig):
  """Sizes of the random corpus; `split_sizes` are deliberately not multiples of batch sizes."""

  split_sizes: tuple[tuple[str, int], ...] = (("train", 29), ("test", 13))
  min_frames: int = 6
  max_frames: int = 130
  with_lips: bool = True
  silent_lead_in_fraction: float = 0.3
  # False: written without the frame-label fields, as corpora prepared before they existed.
  frame_label_fields: bool = True


class RandomCorpus(clip_builder.ClipBuilder):
  """Random clips in the shared schema (tests only)."""

  BUILDER_CONFIGS = [
    RandomCorpusConfig(name="small"),
    RandomCorpusConfig(name="no_lips", with_lips=False, split_sizes=(("test", 7),)),
    RandomCorpusConfig(name="no_frame_labels", frame_label_fields=False),
    RandomCorpusConfig(
      name="bench",
      split_sizes=(("train", 160),),
      min_frames=40,
      max_frames=250,
      silent_lead_in_fraction=0.0,
    ),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    features = schema.tfds_features()
    if not self.builder_config.frame_label_fields:
      features = tfds.features.FeaturesDict(
        {k: v for k, v in features.items() if k not in schema.FRAME_LABEL_FIELDS}
      )
    return self.dataset_info_from_configs(features=features, description=self.__doc__)

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: clips are drawn from a seeded generator.
    return {
      split: self._generate_examples(split, size) for split, size in self.builder_config.split_sizes
    }

  def _generate_examples(self, split, size):
    for i in range(size):
      rng = np.random.default_rng([zlib.crc32(split.encode()), i])
      example = schema.validate_example(
        random_example(rng, f"{split}-{i:04d}", self.builder_config)
      )
      if not self.builder_config.frame_label_fields:
        example = {k: v for k, v in example.items() if k not in schema.FRAME_LABEL_FIELDS}
      yield example["id"], example


def random_example(rng: np.random.Generator, clip_id: str, config: RandomCorpusConfig) -> dict:
  """One random clip.

  Faces are a smooth image plus per-frame noise: every frame differs (tests locate windows by
  their faces) and, like video frames, they barely compress (zlib keeps ~96% of the bytes).
  """
  num_frames = int(rng.integers(config.min_frames, config.max_frames + 1))
  method, category, label, audio_label, video_label = METHODS[int(rng.integers(len(METHODS)))]
  audio_rows = schema.AUDIO_FRAMES_PER_VIDEO_FRAME * num_frames

  mfcc = rng.normal(0.0, 5.0, (audio_rows, schema.NUM_MFCC)).astype(np.float32)
  mfcc[:, 0] = rng.normal(SPEECH_LOG_ENERGY, 1.5, audio_rows)
  if rng.random() < config.silent_lead_in_fraction:
    silent_frames = int(rng.integers(1, num_frames // 2 + 1))
    mfcc[: schema.AUDIO_FRAMES_PER_VIDEO_FRAME * silent_frames, 0] = DIGITAL_SILENCE_LOG_ENERGY

  base = cv2.resize(
    rng.uniform(0, 255, (8, 8)).astype(np.float32),
    (schema.FACE_SIZE, schema.FACE_SIZE),
    interpolation=cv2.INTER_CUBIC,
  )
  drift = rng.normal(0.0, 2.0, (num_frames, 1, 1)).cumsum(axis=0)
  noise = rng.normal(0.0, 3.0, (num_frames, schema.FACE_SIZE, schema.FACE_SIZE))
  faces = np.clip(base + drift + noise, 0, 255).astype(np.uint8)

  lip_rows = num_frames if config.with_lips else 0
  example = {
    "id": clip_id,
    "dataset": "random",
    "method": method,
    "category": category,
    "label": label,
    "audio_label": audio_label,
    "video_label": video_label,
    "identity_label": 0,
    "sync_label": 0,
    "fps": schema.FPS,
    "num_frames": num_frames,
    "mfcc": mfcc,
    "stft": np.abs(rng.normal(0.0, 1.0, (audio_rows, schema.NUM_STFT_BINS))).astype(np.float16),
    "faces": faces,
    "lips": rng.normal(0.0, 1.0, (lip_rows, schema.LIP_DIM)).astype(np.float16),
    "phonemes": rng.integers(-1, 40, num_frames).astype(np.int32),
  }
  # Half the fakes are forged in one segment only (drawn last: the draws above stay as they were).
  if label and rng.random() < 0.5:
    first = int(rng.integers(num_frames))
    forged = np.zeros(num_frames, np.uint8)
    forged[first : first + int(rng.integers(1, num_frames + 1))] = 1
    example.update(
      frame_labels=forged,
      audio_frame_labels=forged * audio_label,
      video_frame_labels=forged * video_label,
    )
  return example


def build(data_dir: str, config_name: str = "small") -> str:
  """Prepares the corpus under `data_dir`; returns the builder name to put in `data.builder`."""
  builder = RandomCorpus(config=config_name, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return f"{RandomCorpus.name}/{config_name}"
