"""Inception-v3 (torchvision's Inception3) as fast-MPN-COV builds it: its Basemodel keeps the
features Conv2d_1a_3x3 ... Mixed_7c and the classifier `fc`, and drops the rest of the
torchvision model: the auxiliary classifier (AuxLogits), the dropout before `fc` and
`transform_input`. Every head pools Mixed_7c's 2048 channels at full resolution (8x8 at
299 px, 5x5 at the release's 224 px ImageNet crops).

Module names are torchvision's module paths with "/" for "." (`Conv2d_1a_3x3/conv`,
`Mixed_6b/branch7x7dbl_3/bn`, `fc`), so the PyTorch names are the paths
(`gcp.convert.torch_layout`). 1000 classes: 23,834,568 parameters with GAP (torchvision's
inception_v3 without its 3,326,696-parameter AuxLogits), 55,207,368 with iSQRT-COV after a
2048 -> 256 reduction (the release's MPNCOV from scratch).

Two departures of the release from torchvision's model, kept here: with --pretrained it
loads the Google weights, for which torchvision switches transform_input on (inputs
re-normalised to [-1, 1]), and runs them on ImageNet-normalised inputs without it. Its
Inception3 draws every conv from a normal truncated at 2 sigma (sigma 0.1), the
'inception' scheme of `gcp.layers.INITS` (the classifier Newmodel adds is a fresh PyTorch
Linear).
"""
import flax.linen as nn
import jax.numpy as jnp

from gcp import layers

MIN_SIZE = 75  # the unpadded stem and grid reductions leave 1x1 at 75 px, nothing below
BN_EPS = 1e-3  # BasicConv2d's BatchNorm (TensorFlow's Inception); the reduction keeps 1e-5


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
  """conv (no bias) - BN (eps 0.001) - ReLU, as modules `conv` and `bn`:
  `[B, H, W, C]` -> `[B, H', W', features]`.

  `kernel` and `padding` are an int or (height, width) pair; `padding` is PyTorch's, the
  same on both sides of an axis (0: VALID).
  """
  features: int
  kernel: int | tuple[int, int]
  strides: int = 1
  padding: int | tuple[int, int] = 0
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "inception"

  @nn.compact
  def __call__(self, x, train: bool = False):
    ph, pw = _pair(self.padding)
    x = nn.Conv(self.features, _pair(self.kernel), strides=(self.strides, self.strides),
                padding=((ph, ph), (pw, pw)), use_bias=False, dtype=self.dtype,
                kernel_init=layers.INITS[self.init_scheme][0], name="conv")(x)
    x = layers.batch_norm(train, name="bn", dtype=self.dtype, epsilon=BN_EPS)(x)
    return nn.relu(x)


def _avg_pool_3x3(x):
  # 3x3 / 1, pad 1, zeros counted (PyTorch's count_include_pad=True): always / 9.
  return layers.pool(x, 3, 1, "avg", padding=((1, 1), (1, 1)))


class _Mixed(nn.Module, kw_only=True):
  """A Mixed block: branches of `BasicConv2d`s concatenated along the channels."""
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "inception"

  def basic(self, x, features, kernel, strides=1, padding=0, *, name, train):
    """`BasicConv2d` `name` of this block applied to `x` (call from `__call__`)."""
    return BasicConv2d(features, kernel, strides, padding, dtype=self.dtype,
                       init_scheme=self.init_scheme, name=name)(x, train)


