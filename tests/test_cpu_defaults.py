"""avcd turns XLA:CPU's YNNPACK fusions off unless XLA_FLAGS already choose (avcd/__init__.py)."""

import os
import subprocess
import sys

from tests.conftest import REPO

# Prints the XLA_FLAGS that avcd's import leaves and whether a conv + ReLU of the ResNet's shape
# compiles to a YNNPACK fusion (jaxlib's default does that).
PROGRAM = """
import os
import avcd
import jax, jax.numpy as jnp
def conv(x, w):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jax.nn.relu(y)
conv = jax.jit(conv)
compiled = conv.lower(jnp.ones((4, 28, 28, 64)), jnp.ones((3, 3, 64, 64))).compile()
print(os.environ["XLA_FLAGS"])
print("__ynn_fusion" in compiled.as_text())
"""


def _run(xla_flags: str) -> list[str]:
  result = subprocess.run(
    [sys.executable, "-c", PROGRAM],
    cwd=REPO,
    env=dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout.split("\n")[:2]


def test_ynnpack_fusions_are_off_and_other_flags_kept():
  flags, ynn = _run("--xla_force_host_platform_device_count=2")
  assert flags == "--xla_force_host_platform_device_count=2 --xla_cpu_experimental_ynn_fusion_type="
  assert ynn == "False"


def test_a_users_own_choice_stands():
  flags, ynn = _run("--xla_cpu_experimental_ynn_fusion_type=individual_convolution")
  assert flags == "--xla_cpu_experimental_ynn_fusion_type=individual_convolution"
  assert ynn == "True"
