"""VGG-16-BN as fast-MPN-COV uses it: the last max-pool dropped under a second-order head,
then the FC-4096 classifier (FC - ReLU - Dropout - FC - ReLU - Dropout - FC)."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from gcp.layers import batch_norm, conv, dense, pool

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512, "M")


class VGG(nn.Module):
  """`[B, H, W, 3]` images -> `[B, num_classes]` float32 logits.

  Attributes:
    head: a module from `gcp.heads.HEADS`; under a second-order head (last_stage_stride 1)
      the last max-pool is dropped, so 224 px gives 14x14 features.
    num_classes: classifier outputs.
    cfg: conv widths and "M" for max-pools (VGG-16 by default).
    width: channels of the first conv (64 in the published model); the rest scale with it.
    hidden: width of the two hidden FC layers (4096).
    dropout: dropout rate of the classifier (0.5, PyTorch's default).
    dtype: backbone compute dtype. init_scheme: `gcp.layers.INITS` key.
  """
  head: nn.Module
  num_classes: int
  cfg: Sequence = VGG16
  width: int = 64
  hidden: int = 4096
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torchvision"

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"VGG expects NHWC RGB images [B, H, W, 3], got shape {x.shape}")
    x = x.astype(self.dtype)
    layers = list(self.cfg)
    if type(self.head).last_stage_stride == 1 and layers[-1] == "M":
      layers = layers[:-1]
    for i, v in enumerate(layers):
      if v == "M":
        x = pool(x, 2, 2)
        continue
      x = conv(v * self.width // 64, 3, name=f"features_{i}", dtype=self.dtype,
               init=self.init_scheme, use_bias=True)(x)
      x = nn.relu(batch_norm(train, name=f"features_{i}_bn", dtype=self.dtype)(x))
    x = self.head(x, train=train)
    for i in range(2):
      x = nn.relu(dense(self.hidden, name=f"classifier_{3 * i}", init=self.init_scheme)(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return dense(self.num_classes, name="classifier_6", init=self.init_scheme)(x)
