"""The computation dtype of the operators and heads: at least float32, float64 honoured."""
import jax
import jax.numpy as jnp


def compute_dtype(dtype, default=jnp.float32) -> jnp.dtype:
  """The dtype to compute in for an input of `dtype`.

  float64 (only possible with `jax_enable_x64`) computes in float64, everything else in
  `default`. The operators keep the default, so bfloat16 and float16 compute in float32
  (their sums of products would lose too much), float32 stays and float64 is honoured,
  which float64 gradient checks need. A head passes its own compute dtype as `default`,
  so that only a float64 input changes it.
  """
  if jax.dtypes.canonicalize_dtype(dtype) == jnp.float64:
    return jnp.dtype(jnp.float64)
  return jnp.dtype(default)


def upcast(x: jax.Array) -> jax.Array:
  """`x` cast to its computation dtype (`compute_dtype(x.dtype)`)."""
  return x.astype(compute_dtype(x.dtype))
