"""Anti-aliased shape masks for drawing faces with numpy, broadcasting over frames."""

import numpy as np


def coverage(u, v, half_width, half_height, exponent=2.0):
  """Pixel coverage in [0, 1] of the superellipse |u/a|^p + (v/b)^2 <= 1.

  u, v: pixel offsets from the centre (u >= 0; shapes are symmetric); every argument broadcasts.
  The edge is anti-aliased over one pixel by a first-order distance: (level - 1) / |grad level|.
  That distance is blind to a thin shape's ends, so coverage is also bounded by the shape's box
  and, for shapes thinner than a pixel, by their thickness.
  """
  su = u / half_width
  sv = v / half_height
  su_power = su**exponent
  level = np.sqrt(su_power + sv * sv)
  grad_u = exponent * su_power / np.maximum(su, 1e-6) / half_width
  grad_v = 2.0 * sv / half_height
  slope = np.sqrt(grad_u * grad_u + grad_v * grad_v) / (2.0 * np.maximum(level, 1e-3))
  distance = (level - 1.0) / np.maximum(slope, 1e-6)
  inside_box = np.clip(np.minimum(half_width - u, half_height - np.abs(v)) + 0.5, 0.0, 1.0)
  return np.minimum(np.clip(0.5 - distance, 0.0, 1.0), inside_box) * np.minimum(
    1.0, 2.0 * np.minimum(half_width, half_height)
  )
