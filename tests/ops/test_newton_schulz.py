"""isqrt against an exact square root, a float64 numpy port of SPEC §1, and finite
differences of that port."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp import ops
from gcp.ops import newton_schulz
from references.numerics import finite_difference_grad, rel_err

FEATURE_METHODS = ("newton_schulz", "eigh", "gram")  # 'auto' is one of the last two


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


@pytest.mark.parametrize("method", FEATURE_METHODS)
@pytest.mark.parametrize("m", [30, 5])  # M > C and M < C (rank-deficient)
def test_gradient_through_covariance_matches_finite_differences(method, m):
  rng = np.random.default_rng(4)
  x = np.maximum(rng.normal(size=(m, 8)), 0)
  w = rng.normal(size=(8, 8))  # not symmetric

  def loss_ref(feats):
    xc = feats - feats.mean(0)
    return np.sum(w * isqrt_reference(xc.T @ xc / len(feats), 5))

  grad = jax.grad(lambda f: jnp.sum(jnp.asarray(w, jnp.float32) *
                                    ops.isqrt_cov(f, method=method)))(jnp.asarray(x, jnp.float32))
  assert rel_err(grad, finite_difference_grad(loss_ref, x)) <= 1e-4


@pytest.mark.parametrize("method", FEATURE_METHODS)
@pytest.mark.parametrize("value, m", [(0.0, 49), (2.5, 49), (0.0, 5)])
def test_zero_and_constant_features_give_finite_values_and_gradients(value, m, method):
  def head(x):
    return ops.triu_vec(ops.isqrt_cov(x, method=method))

  x = jnp.full((2, m, 8), value)
  out = head(x)
  grad = jax.grad(lambda f: jnp.sum(head(f)))(x)
  assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(out, 0.0, atol=1e-5)


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_single_position_gives_zero_and_zero_gradient(method):
  # M = 1: the covariance is 0 whatever x is, so the function is constant.
  x = jnp.asarray(np.random.default_rng(11).normal(size=(2, 1, 8)), jnp.float32)
  np.testing.assert_array_equal(ops.isqrt_cov(x, method=method), 0.0)
  grad = jax.grad(lambda f: jnp.sum(ops.isqrt_cov(f, method=method)))(x)
  np.testing.assert_array_equal(grad, 0.0)


def test_bfloat16_input_is_computed_in_float32():
  cov = jnp.asarray(relu_covariances(batch=2), jnp.bfloat16)
  got = ops.isqrt(cov)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, ops.isqrt(cov.astype(jnp.float32)))


@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_bfloat16_features_are_computed_in_float32(method):
  x = jnp.asarray(np.maximum(np.random.default_rng(12).normal(size=(2, 5, 12)), 0),
                  jnp.bfloat16)
  got = ops.isqrt_cov(x, method=method)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, ops.isqrt_cov(x.astype(jnp.float32), method=method))
  grad = jax.grad(lambda f: jnp.sum(ops.isqrt_cov(f, method=method)[..., 0, :]))(x)
  assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_trace_floor_scales_with_the_dtype():
  # The floor keeps 0/0 out of the pre-normalisation; it is 1e-12 in float32 and ~3.5e-30
  # in float64, so float64 features far below float32's floor (here scale 1e-7, trace
  # ~1e-14) are still computed exactly: isqrt(s^2 cov) = s isqrt(cov) for every method.
  assert newton_schulz.trace_eps(jnp.float32) == 1e-12
  assert 3e-30 < newton_schulz.trace_eps(jnp.float64) < 4e-30
  x = np.maximum(np.random.default_rng(17).normal(size=(2, 5, 4)), 0)
  with jax.enable_x64(True):
    for method in FEATURE_METHODS:
      isqrt_cov = jax.jit(lambda f, method=method: ops.isqrt_cov(f, method=method))
      small = isqrt_cov(jnp.asarray(1e-7 * x))
      assert small.dtype == jnp.float64
      assert rel_err(small, 1e-7 * np.asarray(isqrt_cov(jnp.asarray(x)))) <= 1e-13
      np.testing.assert_array_equal(isqrt_cov(jnp.zeros(x.shape)), 0.0)


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
    ("small scale, M < C", 1e-4 * np.random.default_rng(13).normal(size=(3, 5, 12))),
    ("large scale, M < C", 1e4 * np.random.default_rng(14).normal(size=(3, 5, 12))),
    ("repeated Gram eigenvalues", np.broadcast_to(np.eye(5, 12), (3, 5, 12))),
])
def test_isqrt_cov_methods_agree_with_autodiff_of_the_loop(name, x):
  # Every evaluation equals plain autodiff of SPEC §1 (the Newton-Schulz loop) to 1e-5, for
  # a non-symmetric upstream gradient. (Centred eye(5, 12): the trace-normalised Gram
  # matrix has the eigenvalue 1/4 four times and 0 once.)
  x = jnp.asarray(x, jnp.float32)
  w = jnp.asarray(np.random.default_rng(9).normal(size=(x.shape[-1],) * 2), jnp.float32)

  def loss(f, method):
    return jnp.sum(ops.isqrt_cov(f, method=method) * w)

  want = ops.isqrt(ops.covariance(x), method="newton_schulz")
  want_grad = jax.grad(loss)(x, "newton_schulz")
  for method in ("eigh", "gram", "auto"):
    got, grad = ops.isqrt_cov(x, method=method), jax.grad(loss)(x, method)
    assert np.all(np.isfinite(got)) and np.all(np.isfinite(grad))
    assert rel_err(got, np.asarray(want, np.float64)) <= 1e-5
    assert rel_err(grad, np.asarray(want_grad, np.float64)) <= 1e-5


@pytest.mark.parametrize("num_iters", [1, 3, 5])
def test_gram_method_matches_float64_reference(num_iters):
  x = np.maximum(np.random.default_rng(15).normal(size=(3, 5, 12)), 0)
  xc = x - x.mean(1, keepdims=True)
  got = ops.isqrt_cov(jnp.asarray(x, jnp.float32), num_iters, method="gram")
  for g, f in zip(got, xc):
    assert rel_err(g, isqrt_reference(f.T @ f / len(f), num_iters)) <= 1e-5


def _spec_loop(xc, num_iters, xp):
  """SPEC §1 on cov = xc^T xc / M, no centring (the function the Gram evaluation computes
  from its centred input), in numpy or jax.numpy and the input's dtype."""
  cov = xc.T @ xc / len(xc)
  eye = xp.eye(cov.shape[-1], dtype=cov.dtype)
  trace = xp.maximum(xp.trace(cov), newton_schulz.trace_eps(cov.dtype))
  y, z = cov / trace, eye
  for _ in range(num_iters):
    t = 0.5 * (3 * eye - z @ y)
    y, z = y @ t, t @ z
  return y * xp.sqrt(trace)


