"""Building blocks shared by backbones and heads, with the releases' conventions (SPEC §2-3, §6).

- Initialisation schemes by name (`INITS`): 'mindspore' (the seed releases and the published
  tables: conv Xavier-uniform, dense truncated normal 0.01), 'torchvision' (the PyTorch
  releases' ResNets, VGGs and mobile networks: conv Kaiming-normal fan-out, dense normal
  0.01), and for the networks fast-MPN-COV's Basemodel builds with a fresh PyTorch Linear
  classifier (dense: PyTorch's default, uniform +-1/sqrt(fan_in)): 'pytorch' (AlexNet: convs
  at PyTorch's default too), 'densenet' (conv Kaiming-normal fan-in) and 'inception' (conv
  normal sigma 0.1 truncated at 2 sigma).
- Padding: 'symmetric' (PyTorch: kernel // 2 on every side) or 'same' (TF/MindSpore: the
  extra row and column of a strided conv go at the bottom and right).
"""
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# nn.Conv2d / nn.Linear reset_parameters: Kaiming-uniform with a = sqrt(5), i.e.
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernels (fan_in read off the shape)...
_TORCH_DEFAULT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def torch_uniform(fan_in: int) -> Callable:
  """...and the same for any parameter of a layer with `fan_in` inputs (PyTorch draws its
  biases so): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1 / fan_in ** 0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


INITS: dict[str, tuple[Callable, Callable]] = {  # name -> (conv kernel init, dense kernel init)
    "mindspore": (nn.initializers.xavier_uniform(),
                  nn.initializers.truncated_normal(stddev=0.01)),
    "torchvision": (nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                    nn.initializers.normal(stddev=0.01)),
    "pytorch": (_TORCH_DEFAULT, _TORCH_DEFAULT),
    "densenet": (nn.initializers.variance_scaling(2.0, "fan_in", "normal"), _TORCH_DEFAULT),
    "inception": (nn.initializers.truncated_normal(stddev=0.1), _TORCH_DEFAULT),
}


def conv(features: int, kernel: int, strides: int = 1, *, name: str, dtype,
         padding: str | int = "symmetric", init: str = "mindspore", groups: int = 1,
         use_bias: bool = False) -> nn.Conv:
  """Square conv (bias-free unless asked), padded as PyTorch ('symmetric': kernel // 2, or
  an int: that many pixels on every side) or TF / MindSpore ('same')."""
  pad = padding if isinstance(padding, int) else kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides),
                 padding="SAME" if padding == "same" else ((pad, pad), (pad, pad)),
                 feature_group_count=groups, use_bias=use_bias, dtype=dtype,
                 kernel_init=INITS[init][0], name=name)


def dense(features: int, *, name: str, init: str = "mindspore", dtype=jnp.float32) -> nn.Dense:
  """Dense layer with bias (zero-initialised) and the scheme's kernel init."""
  return nn.Dense(features, dtype=dtype, kernel_init=INITS[init][1], name=name)


def pool(x, window: int, stride: int, kind: str = "max", padding="VALID"):
  """`kind` ('max' or 'avg') pooling over the spatial axes of `[B, H, W, C]`: a `window`
  square every `stride`; `padding` 'VALID', 'SAME' or ((top, bottom), (left, right)).

  Explicit padding is applied first, so that flax's pooling is called with keyword
  arguments and a string padding only: the form exporters (jax2onnx) map to ONNX pooling.
  """
  if kind == "max" and padding == "SAME":  # made explicit: `max_pool` pools unpadded
    padding = jax.lax.padtype_to_pads(x.shape[1:3], (window, window), (stride, stride),
                                      "SAME")
  if not isinstance(padding, str):
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)),
                constant_values=-jnp.inf if kind == "max" else 0.0)
    padding = "VALID"
  if kind == "max":
    return max_pool(x, window, stride)
  return nn.avg_pool(x, window_shape=(window, window), strides=(stride, stride),
                     padding=padding)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x, window: int, stride: int):
  """Max over each `window` square every `stride` of `[B, H, W, C]` (unpadded) ->
  `[B, (H - window) // stride + 1, (W - window) // stride + 1, C]`.

  The gradient goes to the first maximum of each window in row-major order, as with XLA's
  select-and-scatter and PyTorch, but in one fused elementwise pass: XLA's CPU expansion of
  select-and-scatter (an argmax reduce-window over index arrays, then a scatter) takes
  several times as long as the forward pass.
  """
  return nn.max_pool(x, window_shape=(window, window), strides=(stride, stride),
                     padding="VALID")


def _max_pool_fwd(x, window, stride):
  y = max_pool(x, window, stride)
  return y, (x, y)


def _max_pool_bwd(window, stride, residuals, g):
  x, y = residuals
  b, h, w, c = x.shape
  _, ho, wo, _ = y.shape
  zero = jnp.zeros((), g.dtype)
  taken = jnp.zeros(y.shape, bool)  # windows whose maximum an earlier offset already was
  dx = jnp.zeros(x.shape, g.dtype)
  for i in range(window):
    for j in range(window):
      xs = jax.lax.slice(x, (0, i, j, 0),
                         (b, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                         (1, stride, stride, 1))  # each window's element at offset (i, j)
      hit = ((xs == y) | jnp.isnan(xs)) & ~taken
      taken = taken | hit
      # Back to x's grid: interior padding puts window (r, s)'s share at (r*stride + i, ...).
      dx = dx + jax.lax.pad(jnp.where(hit, g, zero), zero,
                            ((0, 0, 0), (i, h - i - (ho - 1) * stride - 1, stride - 1),
                             (j, w - j - (wo - 1) * stride - 1, stride - 1), (0, 0, 0)))
  return (dx,)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_3x3_s2(x, padding: str = "symmetric"):
  """3x3 / 2 max-pool: PyTorch's pad 1, or TF SAME (more at the bottom and right)."""
  return pool(x, 3, 2, padding="SAME" if padding == "same" else ((1, 1), (1, 1)))


def batch_norm(train: bool, *, name: str, dtype, epsilon: float = 1e-5) -> nn.BatchNorm:
  """BatchNorm with PyTorch's momentum 0.1; statistics over the global batch.

  Under `jax.jit` with a data-sharded batch the mean is taken over every device's examples.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=epsilon,
                      dtype=dtype, use_fast_variance=False, name=name)


def conv_bn(x, features: int, kernel: int, strides: int = 1, *, name: str, train: bool,
            dtype, init: str, groups: int = 1):
  """`conv` (PyTorch padding) then `batch_norm`, as modules `{name}_conv` and `{name}_bn`
  of the calling module (the unit of the mobile networks' blocks)."""
  x = conv(features, kernel, strides, name=f"{name}_conv", dtype=dtype, init=init,
           groups=groups)(x)
  return batch_norm(train, name=f"{name}_bn", dtype=dtype)(x)


class ReductionBlock(nn.Module):
  """1x1 conv (no bias) -> BN -> ReLU (or ReLU6): `[B, H, W, C]` -> `[B, H, W, dim]`."""
  dim: int
  dtype: jnp.dtype = jnp.float32
  bn_eps: float = 1e-5
  relu6: bool = False
  init_scheme: str = "mindspore"

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = conv(self.dim, 1, name="conv", dtype=self.dtype, init=self.init_scheme)(x)
    x = batch_norm(train, name="bn", dtype=self.dtype, epsilon=self.bn_eps)(x)
    return nn.relu6(x) if self.relu6 else nn.relu(x)
