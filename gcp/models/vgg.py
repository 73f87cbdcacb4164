"""VGG-11/13/16/19 (with or without BatchNorm) and AlexNet as fast-MPN-COV's Basemodel
builds them (src/network/base.py, model_init.py): the features' last max-pool is dropped and
the head takes its place under every head, GAP included (14x14 VGG / 13x13 AlexNet maps at
224 px), then the FC-4096 classifier with its first layer sized to the head's output or, as
when the release fine-tunes (--pretrained), a single Linear layer (`hidden=0`)."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from gcp.layers import batch_norm, conv, dense, pool

# Simonyan & Zisserman's configurations A, B, D, E: conv widths and "M" for 2x2 max-pools.
CFGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}
# AlexNet ("one weird trick" version): (channels, kernel, stride, padding) and 3x3/2 pools.
ALEXNET = ((64, 11, 4, 2), "M", (192, 5, 1, 2), "M", (384, 3, 1, 1), (256, 3, 1, 1),
           (256, 3, 1, 1), "M")


def fc_classifier(x, num_classes: int, *, hidden: int, dropout: float, train: bool,
                  init: str, dropout_first: bool = False):
  """`[B, D]` -> `[B, num_classes]`: torchvision's FC-`hidden` classifier, its layers named
  by their Sequential slots: VGG's Linear, ReLU, Dropout twice then Linear
  (`classifier_{0,3,6}`), AlexNet's Dropout, Linear, ReLU twice then Linear
  (`dropout_first`: `classifier_{1,4,6}`); `hidden=0`: one Linear `classifier`."""
  if not hidden:
    return dense(num_classes, name="classifier", init=init)(x)
  drop = nn.Dropout(dropout, deterministic=not train)
  for i in range(2):
    x = drop(x) if dropout_first else x
    x = nn.relu(dense(hidden, name=f"classifier_{3 * i + dropout_first}", init=init)(x))
    x = x if dropout_first else drop(x)
  return dense(num_classes, name="classifier_6", init=init)(x)


def _check_images(x, name: str):
  if x.ndim != 4 or x.shape[-1] != 3:
    raise ValueError(f"{name} expects NHWC RGB images [B, H, W, 3], got shape {x.shape}")


class VGG(nn.Module):
  """`[B, H, W, 3]` images -> `[B, num_classes]` float32 logits.

  Conv layers are `features_{i}` (and `features_{i}_bn`), i their index in `cfg`.

  Attributes:
    head: a module from `gcp.heads.HEADS`, taking the place of the last max-pool.
    num_classes: classifier outputs.
    cfg: conv widths and "M" for max-pools (a value of `CFGS`; VGG-16 by default).
    batch_norm: BatchNorm after every conv (the `_bn` models).
    width: channels of the first conv (64 in the published models); the rest scale with it.
    hidden: width of the two hidden FC layers (4096); 0: a single Linear classifier.
    dropout: dropout rate of the classifier (0.5, PyTorch's default).
    dtype: backbone compute dtype. init_scheme: `gcp.layers.INITS` key.
  """
  head: nn.Module
  num_classes: int
  cfg: Sequence = CFGS["vgg16"]
  batch_norm: bool = True
  width: int = 64
  hidden: int = 4096
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torchvision"

  @nn.compact
  def __call__(self, x, train: bool = False):
    _check_images(x, "VGG")
    x = x.astype(self.dtype)
    for i, v in enumerate(self.cfg[:-1] if self.cfg[-1] == "M" else self.cfg):
      if v == "M":
        x = pool(x, 2, 2)
        continue
      x = conv(v * self.width // 64, 3, name=f"features_{i}", dtype=self.dtype,
               init=self.init_scheme, use_bias=True)(x)
      if self.batch_norm:
        x = batch_norm(train, name=f"features_{i}_bn", dtype=self.dtype)(x)
      x = nn.relu(x)
    x = self.head(x, train=train)
    return fc_classifier(x, self.num_classes, hidden=self.hidden, dropout=self.dropout,
                         train=train, init=self.init_scheme)


class AlexNet(nn.Module):
  """`[B, H, W, 3]` images -> `[B, num_classes]` float32 logits: torchvision's AlexNet (no
  BatchNorm; convs `features_{i}`, i their index in `ALEXNET`), its last max-pool replaced
  by the head, then the dropout-first FC-4096 classifier (`classifier_{1,4,6}`).

  Attributes:
    head: a module from `gcp.heads.HEADS` (13x13x256 features at 224 px).
    num_classes: classifier outputs.
    hidden: width of the two hidden FC layers (4096); 0: a single Linear classifier.
    dropout: dropout rate of the classifier (0.5).
    dtype: backbone compute dtype. init_scheme: `gcp.layers.INITS` key ('pytorch': the
      release's AlexNet keeps PyTorch's default initialisation).
  """
  head: nn.Module
  num_classes: int
  hidden: int = 4096
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "pytorch"

  @nn.compact
  def __call__(self, x, train: bool = False):
    _check_images(x, "AlexNet")
    x = x.astype(self.dtype)
    for i, layer in enumerate(ALEXNET[:-1]):
      if layer == "M":
        x = pool(x, 3, 2)
        continue
      features, kernel, stride, padding = layer
      x = nn.relu(conv(features, kernel, stride, padding=padding, name=f"features_{i}",
                       dtype=self.dtype, init=self.init_scheme, use_bias=True)(x))
    x = self.head(x, train=train)
    return fc_classifier(x, self.num_classes, hidden=self.hidden, dropout=self.dropout,
                         train=train, init=self.init_scheme, dropout_first=True)
