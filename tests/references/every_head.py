"""A head made of several heads, so that one compiled training step trains them all."""
from typing import ClassVar

import flax.linen as nn
import jax.numpy as jnp

from gcp.models import create_model


class EveryHead(nn.Module):
  """Several heads pooling the same features `[B, H, W, C]`; their outputs `[B, D_i]` side
  by side `[B, sum D_i]`. The heads must share `last_stage_stride` (a ResNet reads it)."""
  heads: tuple[nn.Module, ...]
  last_stage_stride: ClassVar[int] = 1

  def __call__(self, x, train: bool = False):
    return jnp.concatenate([head(x, train=train) for head in self.heads], axis=-1)


def every_head_model(arch: str, heads, **options) -> nn.Module:
  """`arch` ending in every head of `heads` (`EveryHead`), each as `create_model(arch,
  head=h, **options)` builds it for that backbone (its reduction's ReLU6, init scheme,
  BatchNorm eps)."""
  models = [create_model(arch, head=h, **options) for h in heads]
  return models[0].clone(head=EveryHead(tuple(m.head for m in models)))
