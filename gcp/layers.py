"""Building blocks shared by backbones and heads, with the releases' defaults (SPEC §2-3)."""

import flax.linen as nn
import jax.numpy as jnp

# MindSpore releases (the published tables): conv Xavier-uniform, dense truncated normal 0.01.
conv_init = nn.initializers.xavier_uniform()
dense_init = nn.initializers.truncated_normal(stddev=0.01)

def conv(features: int, kernel: int, strides: int = 1, *, name: str, dtype) -> nn.Conv:
  """Bias-free square conv with PyTorch's symmetric padding (kernel // 2 on every side)."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 kernel_init=conv_init, name=name)

def batch_norm(train: bool, *, name: str, dtype) -> nn.BatchNorm:
  """BatchNorm with PyTorch's momentum 0.1 and eps 1e-5; statistics over the global batch.

  Under `jax.jit` with a data-sharded batch the mean is taken over every device's examples.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      dtype=dtype, use_fast_variance=False, name=name)

class ReductionBlock(nn.Module):
  """1x1 conv (no bias) -> BN -> ReLU: `[B, H, W, C]` -> `[B, H, W, dim]`."""
  dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = conv(self.dim, 1, name="conv", dtype=self.dtype)(x)
    return nn.relu(batch_norm(train, name="bn", dtype=self.dtype)(x))
