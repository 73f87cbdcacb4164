"""iSQRT-COV: matrix square root by coupled Newton-Schulz iterations (Li et al., CVPR 2018)."""
import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST
# Trace floor: all-zero (or constant) features have a zero covariance; without a floor the
# pre-normalisation divides 0 by 0.
TRACE_EPS = 1e-12


def _mm(a, b):
  return jnp.matmul(a, b, precision=_HIGHEST)


def isqrt(cov: jax.Array, num_iters: int = 5, *, unroll: int | bool = 1) -> jax.Array:
  """Approximate matrix square root of SPD matrices, exactly as SPEC §1 defines iSQRT.

  Trace pre-normalisation, `num_iters` coupled Newton-Schulz iterations, post-compensation
  by sqrt(trace). With the released N = 5 this is an approximation, not the exact root:
  models are trained with it, so the iteration count is reproduced exactly.

  Args:
    cov: `[..., d, d]` symmetric positive semi-definite matrices (any float dtype).
    num_iters: N >= 1, the number of Newton-Schulz iterations.
    unroll: passed to `jax.lax.scan` (True unrolls fully).

  Returns:
    `[..., d, d]` float32, Y_N * sqrt(trace(cov)).
  """
  if num_iters < 1:
    raise ValueError(f"isqrt needs num_iters >= 1, got {num_iters}")
  if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
    raise ValueError(f"isqrt expects square matrices [..., d, d], got shape {cov.shape}")
  cov = cov.astype(jnp.float32)
  eye = jnp.eye(cov.shape[-1], dtype=jnp.float32)
  trace = jnp.maximum(jnp.trace(cov, axis1=-2, axis2=-1), TRACE_EPS)[..., None, None]
  a = cov / trace

  def step(carry, _):
    y, z = carry
    t = 0.5 * (3.0 * eye - _mm(z, y))
    return (_mm(y, t), _mm(t, z)), None

  # Y_0 = A and Z_0 = I, so the first iteration needs one product: T_1 = (3I - A)/2,
  # Y_1 = A T_1, Z_1 = T_1. The last needs only Y. 3N - 3 products in all (12 for N = 5).
  t = 0.5 * (3.0 * eye - a)
  if num_iters == 1:
    return _mm(a, t) * jnp.sqrt(trace)
  (y, z), _ = jax.lax.scan(step, (_mm(a, t), t), None, length=num_iters - 2, unroll=unroll)
  return _mm(y, 0.5 * (3.0 * eye - _mm(z, y))) * jnp.sqrt(trace)
