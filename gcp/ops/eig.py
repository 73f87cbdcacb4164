"""MPN-COV: matrix power by eigendecomposition with a Daleckii-Krein VJP (Li et al., ICCV 2017)."""
import functools

import jax
import jax.numpy as jnp

from gcp.ops.dtypes import upcast

_HIGHEST = jax.lax.Precision.HIGHEST


def _mm(a, b):
  return jnp.matmul(a, b, precision=_HIGHEST)


def _t(a):
  return jnp.swapaxes(a, -1, -2)


def eig_power(cov: jax.Array, alpha: float = 0.5, eps: float = 1e-12) -> jax.Array:
  """Matrix power of symmetric PSD matrices by eigendecomposition, as SPEC §1 MPN-COV.

  out = U diag(f(l)) U^T with f(l) = (max(l, 0) + eps)^alpha and (l, U) = eigh(sym(cov)),
  sym(A) = (A + A^T) / 2. Eigenvalues that round-off makes slightly negative are clipped.

  The gradient is a custom VJP, because `jax.grad` through `jnp.linalg.eigh` is NaN for
  repeated eigenvalues (e.g. the identity) and explodes for rank-deficient covariance
  (M < C). It is the Daleckii-Krein formula
    dcov = U (K o U^T sym(G) U) U^T,   K_ij = (f(l_i) - f(l_j)) / (l_i - l_j),
  for any batch shape. Where l_i = l_j (the diagonal, repeated eigenvalues) K_ij is the
  limit of the divided difference, f'(l_i); the release instead uses 1/(l_i - l_j) and sets
  the coinciding off-diagonal entries to 0, which is wrong for repeated eigenvalues (for
  cov = c I the exact gradient of <W, f(cov)> is f'(c) sym(W)). The divided difference is
  evaluated without cancellation, so no tolerance for "nearly equal" is needed. f is flat
  for l <= 0 (the max), so K_ij = 0 when both eigenvalues are clipped and f'(l) = 0 for
  l <= 0; at l = 0 exactly (e.g. an all-zero input) this takes the clipped side's derivative,
  not the other side's alpha * eps^(alpha - 1) (5e5 for the defaults). Every entry of K is
  finite and at most max f' = alpha * eps^(alpha - 1) for alpha <= 1.

  For rank-deficient input the null-space eigenvalues are round-off (~1e-7 of the largest
  in float32, ~1e-16 in float64); f is not Lipschitz at 0, so the null-null block of the
  gradient is large and only as meaningful as those eigenvalues. The range-range and
  range-null blocks are exact. Nothing assumes float32: the divided differences need no
  tolerance, and eps is part of the function (SPEC §1), the same in every dtype.

  Args:
    cov: `[..., d, d]` symmetric positive semi-definite matrices (any float dtype;
      computed in at least float32).
    alpha: the power, a Python float > 0 (0.5 is the matrix square root).
    eps: a Python float > 0 added to the clipped eigenvalues; it keeps f'(0+) finite.

  Returns:
    `[..., d, d]` float32 (float64 for float64 input).
  """
  if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
    raise ValueError(f"eig_power expects square matrices [..., d, d], got shape {cov.shape}")
  if not alpha > 0:
    raise ValueError(f"eig_power needs alpha > 0 (the power of the eigenvalues), got {alpha}")
  if not eps > 0:
    raise ValueError(f"eig_power needs eps > 0 (it keeps f'(0) finite), got {eps}")
  return _eig_power(upcast(cov), float(alpha), float(eps))


def _forward(cov, alpha, eps):
  lam, u = jnp.linalg.eigh(0.5 * (cov + _t(cov)), symmetrize_input=False)
  f = (jnp.maximum(lam, 0.0) + eps) ** alpha
  return _mm(u * f[..., None, :], _t(u)), (lam, u)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _eig_power(cov, alpha, eps):
  return _forward(cov, alpha, eps)[0]


def _divided_differences(lam, alpha, eps):
  """K_ij = (f(l_i) - f(l_j)) / (l_i - l_j), or f'(l_i) if l_i = l_j: `[..., d] -> [..., d, d]`."""
  # Ordering each pair makes K exactly symmetric and keeps every step below bounded.
  lo = jnp.minimum(lam[..., :, None], lam[..., None, :])
  hi = jnp.maximum(lam[..., :, None], lam[..., None, :])
  x_lo = jnp.maximum(lo, 0.0) + eps
  x_hi = jnp.maximum(hi, 0.0) + eps
  # f(hi) - f(lo) = x_hi^a (1 - (x_lo / x_hi)^a), with x_hi / x_lo = 1 + dx / x_lo: no
  # cancellation for close eigenvalues, no overflow (expm1 of a non-positive number is in
  # [-1, 0]), and exactly 0 when both are clipped.
  dx = jnp.maximum(hi, 0.0) - jnp.maximum(lo, 0.0)
  df = -(x_hi ** alpha) * jnp.expm1(-alpha * jnp.log1p(dx / x_lo))
  dl = hi - lo  # equals dx when both are positive, so the ratio is the true slope
  slope = df / jnp.where(dl > 0, dl, 1.0)
  deriv = jnp.where(hi > 0, alpha * x_hi ** (alpha - 1.0), 0.0)
  return jnp.where(dl > 0, slope, deriv)


def _eig_power_fwd(cov, alpha, eps):
  return _forward(cov, alpha, eps)


def daleckii_krein(u: jax.Array, k: jax.Array, g: jax.Array) -> jax.Array:
  """Gradient of a spectral function U f(L) U^T at a symmetric matrix, w.r.t. symmetric
  perturbations: U (K o U^T sym(G) U) U^T, symmetrised exactly.

  Args:
    u: `[..., d, d]` eigenvectors (columns).
    k: `[..., d, d]` divided differences of f at the eigenvalues (f' on the diagonal).
    g: `[..., d, d]` the output's cotangent.
  """
  gbar = _mm(_t(u), _mm(0.5 * (g + _t(g)), u))
  grad = _mm(u, _mm(k * gbar, _t(u)))
  return 0.5 * (grad + _t(grad))


def _eig_power_bwd(alpha, eps, res, g):
  lam, u = res
  return (daleckii_krein(u, _divided_differences(lam, alpha, eps), g),)


_eig_power.defvjp(_eig_power_fwd, _eig_power_bwd)
