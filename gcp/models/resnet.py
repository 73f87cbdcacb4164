"""ResNets in the torchvision v1.5 layout (stride on the bottleneck's 3x3 conv), NHWC.

Parameter names follow torchvision (conv1, bn1, layer{i}_{j}/conv1, .../downsample_conv,
fc) so that checkpoint conversion is a name map.
"""
from typing import Callable, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from gcp.layers import batch_norm, conv, dense, max_pool_3x3_s2

VARIANTS = ("pytorch", "mindspore")


class _Block(nn.Module):
  """Residual block conventions: padding mode, BatchNorm eps, init scheme (see ResNet)."""
  filters: int
  strides: int = 1
  dtype: jnp.dtype = jnp.float32
  padding: str = "symmetric"
  bn_eps: float = 1e-5
  downsample_eps: float = 1e-5
  init_scheme: str = "mindspore"

  def conv(self, features, kernel, strides=1, *, name):
    return conv(features, kernel, strides, name=name, dtype=self.dtype, padding=self.padding,
                init=self.init_scheme)

  def bn(self, train, *, name, epsilon=None):
    return batch_norm(train, name=name, dtype=self.dtype,
                      epsilon=self.bn_eps if epsilon is None else epsilon)

  def shortcut(self, x, channels, train):
    """Identity, or 1x1 strided conv + BN where the shape changes (torchvision `downsample`)."""
    if x.shape[-1] == channels and self.strides == 1:
      return x
    x = self.conv(channels, 1, self.strides, name="downsample_conv")(x)
    return self.bn(train, name="downsample_bn", epsilon=self.downsample_eps)(x)


class BasicBlock(_Block):
  """Two 3x3 convs (ResNet-18/34). `[B, H, W, Cin]` -> `[B, H/s, W/s, filters]`."""
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = self.conv(self.filters, 3, self.strides, name="conv1")(x)
    y = nn.relu(self.bn(train, name="bn1")(y))
    y = self.bn(train, name="bn2")(self.conv(self.filters, 3, name="conv2")(y))
    return nn.relu(y + self.shortcut(x, y.shape[-1], train))


class Bottleneck(_Block):
  """1x1 -> 3x3 (strided) -> 1x1 x4 (ResNet-50/101/152). Output has 4 * filters channels."""
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x, train: bool = False):
    y = nn.relu(self.bn(train, name="bn1")(self.conv(self.filters, 1, name="conv1")(x)))
    y = self.conv(self.filters, 3, self.strides, name="conv2")(y)
    y = nn.relu(self.bn(train, name="bn2")(y))
    y = self.bn(train, name="bn3")(self.conv(self.filters * 4, 1, name="conv3")(y))
    return nn.relu(y + self.shortcut(x, y.shape[-1], train))


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
    variant: 'pytorch' (torchvision: symmetric padding, BN eps 1e-5) or 'mindspore' (the
      seed releases, SPEC §6: TF SAME padding for ResNet-50/101/152, BN eps 1e-4 except
      the ResNet-18/34 stem and downsample BNs), for converted MindSpore checkpoints.
    init_scheme: 'mindspore' or 'torchvision' (`gcp.layers.INITS`).
  """
  stage_sizes: Sequence[int]
  block: type[nn.Module]
  head: nn.Module
  num_classes: int
  width: int = 64
  small_input: bool = False
  dtype: jnp.dtype = jnp.float32
  variant: str = "pytorch"
  init_scheme: str = "mindspore"

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"ResNet expects NHWC RGB images [B, H, W, 3], got shape {x.shape}")
    x = stem_and_stages(x, train, stage_sizes=self.stage_sizes, block=self.block,
                        width=self.width, small_input=self.small_input, dtype=self.dtype,
                        variant=self.variant, init_scheme=self.init_scheme,
                        last_stage_stride=type(self.head).last_stage_stride)[-1]
    x = self.head(x, train=train)
    return dense(self.num_classes, name="fc", init=self.init_scheme)(x)


def stem_and_stages(x, train: bool, *, stage_sizes: Sequence[int], block: type[nn.Module],
                    width: int, small_input: bool, dtype: jnp.dtype, variant: str,
                    init_scheme: str, last_stage_stride: int,
                    after_stage: Callable | None = None) -> list:
  """A ResNet's stem and stages on images `[N, H, W, C]`, built inside the calling module's
  compact method with the names `conv1`, `bn1`, `layer{i}_{j}` (so image and video models
  share parameter trees). Returns every stage's output; `after_stage(i, y)` may replace
  stage i's output (0-based) before the next stage (AMS-Net's CPTM blocks)."""
  mindspore = variant == "mindspore"
  bottleneck = block is Bottleneck
  padding = "same" if mindspore and bottleneck else "symmetric"
  block_eps = 1e-4 if mindspore else 1e-5
  edge_eps = 1e-4 if mindspore and bottleneck else 1e-5  # stem and downsample BNs
  x = x.astype(dtype)
  kernel, strides = (3, 1) if small_input else (7, 2)
  x = conv(width, kernel, strides, name="conv1", dtype=dtype, padding=padding,
           init=init_scheme)(x)
  x = nn.relu(batch_norm(train, name="bn1", dtype=dtype, epsilon=edge_eps)(x))
  if not small_input:
    x = max_pool_3x3_s2(x, padding)
  outputs = []
  for i, num_blocks in enumerate(stage_sizes):
    stage_stride = 1 if i == 0 else 2
    if i == len(stage_sizes) - 1:
      stage_stride = min(stage_stride, last_stage_stride)
    for j in range(num_blocks):
      x = block(width * 2**i, strides=stage_stride if j == 0 else 1, dtype=dtype,
                padding=padding, bn_eps=block_eps, downsample_eps=edge_eps,
                init_scheme=init_scheme, name=f"layer{i + 1}_{j}")(x, train)
    if after_stage is not None:
      x = after_stage(i, x)
    outputs.append(x)
  return outputs


STAGE_SIZES = {
    "resnet18": ((2, 2, 2, 2), BasicBlock),
    "resnet34": ((3, 4, 6, 3), BasicBlock),
    "resnet50": ((3, 4, 6, 3), Bottleneck),
    "resnet101": ((3, 4, 23, 3), Bottleneck),
    "resnet152": ((3, 8, 36, 3), Bottleneck),
}
