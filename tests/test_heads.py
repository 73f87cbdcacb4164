"""Heads against the composition of the reference operators, and edge cases for each."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp import ops
from gcp.heads import HEADS, CBPHead, DropCovHead, GAPHead, ISQRTHead

X = jnp.asarray(np.maximum(np.random.default_rng(0).normal(size=(2, 5, 6, 12)), 0), jnp.float32)
FEATS = X.reshape(2, 30, 12)


def run(head, x=X, train=False, rng=0):
  variables = head.init(jax.random.key(rng), x)
  if not train:
    return head.apply(variables, x), variables
  out, _ = head.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"],
                      rngs={"dropout": jax.random.key(1)})
  return out, variables


def test_gap_is_the_spatial_mean():
  np.testing.assert_allclose(run(GAPHead())[0], X.mean(axis=(1, 2)), rtol=1e-6)


@pytest.mark.parametrize("name, want", [
    ("cov", lambda f: ops.triu_vec(ops.covariance(f))),
    ("isqrt", lambda f: ops.triu_vec(ops.isqrt_cov(f, 5))),
    ("eig", lambda f: ops.triu_vec(ops.eig_power(ops.covariance(f), 0.5))),
    ("bcnn", ops.bilinear_pool),
    ("dropcov", lambda f: ops.triu_vec(ops.covariance(f))),  # evaluation: no ECA, no dropout
])
def test_head_without_reduction_is_its_operators(name, want):
  out, _ = run(HEADS[name]())
  np.testing.assert_allclose(out, want(FEATS), rtol=1e-5, atol=1e-7)


def test_cbp_sketch_is_a_stored_constant_drawn_once():
  head = CBPHead(sketch_dim=64)
  out, variables = run(head)
  sketch = variables["constants"]["sketch"]
  assert "sketch" not in variables.get("params", {})
  np.testing.assert_allclose(out, ops.compact_bilinear_pool(
      FEATS, sketch["hashes"], sketch["signs"], 64), rtol=1e-6)
  again = run(head)[1]["constants"]["sketch"]
  other = run(head, rng=1)[1]["constants"]["sketch"]
  np.testing.assert_array_equal(again["hashes"], sketch["hashes"])
  assert not np.array_equal(other["hashes"], sketch["hashes"])
  # Applying with the stored variables never redraws: the output is a function of them.
  np.testing.assert_array_equal(head.apply(variables, X), out)


def test_dropcov_trains_with_adaptive_dropout_and_evaluates_plainly():
  head = DropCovHead()
  variables = head.init(jax.random.key(0), X)
  assert variables["params"]["eca"].shape == (3,)
  apply = lambda key: head.apply(variables, X, train=True, mutable=["intermediates"],
                                 rngs={"dropout": key})
  (a, sown), (b, _), (c, _) = apply(jax.random.key(1)), apply(jax.random.key(1)), apply(
      jax.random.key(2))
  rate = float(sown["intermediates"]["drop_rate"][0])
  assert 0.0 <= rate <= 1.0
  np.testing.assert_array_equal(a, b)
  evaluation = head.apply(variables, X)
  np.testing.assert_array_equal(evaluation, head.apply(variables, X))
  if rate > 0:
    assert not np.array_equal(a, c) and not np.allclose(a, evaluation)


def test_reduction_block_is_conv_bn_relu():
  head = ISQRTHead(reduction_dim=4)
  variables = head.init(jax.random.key(0), X)
  params = variables["params"]["reduce"]
  assert params["conv"]["kernel"].shape == (1, 1, 12, 4)
  assert "bias" not in params["conv"]
  assert set(params["bn"]) == {"scale", "bias"}
  out, _ = head.apply(variables, X, train=True, mutable=["batch_stats"])
  assert out.shape == (2, 10)


EDGE_CASES = {
    "zeros": jnp.zeros((2, 3, 3, 6)),
    "one position": jnp.asarray(np.random.default_rng(1).normal(size=(2, 1, 1, 6)), jnp.float32),
    "M < C": jnp.asarray(np.random.default_rng(2).normal(size=(2, 2, 2, 6)), jnp.float32),
    "bf16": jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 3, 6)), jnp.bfloat16),
    "scale 1e-4": 1e-4 * jnp.asarray(np.random.default_rng(4).normal(size=(2, 3, 3, 6)),
                                     jnp.float32),
    "scale 1e4": 1e4 * jnp.asarray(np.random.default_rng(5).normal(size=(2, 3, 3, 6)),
                                   jnp.float32),
}


@pytest.mark.parametrize("name", sorted(HEADS))
@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_outputs_and_gradients_are_finite(name, case):
  head = HEADS[name](sketch_dim=32) if name == "cbp" else HEADS[name]()
  x = EDGE_CASES[case]
  variables = head.init(jax.random.key(0), x)

  def loss(f):
    out, _ = head.apply(variables, f, train=True, mutable=["intermediates"],
                        rngs={"dropout": jax.random.key(1)})
    return jnp.sum(out * jnp.linspace(-1, 1, out.shape[-1]))

  value, grad = jax.value_and_grad(loss)(x)
  assert np.isfinite(float(value))
  assert np.all(np.isfinite(np.asarray(grad, np.float32)))
  assert np.all(np.isfinite(head.apply(variables, x)))
