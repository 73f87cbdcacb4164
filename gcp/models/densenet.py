"""DenseNet-BC (torchvision layout) as fast-MPN-COV builds it.

The release's Basemodel (`_reconstruct_densenet`) keeps torchvision's `features` (conv0,
norm0, relu0, pool0, denseblock1, transition1, ..., denseblock4, norm5), appends a
`last_relu` to them, and pools with GAvP or, through Newmodel, with MPNCOV (a 1x1
reduction to 256 from scratch, none with --pretrained) before a new `classifier`. Every
stride is kept under every head: 7x7 features at 224 px. No dropout (drop_rate 0).

Module names are torchvision's without the `features.` prefix (`denseblock2/denselayer3/
conv1` is `features.denseblock2.denselayer3.conv1`), so `gcp.convert.torch_layout` maps
them one-to-one.
"""
import functools
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from gcp import layers

# arch -> (growth_rate, block_config, num_init_features); bn_size 4 for all (Huang et al.
# 2017, Table 1; torchvision's and the release's densenet121 ... densenet201).
SIZES = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}


class DenseLayer(nn.Module):
  """BN - ReLU - conv 1x1 (bn_size * growth) - BN - ReLU - conv 3x3 (growth) [- dropout],
  concatenated to the input: `[B, H, W, C]` -> `[B, H, W, C + growth_rate]`."""
  growth_rate: int
  bn_size: int = 4
  drop_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "densenet"

  @nn.compact
  def __call__(self, x, train: bool = False):
    norm = functools.partial(layers.batch_norm, train, dtype=self.dtype)
    conv = functools.partial(layers.conv, dtype=self.dtype, init=self.init_scheme)
    y = conv(self.bn_size * self.growth_rate, 1, name="conv1")(nn.relu(norm(name="norm1")(x)))
    y = conv(self.growth_rate, 3, name="conv2")(nn.relu(norm(name="norm2")(y)))
    y = nn.Dropout(self.drop_rate, deterministic=not train)(y)
    return jnp.concatenate([x, y], axis=-1)


class DenseBlock(nn.Module):
  """`num_layers` dense layers `denselayer1...`: `[B, H, W, C]` ->
  `[B, H, W, C + num_layers * growth_rate]`."""
  num_layers: int
  growth_rate: int
  bn_size: int = 4
  drop_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "densenet"

  @nn.compact
  def __call__(self, x, train: bool = False):
    for i in range(1, self.num_layers + 1):
      x = DenseLayer(self.growth_rate, self.bn_size, self.drop_rate, dtype=self.dtype,
                     init_scheme=self.init_scheme, name=f"denselayer{i}")(x, train)
    return x


class Transition(nn.Module):
  """BN - ReLU - conv 1x1 - avg-pool 2x2 / 2: `[B, H, W, C]` -> `[B, H / 2, W / 2, features]`."""
  features: int
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "densenet"

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.relu(layers.batch_norm(train, name="norm", dtype=self.dtype)(x))
    x = layers.conv(self.features, 1, name="conv", dtype=self.dtype, init=self.init_scheme)(x)
    return layers.pool(x, 2, 2, kind="avg")


class DenseNet(nn.Module):
  """`[B, H, W, 3]` images -> `[B, num_classes]` float32 logits.

  conv0 (7x7 / 2) - norm0 - ReLU, max-pool 3x3 / 2 (pad 1), denseblock1..4 with
  transition1..3 between them (halving channels and resolution), norm5, ReLU (the
  release's `last_relu`), head, classifier. 224 px gives 7x7 features of 1024 (densenet121),
  2208 (161), 1664 (169) or 1920 (201) channels.

  Attributes:
    head: a module from `gcp.heads.HEADS` (the backbone keeps all its strides).
    num_classes: classifier outputs.
    growth_rate, block_config, num_init_features: a row of `SIZES` (densenet121 default).
    bn_size: bottleneck width of a dense layer in units of growth_rate (4).
    drop_rate: dropout after each dense layer in training (torchvision's; 0 in the release),
      from the 'dropout' rng.
    dtype: backbone compute dtype. init_scheme: `gcp.layers.INITS` key ('densenet': the
      release's Kaiming-normal fan-in convs, PyTorch's default for the new classifier).
  """
  head: nn.Module
  num_classes: int
  growth_rate: int = 32
  block_config: Sequence[int] = (6, 12, 24, 16)
  num_init_features: int = 64
  bn_size: int = 4
  drop_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "densenet"

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"DenseNet expects NHWC RGB images [B, H, W, 3], got {x.shape}")
    x = layers.conv(self.num_init_features, 7, 2, name="conv0", dtype=self.dtype,
                    init=self.init_scheme)(x.astype(self.dtype))
    x = nn.relu(layers.batch_norm(train, name="norm0", dtype=self.dtype)(x))
    x = layers.max_pool_3x3_s2(x)
    for b, num_layers in enumerate(self.block_config, start=1):
      x = DenseBlock(num_layers, self.growth_rate, self.bn_size, self.drop_rate,
                     dtype=self.dtype, init_scheme=self.init_scheme,
                     name=f"denseblock{b}")(x, train)
      if b < len(self.block_config):
        x = Transition(x.shape[-1] // 2, dtype=self.dtype, init_scheme=self.init_scheme,
                       name=f"transition{b}")(x, train)
    x = nn.relu(layers.batch_norm(train, name="norm5", dtype=self.dtype)(x))
    x = self.head(x, train=train)
    return layers.dense(self.num_classes, name="classifier", init=self.init_scheme)(x)
