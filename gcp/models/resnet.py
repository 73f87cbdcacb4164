"""ResNets in the torchvision v1.5 layout (stride on the bottleneck's 3x3 conv), NHWC.

Parameter names follow torchvision (conv1, bn1, layer{i}_{j}/conv1, .../downsample_conv,
fc) so that checkpoint conversion is a name map.
"""
from typing import ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from gcp.layers import batch_norm, conv, dense_init


class BasicBlock(nn.Module):
  """Two 3x3 convs (ResNet-18/34). `[B, H, W, Cin]` -> `[B, H/s, W/s, filters]`."""
  filters: int
  strides: int = 1
  dtype: jnp.dtype = jnp.float32
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = conv(self.filters, 3, self.strides, name="conv1", dtype=self.dtype)(x)
    y = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(y))
    y = conv(self.filters, 3, name="conv2", dtype=self.dtype)(y)
    y = batch_norm(train, name="bn2", dtype=self.dtype)(y)
    return nn.relu(y + _shortcut(self, x, y.shape[-1], train))


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 x4 (ResNet-50/101/152). Output has 4 * filters channels."""
  filters: int
  strides: int = 1
  dtype: jnp.dtype = jnp.float32
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = conv(self.filters, 1, name="conv1", dtype=self.dtype)(x)
    y = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(y))
    y = conv(self.filters, 3, self.strides, name="conv2", dtype=self.dtype)(y)
    y = nn.relu(batch_norm(train, name="bn2", dtype=self.dtype)(y))
    y = conv(self.filters * 4, 1, name="conv3", dtype=self.dtype)(y)
    y = batch_norm(train, name="bn3", dtype=self.dtype)(y)
    return nn.relu(y + _shortcut(self, x, y.shape[-1], train))


def _shortcut(block, x, channels, train):
  """Identity, or 1x1 strided conv + BN where the shape changes (torchvision `downsample`)."""
  if x.shape[-1] == channels and block.strides == 1:
    return x
  x = conv(channels, 1, block.strides, name="downsample_conv", dtype=block.dtype)(x)
  return batch_norm(train, name="downsample_bn", dtype=block.dtype)(x)


class ResNet(nn.Module):
  """ResNet backbone + pooling head + linear classifier.

  Input `[B, H, W, 3]` images (any float dtype); output `[B, num_classes]` float32 logits.
  The last stage's stride comes from the head (1 for second-order heads, SPEC §2).

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 6, 3) for ResNet-50.
    block: `BasicBlock` or `Bottleneck`.
    head: a module from `gcp.heads.HEADS`.
    num_classes: classifier outputs.
    width: channels of the first stage (64 in every published model).
    small_input: 3x3 stride-1 stem without max-pool, for 28-32 px images.
    dtype: compute dtype of the backbone; the head's second-order part is float32.
  """
  stage_sizes: Sequence[int]
  block: type[nn.Module]
  head: nn.Module
  num_classes: int
  width: int = 64
  small_input: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"ResNet expects NHWC RGB images [B, H, W, 3], got shape {x.shape}")
    x = x.astype(self.dtype)
    if self.small_input:
      x = conv(self.width, 3, name="conv1", dtype=self.dtype)(x)
    else:
      x = conv(self.width, 7, 2, name="conv1", dtype=self.dtype)(x)
    x = nn.relu(batch_norm(train, name="bn1", dtype=self.dtype)(x))
    if not self.small_input:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for i, num_blocks in enumerate(self.stage_sizes):
      stage_stride = 1 if i == 0 else 2
      if i == len(self.stage_sizes) - 1:
        stage_stride = min(stage_stride, type(self.head).last_stage_stride)
      for j in range(num_blocks):
        x = self.block(self.width * 2**i, strides=stage_stride if j == 0 else 1,
                       dtype=self.dtype, name=f"layer{i + 1}_{j}")(x, train)
    x = self.head(x, train=train)
    return nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=dense_init,
                    name="fc")(x)


STAGE_SIZES = {
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), Bottleneck),
    "resnet101": ((3, 4, 23, 3), Bottleneck),
    "resnet152": ((3, 8, 36, 3), Bottleneck),
}
