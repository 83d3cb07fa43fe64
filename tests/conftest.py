"""What several test modules share: the repository's location, fast-compile flags, mesh tolerances.

Test modules import these names from here instead of from each other.
"""

import os
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO / "configs" / "tiny.py"
# XLA:CPU's LLVM optimisations take most of the compile time and change nothing tested here.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
# The same for the programs the tests compile in their own process (most of the suite's time):
# XLA reads XLA_FLAGS once, when the backend starts, which is after this module is imported.
USER_XLA_FLAGS = os.environ.get("XLA_FLAGS", "")  # for a test that must run as a user would
os.environ["XLA_FLAGS"] = f"{USER_XLA_FLAGS} {FAST_COMPILE_FLAGS}".strip()
# Losses of the same steps on different meshes agree to float32 summation order (test_mesh.py,
# test_multiprocess.py); Adam's eps is raised so that nearly-zero gradients cannot flip updates.
LOSS_RTOL = 2e-5
ADAM_EPS = 1.0
