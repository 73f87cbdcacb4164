"""ShuffleNetV2 (torchvision layout) as GCP_Optimization uses it: its ShuffleNetV2 (GAP) and
ShuffleNetV2_MPNCOV keep every stride (7x7 features at 224 px), the latter reducing conv5's
1024 channels with ReLU6 before iSQRT-COV; no dropout before the classifier `fc`."""
import functools

import flax.linen as nn
import jax.numpy as jnp

from gcp import layers

STEM = 24
STAGE_REPEATS = (4, 8, 4)  # stage2, stage3, stage4
# width multiplier -> (stage2, stage3, stage4, conv5) channels, Ma et al. 2018, Table 5
# (torchvision's and the release's shufflenet_v2_x0_5 ... x2_0).
STAGE_CHANNELS = {0.5: (48, 96, 192, 1024), 1.0: (116, 232, 464, 1024),
                  1.5: (176, 352, 704, 1024), 2.0: (244, 488, 976, 2048)}


def channel_shuffle(x, groups: int = 2):
  """`[B, H, W, C]` -> the channels of each of `groups` blocks interleaved: out channel
  i * groups + j is in channel j * C / groups + i (PyTorch's view-transpose-flatten)."""
  *lead, c = x.shape
  x = x.reshape(*lead, groups, c // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*lead, c)


class ShuffleUnit(nn.Module):
  """ShuffleNetV2 unit: `[B, H, W, C]` -> `[B, H / s, W / s, features]`.

  Stride 1: the channels split in halves; the second goes through branch2 (1x1 - BN - ReLU,
  3x3 depthwise - BN, 1x1 - BN - ReLU) and joins the first. Stride 2: the whole input goes
  through branch1 (3x3 depthwise / 2 - BN, 1x1 - BN - ReLU) and branch2. Then the halves are
  concatenated and shuffled.
  """
  features: int
  strides: int
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torchvision"

  @nn.compact
  def __call__(self, x, train: bool = False):
    conv_bn = functools.partial(layers.conv_bn, train=train, dtype=self.dtype,
                                init=self.init_scheme)

    half, channels = self.features // 2, x.shape[-1]
    if self.strides == 1:
      if channels != self.features:
        raise ValueError(f"a stride-1 unit keeps its {channels} channels, asked for "
                         f"{self.features}")
      kept, x = jnp.split(x, 2, axis=-1)
    else:
      kept = conv_bn(x, channels, 3, self.strides, groups=channels, name="branch1_dw")
      kept = nn.relu(conv_bn(kept, half, 1, name="branch1_pw"))
    y = nn.relu(conv_bn(x, half, 1, name="branch2_pw1"))
    y = conv_bn(y, half, 3, self.strides, groups=half, name="branch2_dw")
    y = nn.relu(conv_bn(y, half, 1, name="branch2_pw2"))
    return channel_shuffle(jnp.concatenate([kept, y], axis=-1))


class ShuffleNetV2(nn.Module):
  """`[B, H, W, 3]` images -> `[B, num_classes]` float32 logits.

  conv1 (3x3 / 2, 24) - BN - ReLU, max-pool 3x3 / 2, stage2..4 (`STAGE_REPEATS` units,
  the first of each at stride 2), conv5 (1x1) - BN - ReLU, head, fc.

  Attributes:
    head: a module from `gcp.heads.HEADS` (the backbone keeps all its strides).
    num_classes: classifier outputs.
    width_mult: a key of `STAGE_CHANNELS` (0.5, 1.0, 1.5, 2.0; 1.0 in the published model).
    dtype: backbone compute dtype. init_scheme: `gcp.layers.INITS` key.
  """
  head: nn.Module
  num_classes: int
  width_mult: float = 1.0
  dtype: jnp.dtype = jnp.float32
  init_scheme: str = "torchvision"

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"ShuffleNetV2 expects NHWC RGB images [B, H, W, 3], got {x.shape}")
    if self.width_mult not in STAGE_CHANNELS:
      raise ValueError(f"ShuffleNetV2 has no width_mult {self.width_mult}; valid: "
                       f"{', '.join(map(str, STAGE_CHANNELS))}")
    *stages, last = STAGE_CHANNELS[self.width_mult]
    conv_bn = functools.partial(layers.conv_bn, train=train, dtype=self.dtype,
                                init=self.init_scheme)
    x = layers.max_pool_3x3_s2(nn.relu(conv_bn(x.astype(self.dtype), STEM, 3, 2, name="conv1")))
    for stage, (repeats, features) in enumerate(zip(STAGE_REPEATS, stages), start=2):
      for j in range(repeats):
        x = ShuffleUnit(features, 2 if j == 0 else 1, dtype=self.dtype,
                        init_scheme=self.init_scheme, name=f"stage{stage}_{j}")(x, train)
    x = nn.relu(conv_bn(x, last, 1, name="conv5"))
    x = self.head(x, train=train)
    return layers.dense(self.num_classes, name="fc", init=self.init_scheme)(x)
