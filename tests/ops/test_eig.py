"""eig_power against a float64 numpy port of SPEC §1 MPN-COV, finite differences of that
port, and the exact gradient where the eigenvalues coincide or are clipped."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp.ops.eig import eig_power
from references.numerics import finite_difference_grad, rel_err

EPS = 1e-12


def f_power(lam, alpha, eps=EPS):
  return (np.maximum(lam, 0) + eps) ** alpha


def power_reference(cov: np.ndarray, alpha: float = 0.5, eps: float = EPS) -> np.ndarray:
  """SPEC §1 MPN-COV in float64 (any batch shape), symmetrising its input as eig_power does."""
  lam, u = np.linalg.eigh(0.5 * (cov + np.swapaxes(cov, -1, -2)))
  return (u * f_power(lam, alpha, eps)[..., None, :]) @ np.swapaxes(u, -1, -2)


def spd_with_spectrum(spectrum, seed=0):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(spectrum),) * 2))
  return (q * np.asarray(spectrum, np.float64)) @ q.T, q


def relu_covariance(m, c, scale=1.0, seed=0):
  """Covariance of M samples of C ReLU features: rank <= M - 1, so singular when M <= C."""
  x = scale * np.maximum(np.random.default_rng(seed).normal(size=(m, c)), 0)
  xc = x - x.mean(0)
  return xc.T @ xc / m


def weighted_grad(cov, w, alpha=0.5):
  """jax.grad of sum(W * eig_power(cov)) with W fixed."""
  return jax.grad(lambda c: jnp.sum(jnp.asarray(w, jnp.float32) * eig_power(c, alpha)))(
      jnp.asarray(cov, jnp.float32))


@pytest.mark.parametrize("alpha", [0.5, 1.0, 0.25])
def test_forward_matches_float64_reference_any_batch_shape(alpha):
  rng = np.random.default_rng(1)
  covs = np.stack([spd_with_spectrum(rng.uniform(0.2, 2.0, 5), seed=s)[0]
                   for s in range(6)]).reshape(2, 3, 5, 5)
  got = eig_power(jnp.asarray(covs, jnp.float32), alpha)
  assert got.shape == (2, 3, 5, 5) and got.dtype == jnp.float32
  want = power_reference(covs, alpha)
  for idx in np.ndindex(2, 3):
    assert rel_err(got[idx], want[idx]) <= 1e-5


@pytest.mark.parametrize("alpha", [0.5, 1.0, 0.25])
def test_gradient_matches_finite_differences_of_reference(alpha):
  cov, _ = spd_with_spectrum([0.5, 0.8, 1.1, 1.4, 1.7], seed=2)
  # W is deliberately not symmetric, and single entries of cov are perturbed: both
  # eig_power and the reference symmetrise their input, so every such input is legal and
  # the gradient is the full (symmetric) one; this checks that sym(G) is used.
  w = np.random.default_rng(3).normal(size=cov.shape)
  want = finite_difference_grad(lambda c: np.sum(w * power_reference(c, alpha)), cov)
  assert rel_err(weighted_grad(cov, w, alpha), want) <= 1e-4


def test_batched_gradient_equals_per_matrix_gradients_under_jit():
  rng = np.random.default_rng(4)
  covs = np.stack([spd_with_spectrum(rng.uniform(0.2, 2.0, 4), seed=s)[0]
                   for s in range(6)]).reshape(2, 3, 4, 4)
  w = rng.normal(size=covs.shape)
  loss = lambda c: jnp.sum(jnp.asarray(w, jnp.float32) * eig_power(c))
  got = jax.jit(jax.grad(loss))(jnp.asarray(covs, jnp.float32))
  for idx in np.ndindex(2, 3):
    np.testing.assert_allclose(got[idx], weighted_grad(covs[idx], w[idx]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("c, alpha", [(1.0, 0.5), (2.5, 0.5), (0.3, 0.25)])
def test_identity_gradient_is_exact(c, alpha):
  # cov = c I: f(cov + E) = f(c) I + f'(c) sym(E) + O(E^2), so the gradient of
  # sum(W * f(cov)) is f'(c) sym(W). Every eigenvalue coincides: K_ij = f'(c) everywhere.
  w = np.random.default_rng(5).normal(size=(6, 6))
  grad = weighted_grad(c * np.eye(6), w, alpha)
  want = alpha * (c + EPS) ** (alpha - 1) * 0.5 * (w + w.T)
  assert np.all(np.isfinite(grad))
  assert rel_err(grad, want) <= 1e-6


def test_plain_eigh_gradient_is_not_finite_for_the_identity():
  # Why the custom VJP exists: eigh's own rule divides by l_i - l_j = 0.
  w = jnp.asarray(np.random.default_rng(5).normal(size=(6, 6)), jnp.float32)

  def plain(c):
    lam, u = jnp.linalg.eigh(c)
    return jnp.sum(w * ((u * jnp.sqrt(jnp.maximum(lam, 0) + EPS)) @ u.T))

  assert not np.all(np.isfinite(jax.grad(plain)(jnp.eye(6))))


def daleckii_krein_reference(q, spectrum, w, alpha):
  """Exact float64 gradient of sum(W * f(Q diag(l) Q^T)) from a known eigendecomposition."""
  lam = np.asarray(spectrum, np.float64)
  f, fp = f_power(lam, alpha), alpha * (lam + EPS) ** (alpha - 1)
  diff = lam[:, None] - lam[None, :]
  same = diff == 0
  k = np.where(same, fp[:, None], (f[:, None] - f[None, :]) / np.where(same, 1, diff))
  return q @ (k * (q.T @ (0.5 * (w + w.T)) @ q)) @ q.T


@pytest.mark.parametrize("spectrum", [[1.0, 1.0, 1.0, 2.0, 0.5],
                                      [1.0, 1.0 + 1e-4, 1.0 + 2e-4, 2.0, 0.5]])
def test_repeated_and_close_eigenvalues_in_a_rotated_basis(spectrum):
  # The float32 eigenvalues of the repeated cluster differ by round-off; the divided
  # difference must still be f'(1) there (the release's K_ij = 0 would be off by ~50%).
  cov, q = spd_with_spectrum(spectrum, seed=6)
  w = np.random.default_rng(7).normal(size=cov.shape)
  grad = weighted_grad(cov, w)
  assert rel_err(grad, daleckii_krein_reference(q, spectrum, w, 0.5)) <= 1e-4


@pytest.mark.parametrize("spectrum", [[0.5, 0.8, 1.1, 1.4, 1.7], [1.0, 1.0, 1.0, 2.0, 0.5]])
def test_float64_input_is_computed_in_float64(spectrum):
  # With x64 the value and the gradient are float64-exact: against the reference and the
  # exact Daleckii-Krein gradient from the known eigendecomposition (distinct and repeated
  # eigenvalues), and against central differences of the reference.
  cov, q = spd_with_spectrum(spectrum, seed=2)
  w = np.random.default_rng(3).normal(size=cov.shape)
  with jax.enable_x64(True):
    out, vjp = jax.vjp(lambda c: eig_power(c, 0.5), jnp.asarray(cov))
    (grad,) = vjp(jnp.asarray(w))
    assert out.dtype == grad.dtype == jnp.float64
  assert rel_err(out, power_reference(cov)) <= 1e-14
  assert rel_err(grad, daleckii_krein_reference(q, spectrum, w, 0.5)) <= 1e-13
  fd = finite_difference_grad(lambda c: np.sum(w * power_reference(c)), cov)
  assert rel_err(grad, fd) <= 5e-8  # measured 5e-9: the differences' own round-off


def test_rank_deficient_covariance():
  # M = 5 samples of C = 12 ReLU features: rank 4, eight (float32 round-off) zero
  # eigenvalues. f is not differentiable at l = 0 (flat to the left, slope up to
  # alpha * eps^(alpha - 1) to the right), so the null-null block of the gradient is not
  # checkable. The range-range and range-null blocks are: there the central differences of
  # the float64 reference only push null eigenvalues to -O(h^2) (clipped, f flat), so they
  # measure the first-order slope. Checked as directional derivatives along
  # sym(u_a u_b^T), u_a in the range, u_b anywhere.
  cov = relu_covariance(m=5, c=12)
  lam, u = np.linalg.eigh(cov)
  rank = int(np.sum(lam > 1e-10 * lam.max()))
  assert rank == 4
  rng = np.random.default_rng(8)
  w = rng.normal(size=cov.shape)

  out = eig_power(jnp.asarray(cov, jnp.float32))
  grad = np.asarray(weighted_grad(cov, w), np.float64)
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, grad.T, rtol=0, atol=1e-6 * np.abs(grad).max())
  # Null eigenvalues of ~1e-8 in float32 give sqrt(1e-8) = 1e-4 in the output: the
  # forward error is set by round-off, not by the method.
  assert rel_err(out, power_reference(cov)) <= 1e-3

  h = 1e-6
  loss = lambda c: np.sum(w * power_reference(c))
  got, want = [], []
  for a in range(len(lam) - rank, len(lam)):  # eigh sorts ascending: the range is last
    for b in range(len(lam)):
      if b < len(lam) - rank or b >= a:
        e = 0.5 * (np.outer(u[:, a], u[:, b]) + np.outer(u[:, b], u[:, a]))
        got.append(np.sum(grad * e))
        want.append((loss(cov + h * e) - loss(cov - h * e)) / (2 * h))
  # Measured 4.5e-4: the float32 null eigenvalues (~1e-8, not 0) shift the range-null
  # slopes (f(l_a) - f(l_b)) / (l_a - l_b) by ~f(1e-8) / f(l_a); headroom for other LAPACKs.
  assert rel_err(np.array(got), np.array(want)) <= 2e-3


def test_all_zero_input():
  # Every eigenvalue is exactly 0, on the clipped side: f(0) = eps^alpha, K = 0.
  zero = jnp.zeros((2, 5, 5))
  out = eig_power(zero)
  grad = jax.grad(lambda c: jnp.sum(eig_power(c)))(zero)
  np.testing.assert_allclose(out, np.broadcast_to(np.sqrt(EPS) * np.eye(5), (2, 5, 5)),
                             rtol=1e-6)
  assert np.all(np.isfinite(grad))


def test_bfloat16_input_is_computed_in_float32():
  cov = jnp.asarray(relu_covariance(m=20, c=6), jnp.bfloat16)
  got = eig_power(cov)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, eig_power(cov.astype(jnp.float32)))
  grad = jax.grad(lambda c: jnp.sum(eig_power(c)))(cov)
  assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(grad.astype(jnp.float32)))


@pytest.mark.parametrize("scale", [1e-4, 1e4])
@pytest.mark.parametrize("m", [5, 40])
def test_extreme_feature_scales_are_finite(scale, m):
  cov = relu_covariance(m=m, c=8, scale=scale)
  w = np.random.default_rng(9).normal(size=cov.shape)
  out = eig_power(jnp.asarray(cov, jnp.float32))
  grad = weighted_grad(cov, w)
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad))
  assert rel_err(out, power_reference(cov)) <= 1e-2


@pytest.mark.parametrize("bad, match", [(dict(cov=jnp.zeros((3, 4))), r"square.*\[\.\.\., d, d\]"),
                                        (dict(cov=jnp.zeros(3)), "square"),
                                        (dict(alpha=0.0), "alpha > 0"),
                                        (dict(eps=0.0), "eps > 0")])
def test_rejects_bad_arguments(bad, match):
  kwargs = dict(cov=jnp.eye(3)) | bad
  with pytest.raises(ValueError, match=match):
    eig_power(**kwargs)