class InceptionA(_Mixed):
  """Mixed_5b..5d at 35x35: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg-pool-1x1 ->
  64 + 64 + 96 + pool_features channels."""
  pool_features: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    b1 = self.basic(x, 64, 1, name="branch1x1", train=train)
    b5 = self.basic(x, 48, 1, name="branch5x5_1", train=train)
    b5 = self.basic(b5, 64, 5, padding=2, name="branch5x5_2", train=train)
    b3 = self.basic(x, 64, 1, name="branch3x3dbl_1", train=train)
    b3 = self.basic(b3, 96, 3, padding=1, name="branch3x3dbl_2", train=train)
    b3 = self.basic(b3, 96, 3, padding=1, name="branch3x3dbl_3", train=train)
    bp = self.basic(_avg_pool_3x3(x), self.pool_features, 1, name="branch_pool", train=train)
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Mixed):
  """Mixed_6a, 35x35 -> 17x17 (VALID): 3x3/2 | 1x1-3x3-3x3/2 | max-pool 3x3/2 ->
  384 + 96 + C channels."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    b3 = self.basic(x, 384, 3, 2, name="branch3x3", train=train)
    bd = self.basic(x, 64, 1, name="branch3x3dbl_1", train=train)
    bd = self.basic(bd, 96, 3, padding=1, name="branch3x3dbl_2", train=train)
    bd = self.basic(bd, 96, 3, 2, name="branch3x3dbl_3", train=train)
    return jnp.concatenate([b3, bd, layers.pool(x, 3, 2)], axis=-1)


class InceptionC(_Mixed):
  """Mixed_6b..6e at 17x17, factorised 7x7s (c7 = channels_7x7): 1x1 | 1x1-1x7-7x1 |
  1x1-7x1-1x7-7x1-1x7 | avg-pool-1x1 -> 4 x 192 channels."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x, train: bool = False):
    c7 = self.channels_7x7
    b1 = self.basic(x, 192, 1, name="branch1x1", train=train)
    b7 = self.basic(x, c7, 1, name="branch7x7_1", train=train)
    b7 = self.basic(b7, c7, (1, 7), padding=(0, 3), name="branch7x7_2", train=train)
    b7 = self.basic(b7, 192, (7, 1), padding=(3, 0), name="branch7x7_3", train=train)
    bd = self.basic(x, c7, 1, name="branch7x7dbl_1", train=train)
    for i, (features, kernel, padding) in enumerate(
        [(c7, (7, 1), (3, 0)), (c7, (1, 7), (0, 3)), (c7, (7, 1), (3, 0)),
         (192, (1, 7), (0, 3))], start=2):
      bd = self.basic(bd, features, kernel, padding=padding, name=f"branch7x7dbl_{i}",
                      train=train)
    bp = self.basic(_avg_pool_3x3(x), 192, 1, name="branch_pool", train=train)
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Mixed):
  """Mixed_7a, 17x17 -> 8x8 (VALID): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max-pool 3x3/2 ->
  320 + 192 + C channels."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    b3 = self.basic(x, 192, 1, name="branch3x3_1", train=train)
    b3 = self.basic(b3, 320, 3, 2, name="branch3x3_2", train=train)
    b7 = self.basic(x, 192, 1, name="branch7x7x3_1", train=train)
    b7 = self.basic(b7, 192, (1, 7), padding=(0, 3), name="branch7x7x3_2", train=train)
    b7 = self.basic(b7, 192, (7, 1), padding=(3, 0), name="branch7x7x3_3", train=train)
    b7 = self.basic(b7, 192, 3, 2, name="branch7x7x3_4", train=train)
    return jnp.concatenate([b3, b7, layers.pool(x, 3, 2)], axis=-1)


class InceptionE(_Mixed):
  """Mixed_7b, 7c at 8x8, each 3x3 split into parallel 1x3 and 3x1: 1x1 |
  1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | avg-pool-1x1 -> 320 + 768 + 768 + 192 channels."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    def split(y, name):  # the parallel 1x3 ('a') and 3x1 ('b') convs, concatenated
      return jnp.concatenate([
          self.basic(y, 384, (1, 3), padding=(0, 1), name=f"{name}a", train=train),
          self.basic(y, 384, (3, 1), padding=(1, 0), name=f"{name}b", train=train)], axis=-1)

    b1 = self.basic(x, 320, 1, name="branch1x1", train=train)
    b3 = split(self.basic(x, 384, 1, name="branch3x3_1", train=train), "branch3x3_2")
    bd = self.basic(x, 448, 1, name="branch3x3dbl_1", train=train)
    bd = split(self.basic(bd, 384, 3, padding=1, name="branch3x3dbl_2", train=train),
               "branch3x3dbl_3")
    bp = self.basic(_avg_pool_3x3(x), 192, 1, name="branch_pool", train=train)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


# The Mixed blocks in order: (name, class, its fields).
MIXED = (("Mixed_5b", InceptionA, {"pool_features": 32}),
         ("Mixed_5c", InceptionA, {"pool_features": 64}),
         ("Mixed_5d", InceptionA, {"pool_features": 64}), ("Mixed_6a", InceptionB, {}),
         ("Mixed_6b", InceptionC, {"channels_7x7": 128}),
         ("Mixed_6c", InceptionC, {"channels_7x7": 160}),
         ("Mixed_6d", InceptionC, {"channels_7x7": 160}),
         ("Mixed_6e", InceptionC, {"channels_7x7": 192}), ("Mixed_7a", InceptionD, {}),
         ("Mixed_7b", InceptionE, {}), ("Mixed_7c", InceptionE, {}))


class InceptionV3(nn.Module):
  """`[B, H, W, 3]` images (H, W >= 75; 299 in torchvision) -> `[B, num_classes]` float32
  logits.

  Stem: Conv2d_1a_3x3 (3x3 / 2), Conv2d_2a_3x3 (3x3), Conv2d_2b_3x3 (3x3, pad 1), max-pool
  3x3 / 2, Conv2d_3b_1x1, Conv2d_4a_3x3 (3x3), max-pool 3x3 / 2 (convs and pools VALID
  unless padded), then the `MIXED` blocks (2048 channels, 8x8 at 299 px), the head, `fc`.
  No AuxLogits, no dropout, no transform_input (the release's Basemodel drops them).

  Attributes:
    head: a module from `gcp.heads.HEADS`; every head keeps all the strides.
    num_classes: classifier outputs.
    dtype: backbone compute dtype. init_scheme: `gcp.layers.INITS` key.
  """
  head: nn.Module
  num_classes: int
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "inception"

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"InceptionV3 expects NHWC RGB images [B, H, W, 3], got {x.shape}")
    if min(x.shape[1:3]) < MIN_SIZE:
      raise ValueError(f"InceptionV3 needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels "
                       f"(its unpadded stem and grid reductions leave 1x1 features there), "
                       f"got {x.shape[1]}x{x.shape[2]}")
    basic = lambda y, features, kernel, strides=1, padding=0, *, name: BasicConv2d(
        features, kernel, strides, padding, dtype=self.dtype, init_scheme=self.init_scheme,
        name=name)(y, train)
    x = basic(x.astype(self.dtype), 32, 3, 2, name="Conv2d_1a_3x3")
    x = basic(x, 32, 3, name="Conv2d_2a_3x3")
    x = layers.pool(basic(x, 64, 3, padding=1, name="Conv2d_2b_3x3"), 3, 2)
    x = basic(x, 80, 1, name="Conv2d_3b_1x1")
    x = layers.pool(basic(x, 192, 3, name="Conv2d_4a_3x3"), 3, 2)
    for name, block, fields in MIXED:
      x = block(**fields, dtype=self.dtype, init_scheme=self.init_scheme, name=name)(x, train)
    x = self.head(x, train=train)
    return layers.dense(self.num_classes, name="fc", init=self.init_scheme)(x)
