"""bilinear_pool, sketch_params, tensor_sketch and compact_bilinear_pool against float64
numpy ports of SPEC §1 (BCNN, CBP), finite differences, and the Tensor Sketch identity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp.ops.bilinear import bilinear_pool, compact_bilinear_pool, sketch_params, tensor_sketch
from references.numerics import finite_difference_grad, rel_err


def signed_sqrt_l2_reference(z: np.ndarray) -> np.ndarray:
  y = np.sign(z) * np.sqrt(np.abs(z) + 1e-8)
  return y / np.linalg.norm(y)


def bilinear_reference(x: np.ndarray) -> np.ndarray:
  """SPEC §1 BCNN in float64 (one `[M, C]` feature map)."""
  return signed_sqrt_l2_reference((x.T @ x / len(x)).ravel())


def count_sketch_reference(v, h, s, d):
  out = np.zeros(d)
  np.add.at(out, h, s * v)
  return out


def tensor_sketch_reference(v, hashes, signs, d):
  """psi(v) for one `[C]` vector, by direct circular convolution (no FFT)."""
  a = count_sketch_reference(v, hashes[0], signs[0], d)
  b = count_sketch_reference(v, hashes[1], signs[1], d)
  return np.array([sum(a[i] * b[(j - i) % d] for i in range(d)) for j in range(d)])


def compact_bilinear_reference(x, hashes, signs, d):
  """SPEC §1 CBP in float64 (one `[M, C]` feature map): sum of psi, signed sqrt, L2."""
  return signed_sqrt_l2_reference(sum(tensor_sketch_reference(v, hashes, signs, d) for v in x))


# Jitted once per shape: op-by-op dispatch would compile every primitive separately.
bilinear_pool_jit = jax.jit(bilinear_pool)
tensor_sketch_jit = jax.jit(tensor_sketch, static_argnames="dim")
compact_bilinear_pool_jit = jax.jit(compact_bilinear_pool, static_argnames="dim")


def params(c, d, seed=0):
  hashes, signs = sketch_params(jax.random.key(seed), c, d)
  return hashes, signs, np.asarray(hashes), np.asarray(signs, np.float64)


# --- bilinear_pool ---------------------------------------------------------------------------

def test_bilinear_pool_matches_float64_reference():
  x = np.random.default_rng(0).normal(size=(3, 10, 6))
  got = bilinear_pool_jit(jnp.asarray(x, jnp.float32))
  assert got.shape == (3, 36) and got.dtype == jnp.float32
  for g, xb in zip(got, x):
    assert rel_err(g, bilinear_reference(xb)) <= 1e-5
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, rtol=1e-6)


def test_bilinear_pool_is_not_centred():
  # Constant features have zero covariance but a non-zero second moment.
  got = bilinear_pool_jit(jnp.full((5, 3), 2.0))
  np.testing.assert_allclose(got, np.full(9, 1 / 3), rtol=1e-6)


def test_bilinear_pool_any_batch_shape():
  x = np.random.default_rng(1).normal(size=(2, 3, 7, 4))
  got = bilinear_pool_jit(jnp.asarray(x, jnp.float32))
  assert got.shape == (2, 3, 16)
  assert rel_err(got[1, 2], bilinear_reference(x[1, 2])) <= 1e-5
  assert bilinear_pool_jit(jnp.ones((7, 4))).shape == (16,)


def test_bilinear_pool_of_bfloat16_input_is_computed_in_float32():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 9, 8)), jnp.bfloat16)
  got = bilinear_pool_jit(x)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, bilinear_pool_jit(x.astype(jnp.float32)))


def test_bilinear_pool_gradient_matches_finite_differences_of_reference():
  rng = np.random.default_rng(3)
  # Positive entries away from 0: every Y_cd > 0, so sign() is locally constant.
  x = rng.uniform(0.5, 1.5, size=(4, 3))
  w = rng.normal(size=9)
  loss = lambda v: jnp.dot(bilinear_pool(v), jnp.asarray(w, jnp.float32))
  got = jax.jit(jax.grad(loss))(jnp.asarray(x, jnp.float32))
  want = finite_difference_grad(lambda v: bilinear_reference(v) @ w, x)
  assert rel_err(got, want) <= 1e-4


# --- sketch_params ---------------------------------------------------------------------------

def test_sketch_params_shapes_ranges_and_values():
  hashes, signs = sketch_params(jax.random.key(0), 1000, 7)
  assert hashes.shape == (2, 1000) and hashes.dtype == jnp.int32
  assert signs.shape == (2, 1000) and signs.dtype == jnp.float32
  hashes, signs = np.asarray(hashes), np.asarray(signs)
  assert hashes.min() >= 0 and hashes.max() < 7
  assert set(np.unique(hashes)) == set(range(7))  # every bucket used with C >> D
  assert set(np.unique(signs)) == {-1.0, 1.0}
  # The two hash functions are independent draws, not copies.
  assert not np.array_equal(hashes[0], hashes[1]) and not np.array_equal(signs[0], signs[1])


def test_sketch_params_are_deterministic_per_key():
  a = sketch_params(jax.random.key(4), 64, 8192)
  b = sketch_params(jax.random.key(4), 64, 8192)
  c = sketch_params(jax.random.key(5), 64, 8192)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(u, v)
  assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[1], c[1])
  # Raw uint32 keys (as Flax may hand out) work too.
  assert sketch_params(jax.random.PRNGKey(4), 64, 8192)[0].shape == (2, 64)


def test_sketch_params_rejects_empty_dims():
  with pytest.raises(ValueError, match="out_dim >= 1"):
    sketch_params(jax.random.key(0), 8, 0)


# --- tensor_sketch ---------------------------------------------------------------------------

def test_tensor_sketch_matches_float64_count_sketch_and_circular_convolution():
  c, d = 10, 16
  hashes, signs, h64, s64 = params(c, d, seed=1)
  x = np.random.default_rng(5).normal(size=(2, 3, c))
  got = tensor_sketch_jit(jnp.asarray(x, jnp.float32), hashes, signs, dim=d)
  assert got.shape == (2, 3, d) and got.dtype == jnp.float32
  want = np.array([[tensor_sketch_reference(v, h64, s64, d) for v in xb] for xb in x])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _sketch_inner_products(x, y, dim, num_keys):
  """<psi(x), psi(y)> for one location each, under num_keys independent hash draws."""
  def one(key):
    hashes, signs = sketch_params(key, x.shape[-1], dim)
    px = tensor_sketch(x[None], hashes, signs, dim)[0]
    py = tensor_sketch(y[None], hashes, signs, dim)[0]
    return jnp.dot(px, py, precision=jax.lax.Precision.HIGHEST)
  many = jax.jit(lambda keys: jax.vmap(one)(keys))
  return np.asarray(many(jax.random.split(jax.random.key(7), num_keys)), np.float64)


def _correlated_pair(c=32, seed=6):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=c)
  y = x + 0.5 * rng.normal(size=c)
  return x, y, float(x @ y) ** 2


def test_tensor_sketch_inner_product_error_shrinks_with_dim():
  x, y, true = _correlated_pair()
  xj, yj = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  err = {d: np.mean(np.abs(_sketch_inner_products(xj, yj, d, 32) - true)) / true
         for d in (64, 4096)}
  # The estimator's std scales like 1/sqrt(D): 8x less error for 64x the dimension.
  assert err[4096] < err[64] / 4, err
  assert err[4096] < 0.05, err


def test_tensor_sketch_inner_product_is_unbiased():
  x, y, true = _correlated_pair()
  est = _sketch_inner_products(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                               32, 4000)
  # Each draw is far off at D = 32, but the average over draws converges to <x, y>^2.
  assert np.std(est) / true > 0.1
  assert abs(np.mean(est) - true) / true < 0.02


# --- compact_bilinear_pool -------------------------------------------------------------------

def test_compact_bilinear_pool_matches_float64_reference():
  c, d = 6, 16
  hashes, signs, h64, s64 = params(c, d, seed=2)
  x = np.random.default_rng(8).normal(size=(2, 5, c))
  got = compact_bilinear_pool_jit(jnp.asarray(x, jnp.float32), hashes, signs, dim=d)
  assert got.shape == (2, d) and got.dtype == jnp.float32
  for g, xb in zip(got, x):
    assert rel_err(g, compact_bilinear_reference(xb, h64, s64, d)) <= 1e-5
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, rtol=1e-6)


def test_compact_bilinear_pool_sums_over_locations():
  # C > D fills every bucket, so no psi entry is exactly 0 (the FFT would return roundoff
  # there, which the signed sqrt lifts to +-1e-4).
  c, d = 24, 8
  hashes, signs, h64, s64 = params(c, d, seed=3)
  # Tiny features: psi ~ 1e-8, where the 1e-8 inside the signed sqrt tells a sum from a mean.
  x = 3e-5 * np.random.default_rng(9).normal(size=(2, c))
  psi = tensor_sketch_jit(jnp.asarray(x, jnp.float32), hashes, signs, dim=d)
  np.testing.assert_allclose(jnp.sum(psi, axis=0), psi[0] + psi[1], rtol=1e-6, atol=0)
  psi64 = [tensor_sketch_reference(v, h64, s64, d) for v in x]
  assert np.abs(psi64[0] + psi64[1]).min() > 1e-10
  got = compact_bilinear_pool_jit(jnp.asarray(x, jnp.float32), hashes, signs, dim=d)
  summed = signed_sqrt_l2_reference(psi64[0] + psi64[1])
  averaged = signed_sqrt_l2_reference((psi64[0] + psi64[1]) / 2)
  assert rel_err(got, summed) <= 1e-4
  assert rel_err(got, averaged) > 1e-2


def test_compact_bilinear_pool_of_bfloat16_input_is_computed_in_float32():
  hashes, signs, _, _ = params(8, 32)
  x = jnp.asarray(np.random.default_rng(10).normal(size=(2, 9, 8)), jnp.bfloat16)
  got = compact_bilinear_pool_jit(x, hashes, signs, dim=32)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(
      got, compact_bilinear_pool_jit(x.astype(jnp.float32), hashes, signs, dim=32))


def test_compact_bilinear_pool_gradient_matches_finite_differences_of_reference():
  c, d = 4, 8
  hashes, signs, h64, s64 = params(c, d, seed=4)
  rng = np.random.default_rng(11)
  x = rng.uniform(0.5, 1.5, size=(3, c))
  w = rng.normal(size=d)
  z = sum(tensor_sketch_reference(v, h64, s64, d) for v in x)
  assert np.abs(z).min() > 0.1  # sign() locally constant: finite differences are valid
  loss = lambda v: jnp.dot(compact_bilinear_pool(v, hashes, signs, d), jnp.asarray(w, jnp.float32))
  got = jax.jit(jax.grad(loss))(jnp.asarray(x, jnp.float32))
  want = finite_difference_grad(lambda v: compact_bilinear_reference(v, h64, s64, d) @ w, x)
  assert rel_err(got, want) <= 1e-4


# --- both: extreme inputs and shape errors ---------------------------------------------------

POOLS = {
    "bilinear": lambda x: bilinear_pool(x),
    "compact": lambda x: compact_bilinear_pool(x, *sketch_params(jax.random.key(0), 8, 64), 64),
}


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("scale", [0.0, 1e-4, 1e4])
def test_outputs_and_gradients_are_finite(pool, scale):
  f = POOLS[pool]
  x = jnp.asarray(scale * np.random.default_rng(12).normal(size=(2, 9, 8)), jnp.float32)
  out = jax.jit(f)(x)
  w = jnp.asarray(np.random.default_rng(13).normal(size=out.shape), jnp.float32)
  grad = jax.jit(jax.grad(lambda v: jnp.sum(f(v) * w)))(x)
  assert np.isfinite(out).all() and np.isfinite(grad).all()
  if scale == 0.0:
    np.testing.assert_array_equal(out, 0.0)
  else:
    np.testing.assert_allclose(np.linalg.norm(out, axis=-1), 1.0, rtol=1e-5)


def test_bilinear_pool_rejects_vectors():
  with pytest.raises(ValueError, match=r"\[\.\.\., M, C\]"):
    bilinear_pool(jnp.ones(5))


def test_compact_bilinear_pool_rejects_bad_shapes():
  hashes, signs = sketch_params(jax.random.key(0), 8, 32)
  x = jnp.ones((2, 9, 8))
  with pytest.raises(ValueError, match=r"\[\.\.\., M, C\]"):
    compact_bilinear_pool(jnp.ones(8), hashes, signs, 32)
  with pytest.raises(ValueError, match=r"hashes of shape \[2, C\] = \(2, 8\)"):
    compact_bilinear_pool(x, hashes[:, :4], signs, 32)
  with pytest.raises(ValueError, match=r"signs of shape \[2, C\] = \(2, 8\)"):
    compact_bilinear_pool(x, hashes, signs[0], 32)
  with pytest.raises(ValueError, match=r"hashes of shape \[2, C\] = \(2, 16\)"):
    compact_bilinear_pool(jnp.ones((2, 9, 16)), hashes, signs, 32)
  for dim in (0, -3, 2.5):
    with pytest.raises(ValueError, match="positive integer sketch dim"):
      compact_bilinear_pool(x, hashes, signs, dim)
  with pytest.raises(ValueError, match="tensor_sketch"):
    tensor_sketch(x, hashes, signs, 0)
