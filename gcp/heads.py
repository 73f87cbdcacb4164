"""Pooling heads: a feature map `[B, H, W, C]` in, a representation vector `[B, D]` out.

Each head is a Flax module registered in `HEADS` under the name configs use; a new head is
one module plus one registry line. Second-order heads share an optional reduction block
(1x1 conv, BN, ReLU to `reduction_dim`; None or 0: off) and compute in float32. The class
attribute `last_stage_stride` tells a ResNet whether to keep the last stage's downsampling
(GAP) or drop it (second-order heads want 14x14 at 224 px, SPEC §2).
"""
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from gcp import ops
from gcp.layers import ReductionBlock
from gcp.ops import dropcov


class GAPHead(nn.Module):
  """Global average pooling, the first-order baseline: `[B, H, W, C]` -> `[B, C]`.

  No reduction block: the published baselines pool the backbone's features directly.
  """
  last_stage_stride: ClassVar[int] = 2

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class _SecondOrderHead(nn.Module):
  """Shared part: the optional reduction block, then features as `[B, M, d]`.

  The reduction block follows its backbone's conventions: BatchNorm eps (`bn_eps`), ReLU6
  for MobileNetV2 (`reduction_relu6`), and the initialisation scheme (`init_scheme`).
  """
  reduction_dim: int | None = None
  dtype: jnp.dtype = jnp.float32
  bn_eps: float = 1e-5
  reduction_relu6: bool = False
  init_scheme: str = "mindspore"
  last_stage_stride: ClassVar[int] = 1

  def features(self, x, train: bool):
    """`[B, H, W, C]` -> `[B, H*W, d]`, d = reduction_dim (C when off). Call from a
    compact method."""
    if self.reduction_dim:
      x = ReductionBlock(self.reduction_dim, dtype=self.dtype, bn_eps=self.bn_eps,
                         relu6=self.reduction_relu6, init_scheme=self.init_scheme,
                         name="reduce")(x, train)
    b, h, w, c = x.shape
    return x.reshape(b, h * w, c)


class CovHead(_SecondOrderHead):
  """Plain covariance pooling: `[B, H, W, C]` -> `[B, d (d + 1) / 2]`."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return ops.triu_vec(ops.covariance(self.features(x, train)))


class ISQRTHead(_SecondOrderHead):
  """iSQRT-COV / Fast-MPN: covariance -> iSQRT(num_iters) -> triu, `[B, d (d + 1) / 2]`.

  `isqrt_method` picks how the same function is evaluated (`gcp.ops.isqrt_cov`): 'auto'
  (eigh on CPU, Newton-Schulz matmuls on accelerators), 'newton_schulz' or 'eigh'.
  """
  num_iters: int = 5
  isqrt_method: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    return ops.triu_vec(ops.isqrt_cov(self.features(x, train), self.num_iters,
                                      method=self.isqrt_method))


class EigHead(_SecondOrderHead):
  """MPN-COV: covariance -> eigendecomposition power `alpha` -> triu, `[B, d (d + 1) / 2]`."""
  alpha: float = 0.5

  @nn.compact
  def __call__(self, x, train: bool = False):
    return ops.triu_vec(ops.eig_power(ops.covariance(self.features(x, train)), self.alpha))


class BCNNHead(_SecondOrderHead):
  """Bilinear pooling (no centring, signed sqrt, L2): `[B, H, W, C]` -> `[B, d * d]`."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return ops.bilinear_pool(self.features(x, train))


class CBPHead(_SecondOrderHead):
  """Compact bilinear pooling (Tensor Sketch): `[B, H, W, C]` -> `[B, sketch_dim]`.

  The hashes and signs are drawn once at `init` from the `params` rng and stored in the
  non-trainable `constants` collection, so a saved model reproduces its features.
  """
  sketch_dim: int = 8192

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.features(x, train)
    sketch = self.variable("constants", "sketch", lambda: dict(zip(
        ("hashes", "signs"),
        ops.sketch_params(self.make_rng("params"), x.shape[-1], self.sketch_dim))))
    return ops.compact_bilinear_pool(x, sketch.value["hashes"], sketch.value["signs"],
                                     self.sketch_dim)


def _eca_init(key, shape, dtype=jnp.float32):
  """PyTorch's Conv1d default, as the release: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in 3."""
  bound = 1 / 3 ** 0.5
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class DropCovHead(_SecondOrderHead):
  """DropCov: in training ECA + adaptive channel dropout before covariance; at evaluation
  covariance -> triu only. `[B, H, W, C]` -> `[B, d (d + 1) / 2]`.

  Training draws from the `dropout` rng and records the drop rate in the `intermediates`
  collection as `drop_rate`. The ECA conv adds 3 parameters.
  """

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.features(x, train)
    kernel = self.param("eca", _eca_init, (3,))
    if not train:
      return ops.triu_vec(ops.covariance(x))
    cov, rate = dropcov.dropcov_train(x, kernel, self.make_rng("dropout"))
    self.sow("intermediates", "drop_rate", rate)
    return ops.triu_vec(cov)


HEADS: dict[str, type[nn.Module]] = {
    "gap": GAPHead,
    "cov": CovHead,
    "isqrt": ISQRTHead,
    "eig": EigHead,
    "bcnn": BCNNHead,
    "cbp": CBPHead,
    "dropcov": DropCovHead,
}
