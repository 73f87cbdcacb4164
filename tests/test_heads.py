"""Heads against the composition of the reference operators, edge cases for each, and the
dtype rule (float64 honoured, bfloat16 computed in float32)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp import ops
from gcp.heads import HEADS, TOKEN_HEADS, CBPHead, DropCovHead, GAPHead, ISQRTHead
from references.numerics import finite_difference_grad, float64_narrowings, rel_err

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


# --- dtypes: every head, with its sublayers (reduction block, token projections) ----------

TINY_KWARGS = {("cnn", "cbp"): dict(sketch_dim=16),
               ("token", "mp"): dict(proj_dim=28, num_groups=4),
               ("token", "mp_plus"): dict(proj_dim=28, num_groups=4),
               ("token", "dropcov"): dict(cov_heads=2, cov_head_dim=3)}


def tiny_head(kind, name):
  """(module, input shape) for a `HEADS` ('cnn') or `TOKEN_HEADS` ('token') head, small."""
  kwargs = TINY_KWARGS.get((kind, name), {})
  if kind == "cnn":
    reduction = {} if name == "gap" else dict(reduction_dim=4)
    return HEADS[name](**reduction, **kwargs), (2, 3, 3, 6)
  return TOKEN_HEADS[name](num_classes=3, **kwargs), (2, 1 + 9, 16)


ALL_HEADS = [("cnn", n) for n in sorted(HEADS)] + [("token", n) for n in sorted(TOKEN_HEADS)]


def train_loss(head, variables, x):
  out, _ = head.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"],
                      rngs={"dropout": jax.random.key(1)})
  return jnp.sum(out * jnp.linspace(-1, 1, out.shape[-1], dtype=out.dtype))


@pytest.mark.parametrize("kind, name", ALL_HEADS)
def test_float64_input_is_computed_in_float64(kind, name):
  # Traced, not compiled: float64 logits / features at evaluation, float32 parameters, and
  # no float64 value rounded to float32 anywhere in the training forward and its gradient.
  head, shape = tiny_head(kind, name)
  with jax.enable_x64(True):
    x = jax.ShapeDtypeStruct(shape, jnp.float64)
    variables = jax.eval_shape(head.init, jax.random.key(0), x)
    assert {str(a.dtype) for a in jax.tree.leaves(variables.get("params", {}))} <= {"float32"}
    assert jax.eval_shape(head.apply, variables, x).dtype == jnp.float64
    grad = jax.value_and_grad(lambda f, v: train_loss(head, v, f))
    assert jax.eval_shape(grad, x, variables)[1].dtype == jnp.float64
    assert float64_narrowings(grad, x, variables) == []


@pytest.mark.parametrize("kind, name", ALL_HEADS)
def test_bfloat16_input_is_computed_in_float32(kind, name):
  head, shape = tiny_head(kind, name)
  x = jax.ShapeDtypeStruct(shape, jnp.bfloat16)
  variables = jax.eval_shape(head.init, jax.random.key(0), x)
  assert jax.eval_shape(head.apply, variables, x).dtype == jnp.float32


@functools.cache
def reduced_isqrt_variables(shape):
  """float32 variables of `ISQRTHead(reduction_dim=4)`, the same for every method."""
  return ISQRTHead(reduction_dim=4).init(jax.random.key(0), jnp.zeros(shape, jnp.float32))


@pytest.mark.parametrize("method", ["newton_schulz", "eigh", "gram"])
def test_isqrt_head_gradient_matches_finite_differences_in_float64(method):
  # Through the public API (init / apply), reduction block included: the float64 gradient
  # w.r.t. the input equals central differences of the float64 head.
  head = ISQRTHead(reduction_dim=4, isqrt_method=method)
  x = np.random.default_rng(6).normal(size=(1, 3, 3, 6))
  w = np.random.default_rng(7).normal(size=10)
  variables = reduced_isqrt_variables(x.shape)
  with jax.enable_x64(True):
    loss = jax.jit(jax.value_and_grad(lambda f: jnp.sum(head.apply(variables, f) * w)))
    grad = loss(jnp.asarray(x))[1]
    fd = finite_difference_grad(lambda f: float(loss(f)[0]), x)
  assert grad.dtype == jnp.float64
  assert rel_err(grad, fd) <= 1e-7
