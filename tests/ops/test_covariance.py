"""covariance and triu_vec against numpy (float64 references)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp import ops
from references.numerics import rel_err


def test_covariance_matches_numpy_biased_cov():
  x = np.random.default_rng(0).normal(size=(2, 3, 50, 7))
  got = ops.covariance(jnp.asarray(x, jnp.float32))
  want = np.array([[np.cov(s.T, bias=True) for s in b] for b in x])
  assert got.shape == (2, 3, 7, 7) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_covariance_of_bfloat16_input_is_computed_in_float32():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 49, 16)), jnp.bfloat16)
  got = ops.covariance(x)
  assert got.dtype == jnp.float32
  # Same result as upcasting first: no bf16 rounding of the products or the sum.
  np.testing.assert_array_equal(got, ops.covariance(x.astype(jnp.float32)))


def test_covariance_in_float64_matches_numpy_and_the_exact_gradient():
  # float64 in, float64 computed: equal to numpy, and the one-product VJP to the exact
  # gradient Xc (G + G^T) / M, to float64 rounding.
  rng = np.random.default_rng(6)
  x, g = rng.normal(size=(2, 30, 6)), rng.normal(size=(2, 6, 6))
  with jax.enable_x64(True):
    got, vjp = jax.vjp(ops.covariance, jnp.asarray(x))
    (grad,) = vjp(jnp.asarray(g))
    assert got.dtype == grad.dtype == jnp.float64
  assert rel_err(got, [np.cov(s.T, bias=True) for s in x]) <= 1e-14
  xc = x - x.mean(1, keepdims=True)
  assert rel_err(grad, xc @ (g + g.transpose(0, 2, 1)) / 30) <= 1e-14


def test_covariance_of_constant_features_is_zero():
  np.testing.assert_allclose(ops.covariance(jnp.full((2, 10, 4), 3.0)), 0.0, atol=1e-6)


def test_covariance_rejects_vectors():
  with pytest.raises(ValueError, match=r"\[\.\.\., M, C\]"):
    ops.covariance(jnp.ones(5))


def test_triu_vec_order_is_numpy_triu_indices():
  m = np.random.default_rng(2).normal(size=(3, 5, 5)).astype(np.float32)
  rows, cols = np.triu_indices(5)
  np.testing.assert_array_equal(ops.triu_vec(jnp.asarray(m)), m[:, rows, cols])


def test_triu_vec_gradient_places_the_cotangent_in_the_upper_triangle():
  # Exact reference: the adjoint of the selection scatters g into zeros.
  g = np.random.default_rng(0).normal(size=(2, 3, 15)).astype(np.float32)
  rows, cols = np.triu_indices(5)
  want = np.zeros((2, 3, 5, 5), np.float32)
  want[..., rows, cols] = g
  _, vjp = jax.vjp(ops.triu_vec, jnp.zeros((2, 3, 5, 5), jnp.bfloat16))
  (got,) = vjp(jnp.asarray(g, jnp.bfloat16))
  assert got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(got, np.float32),
                                want.astype(jnp.bfloat16).astype(np.float32))
  _, vjp = jax.vjp(ops.triu_vec, jnp.zeros((2, 3, 5, 5)))
  np.testing.assert_array_equal(vjp(jnp.asarray(g))[0], want)


@pytest.mark.parametrize("d, features", [(128, 8_256), (256, 32_896)])
def test_triu_vec_sizes(d, features):
  assert ops.triu_vec(jnp.zeros((2, d, d))).shape == (2, features)


def test_triu_vec_rejects_non_square():
  with pytest.raises(ValueError, match="square"):
    ops.triu_vec(jnp.zeros((3, 4)))


def test_covariance_gradient_equals_autodiff_of_the_formula():
  # The custom VJP (one product, no centring term) against plain autodiff of SPEC §1.
  import jax

  def plain(x):
    xc = x - x.mean(-2, keepdims=True)
    return jnp.einsum("...mc,...md->...cd", xc, xc) / x.shape[-2]

  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(2, 30, 6)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(2, 6, 6)), jnp.float32)  # not symmetric
  got = jax.vjp(ops.covariance, x)[1](g)[0]
  want = jax.vjp(plain, x)[1](g)[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  bf16 = jax.vjp(ops.covariance, x.astype(jnp.bfloat16))[1](g)[0]
  assert bf16.dtype == jnp.bfloat16
