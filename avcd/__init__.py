"""avcd: audio-visual deepfake detection by explicit correlation learning."""

import os

# XLA:CPU (jaxlib 0.10) hands convolutions and the ops around them to YNNPACK fusions by default.
# For this model XLA's own kernels are faster: on a 2-core AMD EPYC the paper's predict step runs
# 1.57x and its train step 1.22x faster without the fusions (docs/scaling.md, "CPU"). XLA reads
# XLA_FLAGS once, when the first backend starts, so the default is set at avcd's first import;
# a user's XLA_FLAGS that name the flag keep their choice. GPU and TPU backends ignore it.
YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
if YNN_FUSION_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {YNN_FUSION_FLAG}=".strip()
