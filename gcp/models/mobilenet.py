"""MobileNetV2 (torchvision layout) as GCP_Optimization uses it: no stride removal, the
1280 -> d reduction with ReLU6, dropout 0.2 before the classifier."""
import functools

import flax.linen as nn
import jax.numpy as jnp

from gcp import layers

# (expansion t, channels c, repeats n, first stride s), Sandler et al. 2018, Table 2.
INVERTED_RESIDUALS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def make_divisible(value: float, divisor: int = 8) -> int:
  """torchvision's channel rounding: nearest multiple of 8, never 10% below `value`."""
  rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
  return rounded + divisor if rounded < 0.9 * value else rounded


class InvertedResidual(nn.Module):
  """[1x1 expand - BN - ReLU6] - 3x3 depthwise - BN - ReLU6 - 1x1 project - BN (+ x)."""
  features: int
  strides: int
  expansion: int
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torchvision"

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv_bn = functools.partial(layers.conv_bn, train=train, dtype=self.dtype,
                                init=self.init_scheme)

    hidden = round(x.shape[-1] * self.expansion)
    y = x
    if self.expansion != 1:
      y = nn.relu6(conv_bn(y, hidden, 1, name="expand"))
    y = nn.relu6(conv_bn(y, hidden, 3, self.strides, groups=hidden, name="depthwise"))
    y = conv_bn(y, self.features, 1, name="project")
    return x + y if self.strides == 1 and x.shape[-1] == self.features else y


class MobileNetV2(nn.Module):
  """`[B, H, W, 3]` images -> `[B, num_classes]` float32 logits.

  Attributes:
    head: a module from `gcp.heads.HEADS` (the backbone keeps all its strides).
    num_classes: classifier outputs.
    width_mult: channel multiplier (1.0 in the published model).
    dropout: before the classifier (0.2).
    dtype: backbone compute dtype. init_scheme: `gcp.layers.INITS` key.
  """
  head: nn.Module
  num_classes: int
  width_mult: float = 1.0
  dropout: float = 0.2
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torchvision"

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"MobileNetV2 expects NHWC RGB images [B, H, W, 3], got {x.shape}")
    conv_bn = functools.partial(layers.conv_bn, train=train, dtype=self.dtype,
                                init=self.init_scheme)
    x = nn.relu6(conv_bn(x.astype(self.dtype), make_divisible(32 * self.width_mult), 3, 2,
                         name="features_0"))
    index = 1
    for t, c, n, s in INVERTED_RESIDUALS:
      for j in range(n):
        x = InvertedResidual(make_divisible(c * self.width_mult), s if j == 0 else 1, t,
                             dtype=self.dtype, init_scheme=self.init_scheme,
                             name=f"features_{index}")(x, train)
        index += 1
    last = make_divisible(1280 * max(1.0, self.width_mult))
    x = nn.relu6(conv_bn(x, last, 1, name=f"features_{index}"))
    x = self.head(x, train=train)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return layers.dense(self.num_classes, name="classifier", init=self.init_scheme)(x)
