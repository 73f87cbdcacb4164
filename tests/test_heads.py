"""Heads against the composition of the reference operators."""
import jax
import jax.numpy as jnp
import numpy as np

from gcp import ops
from gcp.heads import GAPHead, ISQRTHead

X = jnp.asarray(np.maximum(np.random.default_rng(0).normal(size=(2, 5, 6, 12)), 0), jnp.float32)


def test_gap_is_the_spatial_mean():
  out = GAPHead().apply({}, X)
  np.testing.assert_allclose(out, X.mean(axis=(1, 2)), rtol=1e-6)


def test_isqrt_head_without_reduction_is_cov_isqrt_triu():
  head = ISQRTHead(reduction_dim=None, num_iters=5)
  out = head.apply({}, X)
  want = ops.triu_vec(ops.isqrt(ops.covariance(X.reshape(2, 30, 12)), 5))
  assert out.shape == (2, 12 * 13 // 2)
  np.testing.assert_allclose(out, want, rtol=1e-6)


def test_isqrt_head_reduction_is_conv_bn_relu():
  head = ISQRTHead(reduction_dim=4)
  variables = head.init(jax.random.key(0), X)
  params = variables["params"]["reduce"]
  assert params["conv"]["kernel"].shape == (1, 1, 12, 4)
  assert "bias" not in params["conv"]
  assert set(params["bn"]) == {"scale", "bias"}
  out, _ = head.apply(variables, X, train=True, mutable=["batch_stats"])
  assert out.shape == (2, 10)
