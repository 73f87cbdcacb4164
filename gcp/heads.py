"""Pooling heads: a feature map `[B, H, W, C]` in, a representation vector `[B, D]` out.

A head is a Flax module registered in `HEADS` under the name configs use. Its class
attribute `last_stage_stride` tells a ResNet whether to keep the last stage's downsampling
(GAP) or drop it (second-order heads want 14x14 at 224 px, SPEC §2).
"""
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from gcp import ops
from gcp.layers import ReductionBlock


class GAPHead(nn.Module):
  """Global average pooling (the first-order baseline): `[B, H, W, C]` -> `[B, C]`."""
  last_stage_stride: ClassVar[int] = 2

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class ISQRTHead(nn.Module):
  """iSQRT-COV / Fast-MPN: [reduction] -> covariance -> iSQRT(num_iters) -> triu.

  `[B, H, W, C]` -> `[B, d (d + 1) / 2]` with d = reduction_dim (C when None); float32.
  """
  reduction_dim: int | None = 128
  num_iters: int = 5
  dtype: jnp.dtype = jnp.float32
  last_stage_stride: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.reduction_dim:
      x = ReductionBlock(self.reduction_dim, dtype=self.dtype, name="reduce")(x, train)
    b, h, w, c = x.shape
    cov = ops.covariance(x.reshape(b, h * w, c))
    return ops.triu_vec(ops.isqrt(cov, self.num_iters))


HEADS: dict[str, type[nn.Module]] = {
    "gap": GAPHead,
    "isqrt": ISQRTHead,
}
