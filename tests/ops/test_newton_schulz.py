"""isqrt against an exact square root, a float64 numpy port of SPEC §1, and finite
differences of that port."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp import ops
from references.numerics import finite_difference_grad, rel_err


def isqrt_reference(cov: np.ndarray, num_iters: int) -> np.ndarray:
  """SPEC §1 iSQRT in float64, written from the formulas (one matrix)."""
  eye = np.eye(len(cov))
  trace = np.trace(cov)
  y, z = cov / trace, eye
  for _ in range(num_iters):
    t = 0.5 * (3 * eye - z @ y)
    y, z = y @ t, t @ z
  return y * np.sqrt(trace)


def relu_covariances(batch=3, m=49, c=16, seed=0):
  """Covariances of ReLU features, the kind the heads see (rank <= m - 1)."""
  x = np.maximum(np.random.default_rng(seed).normal(size=(batch, m, c)), 0)
  xc = x - x.mean(1, keepdims=True)
  return np.einsum("bmc,bmd->bcd", xc, xc) / m


def well_conditioned_spd(d=6, seed=0):
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
  return (q * np.linspace(0.5, 1.5, d)) @ q.T


@pytest.mark.parametrize("num_iters", [10, 15])
def test_converges_to_exact_square_root(num_iters):
  spd = well_conditioned_spd()
  lam, u = np.linalg.eigh(spd)
  exact = (u * np.sqrt(lam)) @ u.T
  assert rel_err(ops.isqrt(jnp.asarray(spd, jnp.float32), num_iters), exact) <= 1e-4


def test_five_iterations_are_an_approximation_not_the_root():
  # The released models use N = 5: the result must be the approximation, not sqrtm.
  spd = well_conditioned_spd()
  lam, u = np.linalg.eigh(spd)
  assert rel_err(ops.isqrt(jnp.asarray(spd, jnp.float32), 5), (u * np.sqrt(lam)) @ u.T) > 1e-3


@pytest.mark.parametrize("num_iters", [1, 3, 5])
def test_matches_float64_reference(num_iters):
  covs = relu_covariances()
  got = ops.isqrt(jnp.asarray(covs, jnp.float32), num_iters)
  for g, c in zip(got, covs):
    assert rel_err(g, isqrt_reference(c, num_iters)) <= 1e-5


def test_any_batch_shape():
  covs = relu_covariances(batch=6).reshape(2, 3, 16, 16)
  got = ops.isqrt(jnp.asarray(covs, jnp.float32))
  assert got.shape == (2, 3, 16, 16)
  assert rel_err(got[1, 2], isqrt_reference(covs[1, 2], 5)) <= 1e-5


def test_gradient_matches_finite_differences_of_reference():
  rng = np.random.default_rng(3)
  cov = relu_covariances(batch=1)[0]
  w = rng.normal(size=cov.shape)
  grad = jax.grad(lambda c: jnp.sum(jnp.asarray(w, jnp.float32) * ops.isqrt(c)))(
      jnp.asarray(cov, jnp.float32))
  want = finite_difference_grad(lambda c: np.sum(w * isqrt_reference(c, 5)), cov)
  assert rel_err(grad, want) <= 1e-4


def test_gradient_through_covariance_matches_finite_differences():
  rng = np.random.default_rng(4)
  x = np.maximum(rng.normal(size=(30, 8)), 0)
  w = rng.normal(size=(8, 8))

  def loss_ref(feats):
    xc = feats - feats.mean(0)
    return np.sum(w * isqrt_reference(xc.T @ xc / len(feats), 5))

  grad = jax.grad(lambda f: jnp.sum(jnp.asarray(w, jnp.float32) *
                                    ops.isqrt(ops.covariance(f))))(jnp.asarray(x, jnp.float32))
  assert rel_err(grad, finite_difference_grad(loss_ref, x)) <= 1e-4


@pytest.mark.parametrize("value", [0.0, 2.5])
def test_zero_and_constant_features_give_finite_values_and_gradients(value):
  def head(x):
    return ops.triu_vec(ops.isqrt(ops.covariance(x)))

  x = jnp.full((2, 49, 8), value)
  out = head(x)
  grad = jax.grad(lambda f: jnp.sum(head(f)))(x)
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(out, 0.0, atol=1e-5)


def test_bfloat16_input_is_computed_in_float32():
  cov = jnp.asarray(relu_covariances(batch=2), jnp.bfloat16)
  got = ops.isqrt(cov)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, ops.isqrt(cov.astype(jnp.float32)))


def test_unrolled_scan_gives_the_same_result():
  cov = jnp.asarray(relu_covariances(batch=2), jnp.float32)
  np.testing.assert_allclose(ops.isqrt(cov, unroll=True), ops.isqrt(cov), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("bad, match", [(dict(num_iters=0), "num_iters >= 1"),
                                        (dict(cov=jnp.zeros((3, 4))), "square")])
def test_rejects_bad_arguments(bad, match):
  kwargs = dict(cov=jnp.eye(3), num_iters=5) | bad
  with pytest.raises(ValueError, match=match):
    ops.isqrt(**kwargs)


# ----------------------------------------------------------------- the eigh evaluation

@pytest.mark.parametrize("num_iters", [1, 3, 5])
def test_eigh_method_matches_float64_reference(num_iters):
  covs = relu_covariances()
  got = ops.isqrt(jnp.asarray(covs, jnp.float32), num_iters, method="eigh")
  for g, c in zip(got, covs):
    assert rel_err(g, isqrt_reference(c, num_iters)) <= 1e-5


@pytest.mark.parametrize("name, x", [
    ("M > C", np.maximum(np.random.default_rng(6).normal(size=(3, 40, 8)), 0)),
    ("M < C (rank-deficient)", np.maximum(np.random.default_rng(7).normal(size=(3, 5, 12)), 0)),
    ("large scale", 1e4 * np.random.default_rng(8).normal(size=(2, 30, 8))),
])
def test_isqrt_cov_methods_agree_with_autodiff_of_the_loop(name, x):
  # Every evaluation equals plain autodiff of SPEC §1 (the Newton-Schulz loop) to 1e-5.
  x = jnp.asarray(x, jnp.float32)
  w = jnp.asarray(np.random.default_rng(9).normal(size=(x.shape[-1],) * 2), jnp.float32)

  def loss(f, method):
    return jnp.sum(ops.isqrt_cov(f, method=method) * w)

  want = ops.isqrt(ops.covariance(x), method="newton_schulz")
  want_grad = jax.grad(loss)(x, "newton_schulz")
  for method in ("eigh", "auto"):
    assert rel_err(ops.isqrt_cov(x, method=method), np.asarray(want, np.float64)) <= 1e-5
    assert rel_err(jax.grad(loss)(x, method), np.asarray(want_grad, np.float64)) <= 1e-5


def test_eigh_method_handles_repeated_and_zero_eigenvalues():
  w = np.random.default_rng(10).normal(size=(6, 6))
  w_sym = jnp.asarray(0.5 * (w + w.T), jnp.float32)
  for cov in (2.0 * jnp.eye(6), jnp.zeros((6, 6))):
    out = ops.isqrt(cov, method="eigh")
    np.testing.assert_allclose(out, ops.isqrt(cov), rtol=1e-6, atol=1e-7)
    grads = [jax.grad(lambda c: jnp.sum(ops.isqrt(c, method=m) * w_sym))(cov)
             for m in ("eigh", "newton_schulz")]
    assert np.all(np.isfinite(grads[0]))
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_unknown_method_lists_the_valid_ones():
  with pytest.raises(ValueError, match="unknown iSQRT method 'svd'; valid: auto, newton_schulz, eigh"):
    ops.isqrt(jnp.eye(3), method="svd")
