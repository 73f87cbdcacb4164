"""Covariance pooling and upper-triangular vectorisation."""
import jax
import jax.numpy as jnp
import numpy as np


def covariance(x: jax.Array) -> jax.Array:
  """Biased sample covariance of M samples, in float32 whatever the input dtype.

  Args:
    x: `[..., M, C]` features (M samples of a C-dim vector).

  Returns:
    `[..., C, C]` float32, `(1/M) sum_m (x_m - mu)(x_m - mu)^T`.
  """
  if x.ndim < 2:
    raise ValueError(f"covariance expects features [..., M, C], got shape {x.shape}")
  x = x.astype(jnp.float32)
  # Subtracting the mean costs O(MC); the PyTorch release's M x M centring matrix costs O(M^2).
  xc = x - jnp.mean(x, axis=-2, keepdims=True)
  return jnp.einsum("...mc,...md->...cd", xc, xc,
                    precision=jax.lax.Precision.HIGHEST) / x.shape[-2]


def triu_vec(mat: jax.Array) -> jax.Array:
  """Upper triangle including the diagonal, row-major (`numpy.triu_indices` order).

  Args:
    mat: `[..., d, d]`.

  Returns:
    `[..., d * (d + 1) / 2]`; off-diagonal entries are not rescaled.
  """
  if mat.ndim < 2 or mat.shape[-1] != mat.shape[-2]:
    raise ValueError(f"triu_vec expects square matrices [..., d, d], got shape {mat.shape}")
  rows, cols = np.triu_indices(mat.shape[-1])
  return mat[..., rows, cols]
