"""gcp.layers.max_pool: forward as flax's max-pool; gradient to the first maximum of each
window in row-major order, against an exact float64 loop and XLA's select-and-scatter."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp import layers


def _first_max_gradient(x: np.ndarray, g: np.ndarray, window: int, stride: int):
  """Each window's upstream gradient added at its first maximum (row-major), in float64."""
  dx = np.zeros(x.shape)
  for n, r, s, ch in np.ndindex(*g.shape):
    patch = x[n, r * stride:r * stride + window, s * stride:s * stride + window, ch]
    i, j = np.unravel_index(np.argmax(patch), patch.shape)  # argmax: the first maximum
    dx[n, r * stride + i, s * stride + j, ch] += g[n, r, s, ch]
  return dx


@pytest.mark.parametrize("window,stride,padding", [(3, 2, ((1, 1), (1, 1))), (3, 2, "SAME"),
                                                    (2, 2, "VALID")])
def test_max_pool_gradient_goes_to_each_windows_first_maximum(window, stride, padding):
  rng = np.random.default_rng(0)
  # Post-ReLU-like values on a coarse grid: most windows hold ties, many all zeros.
  x = np.maximum(np.round(rng.normal(size=(2, 9, 8, 3)) * 2) / 2, 0).astype(np.float32)
  pooled = lambda x: layers.pool(x, window, stride, padding=padding)  # noqa: E731
  y, vjp = jax.vjp(pooled, jnp.asarray(x))
  g = rng.normal(size=y.shape).astype(np.float32)
  (dx,) = vjp(jnp.asarray(g))

  flax_pooled = lambda x: nn.max_pool(  # noqa: E731
      x, (window, window), (stride, stride),
      padding if isinstance(padding, str) else tuple(padding))
  y_ref, vjp_ref = jax.vjp(flax_pooled, jnp.asarray(x))
  np.testing.assert_array_equal(y, y_ref)
  # XLA's select-and-scatter: same routing, summed in another order (float32 rounding).
  np.testing.assert_allclose(dx, vjp_ref(jnp.asarray(g))[0], rtol=1e-6, atol=1e-6)

  pads = (jax.lax.padtype_to_pads(x.shape[1:3], (window,) * 2, (stride,) * 2, padding)
          if isinstance(padding, str) else padding)
  padded = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)), constant_values=-np.inf)
  exact = _first_max_gradient(padded, g.astype(np.float64), window, stride)
  exact = exact[:, pads[0][0]:pads[0][0] + x.shape[1], pads[1][0]:pads[1][0] + x.shape[2]]
  np.testing.assert_allclose(dx, exact, rtol=1e-6, atol=1e-6)
