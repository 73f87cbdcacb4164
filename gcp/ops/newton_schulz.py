"""iSQRT-COV: matrix square root by coupled Newton-Schulz iterations (Li et al., CVPR 2018).

Three evaluations of the same function (SPEC §1: trace pre-normalisation, exactly N coupled
iterations, post-compensation):
- `newton_schulz`: the iteration on matrices, 3N - 3 batched matmuls in a `lax.scan`,
  gradients by autodiff. Matmul-only, the fast choice on GPUs and TPUs.
- `eigh`: every iterate is a polynomial p_k(A) of the normalised covariance, so
  Y_N = U p_N(L) U^T with the iteration run on the eigenvalues; the gradient is the
  Daleckii-Krein formula with the divided differences of p_N, propagated through the
  iteration by the product rule (exact, no cancellation for close eigenvalues). One
  C x C eigendecomposition and five matmuls instead of ~36 matmuls: the fast choice on
  CPUs when M >= C. Its gradient is w.r.t. symmetric perturbations, which is all a
  covariance input has.
- `gram` (features only, `isqrt_cov`): with a = Xc / ||Xc||_F the scaled centred features
  [M, C], A = a^T a and Y_0 = A, so p_N(l) = l q_N(l) for a polynomial q_N and
  Y_N = a^T q_N(G) a with G = a a^T, the M x M Gram matrix (same nonzero eigenvalues).
  One M x M eigendecomposition, no division by eigenvalues (rank deficiency is harmless);
  the gradient w.r.t. the features is Daleckii-Krein in Gram space with the divided
  differences of q_N, for any cotangent. Seven M^2 C or M C^2 matmuls in all against the
  eigh path's two M C^2 and five C^3: the fast choice on CPUs when M < C (e.g. M = 196,
  C = 256 at 224 px).
All equal plain autodiff of the SPEC loop to rounding (tested to 1e-5 in float32, 1e-13 in
float64). They compute in at least float32 (`ops.upcast`): float64 input stays float64.
"""
import functools

import jax
import jax.numpy as jnp

from gcp.ops.covariance import centred, covariance
from gcp.ops.dtypes import upcast
from gcp.ops.eig import daleckii_krein

_HIGHEST = jax.lax.Precision.HIGHEST
# Trace floor in float32 (see `trace_eps`): all-zero (or constant) features have a zero
# covariance; without a floor the pre-normalisation divides 0 by 0.
TRACE_EPS = 1e-12
METHODS = ("auto", "newton_schulz", "eigh", "gram")


def _mm(a, b):
  return jnp.matmul(a, b, precision=_HIGHEST)


def _t(a):
  return jnp.swapaxes(a, -1, -2)


def trace_eps(dtype) -> float:
  """The trace floor for a computation in `dtype`: 1e-12 in float32, 3.5e-30 in float64.

  A trace below the floor is round-off, not signal: centring O(1) features leaves residuals
  of ~eps each, a trace of ~C eps^2, and 1e-12 is ~70 eps^2 in float32. The floor scales
  with eps^2 so that it means the same in float64; the float32 floor would distort float64
  covariances of features below ~1e-6 in scale (trace < 1e-12).
  """
  return TRACE_EPS * (float(jnp.finfo(dtype).eps) / float(jnp.finfo(jnp.float32).eps)) ** 2


def resolve_method(method: str, num_samples: int | None = None,
                   dim: int | None = None) -> str:
  """'auto' -> 'newton_schulz' on accelerators (where eigh is slow); on CPU 'gram' for
  features with fewer samples than channels (`num_samples` M < `dim` C), else 'eigh'."""
  if method not in METHODS:
    raise ValueError(f"unknown iSQRT method {method!r}; valid: {', '.join(METHODS)}")
  if method == "auto":
    if jax.default_backend() != "cpu":
      return "newton_schulz"
    return "gram" if num_samples is not None and num_samples < dim else "eigh"
  return method


def isqrt(cov: jax.Array, num_iters: int = 5, *, method: str = "newton_schulz",
          unroll: int | bool = 1) -> jax.Array:
  """Approximate matrix square root of SPD matrices, exactly as SPEC §1 defines iSQRT.

  Trace pre-normalisation, `num_iters` coupled Newton-Schulz iterations, post-compensation
  by sqrt(trace). With the released N = 5 this is an approximation, not the exact root:
  models are trained with it, so the iteration count is reproduced exactly.

  Args:
    cov: `[..., d, d]` symmetric positive semi-definite matrices (any float dtype;
      computed in at least float32).
    num_iters: N >= 1, the number of Newton-Schulz iterations.
    method: 'newton_schulz' (matmuls; autodiff gradient for any cotangent), 'eigh'
      (spectral; gradient w.r.t. symmetric perturbations) or 'auto' (see module doc).
      'gram' needs the features, not their covariance: use `isqrt_cov`.
    unroll: passed to `jax.lax.scan` by 'newton_schulz' (True unrolls fully).

  Returns:
    `[..., d, d]` float32 (float64 for float64 input), Y_N * sqrt(trace(cov)).
  """
  if num_iters < 1:
    raise ValueError(f"isqrt needs num_iters >= 1, got {num_iters}")
  if cov.ndim < 2 or cov.shape[-1] != cov.shape[-2]:
    raise ValueError(f"isqrt expects square matrices [..., d, d], got shape {cov.shape}")
  method = resolve_method(method)
  if method == "gram":
    raise ValueError("the 'gram' method works on features: use isqrt_cov(x, method='gram')")
  cov = upcast(cov)
  trace = jnp.maximum(jnp.trace(cov, axis1=-2, axis2=-1), trace_eps(cov.dtype))
  trace = trace[..., None, None]
  a = cov / trace
  if method == "eigh":
    y = _spectral_iteration(a, num_iters)
  else:
    y = _matrix_iteration(a, num_iters, unroll)
  return y * jnp.sqrt(trace)