@pytest.mark.parametrize("num_iters", [1, 5])
def test_gram_vjp_equals_autodiff_and_finite_differences_in_float64(num_iters):
  # The Gram-space evaluation and its hand-written VJP (Daleckii-Krein in Gram space,
  # normalisation and post-compensation) for M < C and M > C, with a non-symmetric
  # cotangent, against plain autodiff of the loop and central differences, in float64.
  rng = np.random.default_rng(16)
  with jax.enable_x64(True):
    for m, c in [(4, 7), (7, 4)]:
      xc = rng.normal(size=(m, c))
      w = rng.normal(size=(c, c))
      xc64 = jnp.asarray(xc, jnp.float64)
      got = newton_schulz._gram_isqrt(xc64, num_iters)
      assert got.dtype == jnp.float64
      assert rel_err(got, _spec_loop(xc64, num_iters, jnp)) <= 1e-13
      grad = jax.grad(lambda f: jnp.sum(newton_schulz._gram_isqrt(f, num_iters) * w))(xc64)
      want = jax.grad(lambda f: jnp.sum(_spec_loop(f, num_iters, jnp) * w))(xc64)
      assert rel_err(grad, want) <= 1e-13
      fd = finite_difference_grad(lambda f: np.sum(_spec_loop(f, num_iters, np) * w), xc)
      assert rel_err(grad, fd) <= 1e-7


def test_gram_scalar_iteration_divided_differences():
  # q_N with p_N(l) = l q_N(l); its divided differences on distinct, repeated and zero
  # eigenvalues agree with p's through (l q)[i, j] = q_j + l_i q[i, j].
  with jax.enable_x64(True):
    lam = jnp.asarray([0.0, 1e-9, 0.2, 0.2, 0.7, 1.0], jnp.float64)
    q, dq = newton_schulz._gram_scalar_iteration(lam, 5)
    p, dp = newton_schulz._scalar_iteration(lam, 5)
    np.testing.assert_allclose(lam * q, p, rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(q[None, :] + lam[:, None] * dq, dp, rtol=1e-13, atol=1e-14)
    l_i, l_j = lam[:, None], lam[None, :]
    distinct = np.asarray(jnp.abs(l_i - l_j) > 1e-3)
    slope = (q[:, None] - q[None, :]) / jnp.where(distinct, l_i - l_j, 1.0)
    np.testing.assert_allclose(np.asarray(dq)[distinct], np.asarray(slope)[distinct], rtol=1e-12)


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
  with pytest.raises(ValueError,
                     match="unknown iSQRT method 'svd'; valid: auto, newton_schulz, eigh, gram$"):
    ops.isqrt(jnp.eye(3), method="svd")


def test_gram_method_needs_features():
  with pytest.raises(ValueError, match="isqrt_cov"):
    ops.isqrt(jnp.eye(3), method="gram")


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="'auto' picks by backend")
def test_auto_picks_gram_space_when_there_are_fewer_samples_than_channels():
  assert newton_schulz.resolve_method("auto", 196, 256) == "gram"
  assert newton_schulz.resolve_method("auto", 784, 256) == "eigh"
  assert newton_schulz.resolve_method("auto", 256, 256) == "eigh"
  assert newton_schulz.resolve_method("auto") == "eigh"  # a covariance input
