"""The operators' dtype rule, "at least float32": bfloat16 / float16 / float32 inputs compute
in float32, float64 inputs (with `jax.enable_x64`) in float64 throughout, forward and
backward. Shapes and jaxprs only: nothing here compiles."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp import ops
from gcp.ops import dropcov
from references.numerics import float64_narrowings

FEATS = np.maximum(np.random.default_rng(0).normal(size=(2, 6, 4)), 0)  # [B, M, C], M > C
COV = np.einsum("bmc,bmd->bcd", FEATS, FEATS) / 6 + np.eye(4)
HASHES = np.array([[0, 3, 1, 3], [2, 2, 0, 1]], np.int32)
SIGNS = np.array([[1, -1, 1, 1], [-1, 1, 1, -1]], np.float32)
KERNEL = np.array([0.2, -0.5, 0.3], np.float32)

# name -> (operator of one array, its input)
OPERATORS = {
    "covariance": (ops.covariance, FEATS),
    "isqrt newton_schulz": (lambda c: ops.isqrt(c, method="newton_schulz"), COV),
    "isqrt eigh": (lambda c: ops.isqrt(c, method="eigh"), COV),
    **{f"isqrt_cov {m}": (lambda x, m=m: ops.isqrt_cov(x, method=m), FEATS)
       for m in ("newton_schulz", "eigh", "gram")},
    "eig_power": (ops.eig_power, COV),
    "bilinear_pool": (ops.bilinear_pool, FEATS),
    "tensor_sketch": (lambda x: ops.tensor_sketch(x, HASHES, SIGNS, 8), FEATS),
    "compact_bilinear_pool": (lambda x: ops.compact_bilinear_pool(x, HASHES, SIGNS, 8), FEATS),
    "eca_softmax": (lambda x: dropcov.eca_softmax(jnp.mean(x, axis=1), KERNEL), FEATS),
    "dropcov_train": (lambda x: dropcov.dropcov_train(x, KERNEL, jax.random.key(0))[0], FEATS),
}


def test_compute_dtype():
  for dtype in (jnp.bfloat16, jnp.float16, jnp.float32, jnp.int32):
    assert ops.compute_dtype(dtype) == jnp.float32
  assert ops.compute_dtype(jnp.float32, jnp.bfloat16) == jnp.bfloat16  # a head's own dtype
  # Without x64 float64 does not exist in JAX: numpy float64 input computes in float32.
  assert ops.compute_dtype(np.float64) == jnp.float32
  assert ops.upcast(np.zeros(2)).dtype == np.float32
  with jax.enable_x64(True):
    assert ops.compute_dtype(jnp.float64) == ops.compute_dtype(jnp.float64, jnp.bfloat16) == (
        jnp.float64)
    assert ops.compute_dtype(jnp.bfloat16) == jnp.float32
    assert ops.upcast(jnp.ones(2, jnp.float64)).dtype == jnp.float64
  assert not jax.config.jax_enable_x64  # the context manager restored it


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_low_precision_inputs_compute_in_float32(name):
  op, value = OPERATORS[name]
  for dtype in (jnp.bfloat16, jnp.float16, jnp.float32):
    assert jax.eval_shape(op, jnp.asarray(value, dtype)).dtype == jnp.float32


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_float64_inputs_compute_in_float64_forward_and_backward(name):
  op, value = OPERATORS[name]
  w = np.random.default_rng(1).normal(size=jax.eval_shape(op, value).shape)
  with jax.enable_x64(True):
    x = jnp.asarray(value, jnp.float64)
    loss = lambda v: jnp.sum(op(v) * w)
    assert jax.eval_shape(op, x).dtype == jnp.float64
    assert jax.eval_shape(jax.grad(loss), x).dtype == jnp.float64
    assert float64_narrowings(jax.value_and_grad(loss), x) == []