def isqrt_cov(x: jax.Array, num_iters: int = 5, *, method: str = "auto") -> jax.Array:
  """iSQRT-normalised covariance of features: `isqrt(covariance(x))`, by the fastest method.

  Every method computes the same function and its gradient for any cotangent of the
  output (the covariance input only ever sees the cotangent's symmetric part).

  Args:
    x: `[..., M, C]` features, any float dtype (computed in at least float32).
    num_iters: Newton-Schulz iterations N.
    method: 'auto' (on CPU 'gram' if M < C, else 'eigh'; Newton-Schulz matmuls on
      accelerators), 'newton_schulz', 'eigh' or 'gram' (see module doc).

  Returns:
    `[..., C, C]` float32 (float64 for float64 input).
  """
  if x.ndim < 2:
    raise ValueError(f"isqrt_cov expects features [..., M, C], got shape {x.shape}")
  if num_iters < 1:
    raise ValueError(f"isqrt needs num_iters >= 1, got {num_iters}")
  num_samples, dim = x.shape[-2:]
  method = resolve_method(method, num_samples, dim)
  if method != "gram":
    return isqrt(covariance(x), num_iters, method=method)
  return _gram_isqrt(centred(x), num_iters)


def _matrix_iteration(a, num_iters, unroll):
  eye = jnp.eye(a.shape[-1], dtype=a.dtype)

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


# ------------------------------------------------------------------- Gram-space evaluation

def _gram_scalar_iteration(lam, num_iters):
  """q_N with p_N(l) = l q_N(l), at each eigenvalue, and its divided differences
  (q(l_i) - q(l_j)) / (l_i - l_j) (q'(l_i) where l_i = l_j): `[..., m]` ->
  (`[..., m]`, `[..., m, m]`).

  Y_k = l r_k, Z_k = z_k with r_0 = z_0 = 1: t = (3 - z l r) / 2, r' = r t, z' = t z.
  Divided differences by the product rule (fg)[i, j] = f[i, j] g_j + f_i g[i, j], with
  l[i, j] = 1 and r_0[i, j] = z_0[i, j] = 0.
  """
  l_i, l_j = lam[..., :, None], lam[..., None, :]
  r_i, r_j = jnp.ones_like(l_i), jnp.ones_like(l_j)
  z_i, z_j = r_i, r_j
  dr = dz = jnp.zeros_like(l_i * l_j)
  for _ in range(num_iters):
    dt = -0.5 * (dz * (l_j * r_j) + z_i * (r_j + l_i * dr))  # t = (3 - z (l r)) / 2
    t_i, t_j = 0.5 * (3.0 - z_i * l_i * r_i), 0.5 * (3.0 - z_j * l_j * r_j)
    dr, dz = dr * t_j + r_i * dt, dt * z_j + t_i * dz
    r_i, r_j, z_i, z_j = r_i * t_i, r_j * t_j, t_i * z_i, t_j * z_j
  return r_i[..., :, 0], dr


def _gram_isqrt(xc, num_iters):
  """isqrt(xc^T xc / M) of `[..., M, C]` xc (centred features; any real matrix works) in
  Gram space. The trace normalisation and post-compensation are left to autodiff."""
  m = xc.shape[-2]
  # trace(cov) = ||xc||^2 / M, floored; a = xc / sqrt(M trace), so that a^T a = cov / trace.
  trace = jnp.maximum(jnp.sum(jnp.square(xc), axis=(-2, -1), keepdims=True) / m,
                      trace_eps(xc.dtype))
  return _gram_iteration(xc * jax.lax.rsqrt(trace * m), num_iters) * jnp.sqrt(trace)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _gram_iteration(a, num_iters):
  """Y_N = a^T q_N(a a^T) a = p_N(a^T a) for `[..., M, C]` a."""
  return _gram_fwd(a, num_iters)[0]


def _gram_fwd(a, num_iters):
  # G = a a^T = V diag(l) V^T. With b = V^T a (orthogonal rows, |b_i|^2 = l_i),
  # Y_N = a^T V diag(q) V^T a = b^T diag(q) b. eigh reads only G's lower triangle.
  lam, v = jnp.linalg.eigh(_mm(a, _t(a)), symmetrize_input=False)
  b = _mm(_t(v), a)
  q, _ = _gram_scalar_iteration(lam, num_iters)
  return _mm(_t(b) * q[..., None, :], b), (lam, v, b)


def _gram_bwd(num_iters, res, g):
  """VJP for any cotangent g. Y = a^T K a with K = q(G), G = a a^T, is symmetric for every
  a, so only S = sym(g) enters:
    <S, dY> = 2 <K a S, da> + <W, dK>,  W = a S a^T,
    <W, dK> = <H, dG> = 2 <H a, da>,    H = V (Q o V^T W V) V^T  (Daleckii-Krein, Q the
                                        divided differences of q, symmetrised),
  so the gradient is 2 (K a S + H a) = 2 V (diag(q) b S + sym(Q o b S b^T) b), with
  V^T W V = (b S) b^T: three M^2 C products and one M C^2.
  """
  lam, v, b = res
  q, dq = _gram_scalar_iteration(lam, num_iters)
  bs = _mm(b, 0.5 * (g + _t(g)))
  h = dq * _mm(bs, _t(b))
  h = h + _t(h)  # 2 sym(Q o V^T W V), exactly symmetric
  return (_mm(v, 2.0 * q[..., :, None] * bs + _mm(h, b)),)


_gram_iteration.defvjp(_gram_fwd, _gram_bwd)
