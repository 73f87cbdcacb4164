"""iSQRT-COV: matrix square root by coupled Newton-Schulz iterations (Li et al., CVPR 2018).

Two evaluations of the same function (SPEC §1: trace pre-normalisation, exactly N coupled
iterations, post-compensation):
- `newton_schulz`: the iteration on matrices, 3N - 3 batched matmuls in a `lax.scan`,
  gradients by autodiff. Matmul-only, the fast choice on GPUs and TPUs.
- `eigh`: every iterate is a polynomial p_k(A) of the normalised covariance, so
  Y_N = U p_N(L) U^T with the iteration run on the eigenvalues; the gradient is the
  Daleckii-Krein formula with the divided differences of p_N, propagated through the
  iteration by the product rule (exact, no cancellation for close eigenvalues). One
  eigendecomposition and five matmuls instead of ~36 matmuls: the fast choice on CPUs.
  Its gradient is w.r.t. symmetric perturbations, which is all a covariance input has.
Both equal plain autodiff of the SPEC loop to float32 rounding (tested to 1e-5 and 1e-6).
"""
import functools

import jax
import jax.numpy as jnp

from gcp.ops.covariance import covariance
from gcp.ops.eig import daleckii_krein

_HIGHEST = jax.lax.Precision.HIGHEST
# Trace floor: all-zero (or constant) features have a zero covariance; without a floor the
# pre-normalisation divides 0 by 0.
TRACE_EPS = 1e-12
METHODS = ("auto", "newton_schulz", "eigh")


def _mm(a, b):
  return jnp.matmul(a, b, precision=_HIGHEST)


def resolve_method(method: str) -> str:
  """'auto' -> 'eigh' on CPU, 'newton_schulz' on accelerators (where eigh is slow)."""
  if method not in METHODS:
    raise ValueError(f"unknown iSQRT method {method!r}; valid: {', '.join(METHODS)}")
  if method == "auto":
    return "eigh" if jax.default_backend() == "cpu" else "newton_schulz"
  return method


def isqrt(cov: jax.Array, num_iters: int = 5, *, method: str = "newton_schulz",
          unroll: int | bool = 1) -> jax.Array:
  """Approximate matrix square root of SPD matrices, exactly as SPEC §1 defines iSQRT.

  Trace pre-normalisation, `num_iters` coupled Newton-Schulz iterations, post-compensation
  by sqrt(trace). With the released N = 5 this is an approximation, not the exact root:
  models are trained with it, so the iteration count is reproduced exactly.

  Args:
    cov: `[..., d, d]` symmetric positive semi-definite matrices (any float dtype).
    num_iters: N >= 1, the number of Newton-Schulz iterations.
    method: 'newton_schulz' (matmuls; autodiff gradient for any cotangent), 'eigh'
      (spectral; gradient w.r.t. symmetric perturbations) or 'auto' (see module doc).
    unroll: passed to `jax.lax.scan` by 'newton_schulz' (True unrolls fully).

  Returns:
    `[..., d, d]` float32, Y_N * sqrt(trace(cov)).
  """
  if num_iters < 1:
    raise ValueError(f"isqrt needs num_iters >= 1, got {num_iters}")
  if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
    raise ValueError(f"isqrt expects square matrices [..., d, d], got shape {cov.shape}")
  cov = cov.astype(jnp.float32)
  trace = jnp.maximum(jnp.trace(cov, axis1=-2, axis2=-1), TRACE_EPS)[..., None, None]
  a = cov / trace
  if resolve_method(method) == "eigh":
    y = _spectral_iteration(a, num_iters)
  else:
    y = _matrix_iteration(a, num_iters, unroll)
  return y * jnp.sqrt(trace)


def isqrt_cov(x: jax.Array, num_iters: int = 5, *, method: str = "auto") -> jax.Array:
  """iSQRT-normalised covariance of features: `isqrt(covariance(x))`, by the fastest method.

  Args:
    x: `[..., M, C]` features, any float dtype.
    num_iters: Newton-Schulz iterations N.
    method: 'auto' (eigh on CPU, Newton-Schulz matmuls elsewhere), 'newton_schulz', 'eigh'.

  Returns:
    `[..., C, C]` float32.
  """
  return isqrt(covariance(x), num_iters, method=method)


def _matrix_iteration(a, num_iters, unroll):
  eye = jnp.eye(a.shape[-1], dtype=jnp.float32)

  def step(carry, _):
    y, z = carry
    t = 0.5 * (3.0 * eye - _mm(z, y))
    return (_mm(y, t), _mm(t, z)), None

  # Y_0 = A and Z_0 = I, so the first iteration needs one product: T_1 = (3I - A)/2,
  # Y_1 = A T_1, Z_1 = T_1. The last needs only Y. 3N - 3 products in all (12 for N = 5).
  t = 0.5 * (3.0 * eye - a)
  if num_iters == 1:
    return _mm(a, t)
  (y, z), _ = jax.lax.scan(step, (_mm(a, t), t), None, length=num_iters - 2, unroll=unroll)
  return _mm(y, 0.5 * (3.0 * eye - _mm(z, y)))


def _scalar_iteration(lam, num_iters):
  """p_N at each eigenvalue, and the divided differences (p(l_i) - p(l_j)) / (l_i - l_j)
  (p'(l_i) where l_i = l_j): `[..., d]` -> (`[..., d]`, `[..., d, d]`).

  Divided differences follow the product rule (fg)[i, j] = f[i, j] g_j + f_i g[i, j].
  """
  y_i, y_j = lam[..., :, None], lam[..., None, :]
  z_i, z_j = jnp.ones_like(y_i), jnp.ones_like(y_j)
  dy, dz = jnp.ones_like(y_i * y_j), jnp.zeros_like(y_i * y_j)
  for _ in range(num_iters):
    dt = -0.5 * (dz * y_j + z_i * dy)          # T = (3 - Z Y) / 2
    t_i, t_j = 0.5 * (3.0 - z_i * y_i), 0.5 * (3.0 - z_j * y_j)
    dy, dz = dy * t_j + y_i * dt, dt * z_j + t_i * dz  # Y' = Y T, Z' = T Z
    y_i, y_j, z_i, z_j = y_i * t_i, y_j * t_j, t_i * z_i, t_j * z_j
  return y_i[..., :, 0], dy


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _spectral_iteration(a, num_iters):
  return _spectral_fwd(a, num_iters)[0]


def _spectral_fwd(a, num_iters):
  lam, u = jnp.linalg.eigh(a, symmetrize_input=True)
  p, _ = _scalar_iteration(lam, num_iters)
  return _mm(u * p[..., None, :], jnp.swapaxes(u, -1, -2)), (lam, u)


def _spectral_bwd(num_iters, res, g):
  lam, u = res
  return (daleckii_krein(u, _scalar_iteration(lam, num_iters)[1], g),)


_spectral_iteration.defvjp(_spectral_fwd, _spectral_bwd)
