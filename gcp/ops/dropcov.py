"""DropCov's adaptive channel dropout before covariance pooling (NeurIPS 2022), CNN version.

Training only (SPEC §1): an ECA-with-softmax channel reweighting x * (1 + y), a drop rate
p set by how aligned y is with the covariance's row sums, and per-(sample, channel)
dropout. At evaluation the head is plain covariance -> triu ("free at inference").
"""
import jax
import jax.numpy as jnp

from gcp.ops.covariance import covariance
from gcp.ops.dtypes import upcast


def eca_softmax(s: jax.Array, kernel: jax.Array) -> jax.Array:
  """ECA attention with a softmax: softmax over channels of conv1d(s, kernel, pad 1).

  Args:
    s: `[B, d]` channel descriptors (the spatial mean of the feature map).
    kernel: `[3]` conv weights, cross-correlation as PyTorch's Conv1d (no bias):
      out_c = k_0 s_{c-1} + k_1 s_c + k_2 s_{c+1}, zero beyond the ends.

  Returns:
    `[B, d]` float32 (float64 for float64 `s`) weights summing to 1 over channels.
  """
  if kernel.shape != (3,):
    raise ValueError(f"eca_softmax expects a kernel of shape (3,), got {kernel.shape}")
  s = upcast(s)
  padded = jnp.pad(s, [(0, 0)] * (s.ndim - 1) + [(1, 1)])
  k = kernel.astype(s.dtype)
  logits = k[0] * padded[..., :-2] + k[1] * padded[..., 1:-1] + k[2] * padded[..., 2:]
  return jax.nn.softmax(logits, axis=-1)


def adaptive_drop_rate(y: jax.Array, x: jax.Array) -> jax.Array:
  """p = clip(1 - (10 / log2 d) * mean_b cos(y_b, rowsum(Cov(x_b))), 0, 1), no gradient.

  Args:
    y: `[B, d]` ECA weights.
    x: `[B, M, d]` the reweighted features whose covariance the rate looks at.

  Returns:
    A float32 (float64 for float64 x) scalar, one drop rate for the whole batch.
  """
  d = y.shape[-1]
  if x.ndim != 3 or x.shape[-1] != d or x.shape[0] != y.shape[0]:
    raise ValueError(f"adaptive_drop_rate expects y [B, d] and x [B, M, d], got "
                     f"{y.shape} and {x.shape}")
  xc = jax.lax.stop_gradient(upcast(x))
  y = jax.lax.stop_gradient(y.astype(xc.dtype))
  xc = xc - jnp.mean(xc, axis=1, keepdims=True)
  # rowsum(Cov) = Xc^T (Xc 1) / M: O(M d) instead of forming the d x d covariance.
  rows = jnp.einsum("bmc,bm->bc", xc, jnp.sum(xc, axis=-1)) / x.shape[1]
  # The floor only matters for all-zero features (the cosine with a zero vector := 0).
  cos = jnp.sum(y * rows, -1) / jnp.maximum(
      jnp.linalg.norm(y, axis=-1) * jnp.linalg.norm(rows, axis=-1), 1e-30)
  return jnp.clip(1.0 - (10.0 / jnp.log2(d)) * jnp.mean(cos), 0.0, 1.0)


def channel_dropout(x: jax.Array, rate: jax.Array, key: jax.Array) -> jax.Array:
  """Drops whole channels independently per sample; survivors scaled by 1 / (1 - rate).

  Args:
    x: `[B, M, d]` features.
    rate: scalar drop probability in [0, 1]; at 1 every channel is dropped (output 0).
    key: a `jax.random` key.

  Returns:
    `[B, M, d]`, the dtype of x.
  """
  keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0], 1, x.shape[-1]))
  scale = jnp.where(rate < 1.0, 1.0 / jnp.maximum(1.0 - rate, 1e-12), 0.0)
  return jnp.where(keep, x * scale.astype(x.dtype), jnp.zeros((), x.dtype))


def dropcov_train(x: jax.Array, kernel: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The training-time DropCov block: ECA reweighting, adaptive rate, channel dropout.

  Args:
    x: `[B, M, d]` features (after the reduction block).
    kernel: `[3]` ECA conv weights.
    key: a `jax.random` key for the dropout mask.

  Returns:
    (`[B, d, d]` covariance of the dropped-out features, the scalar drop rate), float32
    (float64 for float64 x).
  """
  x = upcast(x)
  y = eca_softmax(jnp.mean(x, axis=-2), kernel)
  x = x * (1.0 + y[:, None, :])
  rate = adaptive_drop_rate(y, x)
  return covariance(channel_dropout(x, rate, key)), rate
