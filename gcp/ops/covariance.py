"""Covariance pooling and upper-triangular vectorisation."""
import jax
import jax.numpy as jnp
import numpy as np

from gcp.ops.dtypes import upcast

_HIGHEST = jax.lax.Precision.HIGHEST


def covariance(x: jax.Array) -> jax.Array:
  """Biased sample covariance of M samples, computed in at least float32 (`ops.upcast`).

  Args:
    x: `[..., M, C]` features (M samples of a C-dim vector).

  Returns:
    `[..., C, C]` float32 (float64 for float64 input), `(1/M) sum_m (x_m - mu)(x_m - mu)^T`.
  """
  if x.ndim < 2:
    raise ValueError(f"covariance expects features [..., M, C], got shape {x.shape}")
  return _covariance(x)


def centred(x: jax.Array) -> jax.Array:
  """`x - mean over samples` in at least float32: `[..., M, C]` -> `[..., M, C]`."""
  x = upcast(x)
  # Subtracting the mean costs O(MC); the PyTorch release's M x M centring matrix, O(M^2 C).
  return x - jnp.mean(x, axis=-2, keepdims=True)


@jax.custom_vjp
def _covariance(x):
  xc = centred(x)
  return jnp.einsum("...mc,...md->...cd", xc, xc, precision=_HIGHEST) / x.shape[-2]


def _covariance_fwd(x):
  xc = centred(x)
  cov = jnp.einsum("...mc,...md->...cd", xc, xc, precision=_HIGHEST) / x.shape[-2]
  return cov, (xc, jnp.zeros((0,), x.dtype))  # the empty array carries x's dtype


def _covariance_bwd(res, g):
  # dX = Xc (G + G^T) / M: one product instead of autodiff's two, and no centring term
  # (the columns of Xc already sum to zero).
  xc, dtype_carrier = res
  sym = g + jnp.swapaxes(g, -1, -2)
  dx = jnp.einsum("...mc,...cd->...md", xc, sym, precision=_HIGHEST) / xc.shape[-2]
  return (dx.astype(dtype_carrier.dtype),)


_covariance.defvjp(_covariance_fwd, _covariance_bwd)


def triu_vec(mat: jax.Array) -> jax.Array:
  """Upper triangle including the diagonal, row-major (`numpy.triu_indices` order).

  Args:
    mat: `[..., d, d]`.

  Returns:
    `[..., d * (d + 1) / 2]`; off-diagonal entries are not rescaled.
  """
  if mat.ndim < 2 or mat.shape[-1] != mat.shape[-2]:
    raise ValueError(f"triu_vec expects square matrices [..., d, d], got shape {mat.shape}")
  return _triu_vec(mat)


@jax.custom_vjp
def _triu_vec(mat):
  rows, cols = np.triu_indices(mat.shape[-1])
  return mat[..., rows, cols]


def _triu_vec_fwd(mat):
  return _triu_vec(mat), jnp.zeros((0, mat.shape[-1]), mat.dtype)  # carries d and dtype


def _triu_vec_bwd(res, g):
  # A gather instead of autodiff's scatter into zeros (about 10x faster on CPU): every
  # entry of the upper triangle reads its element of g, the lower triangle an appended 0.
  d = res.shape[-1]
  index = np.full((d, d), d * (d + 1) // 2)
  index[np.triu_indices(d)] = np.arange(d * (d + 1) // 2)
  padded = jnp.concatenate([g, jnp.zeros((*g.shape[:-1], 1), g.dtype)], axis=-1)
  return (jnp.take(padded, index, axis=-1).astype(res.dtype),)


_triu_vec.defvjp(_triu_vec_fwd, _triu_vec_bwd)
