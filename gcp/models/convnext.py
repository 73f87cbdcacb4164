"""ConvNeXt (Liu et al. 2022) as the Moment Probing release builds it (mingzeG/Moment-Probing,
models/convnext.py: a timm 0.5-era ConvNeXt, trained as convnext_base_in22k with
`conv_mlp=False`, `head_norm_first=False`, `ls_init_value=1e-6`), NHWC, in Flax linen.

  stem: conv 4x4/4 -> LayerNorm
  4 stages (`depths` blocks of `dims` channels); stages 1-3 open with LayerNorm -> conv 2x2/2
  block: x + DropPath(gamma * y), y = MLP(LN(dwconv7x7(x))) (MLP 4x, exact GELU); with MP+
         y = b + (1 + w) * y, (w, b) = PSRP(y) (`gcp.models.vit.PSRP`)
  head: called on the final map `[B, H/32, W/32, dims[-1]]` (`gcp.heads.MAP_HEADS`), holds
        the classifier and, as in timm's ConvNeXt, the final LayerNorm.
LayerNorm eps 1e-6 everywhere (the heads' own norms: see `gcp.heads`).

Our variable paths <-> the release's state_dict names (timm's ConvNeXt names: "." becomes
"/" between modules and "_" inside one; Conv2d weights OIHW -> HWIO kernels, Linear
weights `[out, in]` -> `[in, out]` kernels, norm weights -> `scale`):
  stem_proj/{kernel,bias}                      stem.proj.{weight,bias}
  stem_norm/{scale,bias}                       stem.norm.{weight,bias}
  stages_{i}/downsample_norm/{scale,bias}      stages.{i}.downsample.norm.{weight,bias}  i >= 1
  stages_{i}/downsample_proj/{kernel,bias}     stages.{i}.downsample.proj.{weight,bias}  i >= 1
  stages_{i}/blocks_{j}/conv_dw/{kernel,bias}  stages.{i}.blocks.{j}.conv_dw.{weight,bias}
  stages_{i}/blocks_{j}/norm/{scale,bias}      stages.{i}.blocks.{j}.norm.{weight,bias}
  stages_{i}/blocks_{j}/mlp_fc{1,2}/{kernel,bias}  stages.{i}.blocks.{j}.mlp.fc{1,2}.{...}
  stages_{i}/blocks_{j}/gamma                  stages.{i}.blocks.{j}.gamma
  stages_{i}/blocks_{j}/psrp/{down,scale,shift}/kernel
                                               stages.{i}.blocks.{j}.psrp.{down,up_weight,
                                               up_bias}.weight                           MP+
  head/...                                     head.... (see `gcp.heads.MAP_HEADS`)

The release's quirks, reproduced:
- The downsample LayerNorms of stages 1-3 divide the variance by C - 1. The release's
  `LayerNorm2d` takes F.layer_norm only for a contiguous NCHW input and otherwise
  `torch.var_mean` without `unbiased=False` (timm fixed this later); a block's output is
  channels-last strided (its MLP runs on the NHWC permutation), so those three norms
  always take the unbiased branch, the stem's norm (a conv's contiguous output) never.
  `unbiased_downsample_norm=False` gives the biased norm of FB's ConvNeXt and later timm.
  (With timm's --channels-last, which the release's scripts do not pass, the stem's norm
  would be unbiased too.)
- PSRP is fed the MLP's output (the ViT feeds it the block's input).
- Loading FB's ImageNet-21k checkpoint, the release's filter renames FB's final `norm` to
  `head.norm`, which only the linear head has; timm then loads non-strictly (the class
  count differs), so with MP that norm is dropped and `head.cls_head.norm` starts at
  weight 1, bias 0 (a converter reproducing the release leaves our `head/cls_norm` fresh).
- The release's `_init_weights` is commented out: every conv and dense keeps PyTorch's
  default initialisation, U(+-1/sqrt(fan_in)) for weights and biases, as here. PSRP is
  ours (`gcp.models.vit.PSRP`: scale and shift start at zero).
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gcp import ops
from gcp.layers import torch_uniform
from gcp.models.vit import PSRP, drop_path

LN_EPS = 1e-6


def drop_path_rates(depths: Sequence[int], rate: float) -> tuple[tuple[float, ...], ...]:
  """Per stage, its blocks' stochastic-depth rates: `rate * k / (n - 1)` for the k-th of
  all n blocks (the release's `torch.linspace(0, rate, n).split(depths)`)."""
  total = sum(depths)
  rates = [rate * k / max(total - 1, 1) for k in range(total)]
  starts = [sum(depths[:i]) for i in range(len(depths))]
  return tuple(tuple(rates[s:s + d]) for s, d in zip(starts, depths))


class LayerNorm(nn.Module):
  """LayerNorm over the channels (last axis), computed in at least float32 with a two-pass
  variance; `unbiased`: the variance over C divided by C - 1 (the release's downsample
  norms), not C. Parameters `scale`, `bias` (flax's LayerNorm names)."""
  epsilon: float = LN_EPS
  unbiased: bool = False

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    x = ops.upcast(x)
    y = x - jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.sum(y * y, axis=-1, keepdims=True) / (c - 1 if self.unbiased else c)
    y = y * jax.lax.rsqrt(var + self.epsilon)
    return (y * self.param("scale", nn.initializers.ones, (c,))
            + self.param("bias", nn.initializers.zeros, (c,)))


def _conv(features: int, kernel: int, stride: int, fan_in: int, dtype, name: str,
          padding: int = 0, groups: int = 1) -> nn.Conv:
  """A PyTorch Conv2d (bias, symmetric `padding`) with its default initialisation."""
  init = torch_uniform(fan_in)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding),) * 2, feature_group_count=groups, dtype=dtype,
                 kernel_init=init, bias_init=init, name=name)


def _dense(features: int, fan_in: int, dtype, name: str) -> nn.Dense:
  init = torch_uniform(fan_in)
  return nn.Dense(features, dtype=dtype, kernel_init=init, bias_init=init, name=name)


class Block(nn.Module):
  """`[B, H, W, C]` -> same: x + DropPath(gamma * y), y = fc2(GELU(fc1(LN(dwconv(x))))),
  with PSRP y = b + (1 + w) * y, (w, b) = PSRP(y). The residual stream, LayerNorm, PSRP and
  layer scale run in float32, the convs and dense layers in `dtype`. No `gamma` when
  `ls_init_value` <= 0 (as the release)."""
  drop_path: float = 0.0
  ls_init_value: float = 1e-6
  psrp_rank: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    c = x.shape[-1]
    y = _conv(c, 7, 1, 49, self.dtype, "conv_dw", padding=3, groups=c)(x.astype(self.dtype))
    y = LayerNorm(name="norm")(y).astype(self.dtype)
    y = nn.gelu(_dense(4 * c, c, self.dtype, "mlp_fc1")(y), approximate=False)
    y = _dense(c, 4 * c, self.dtype, "mlp_fc2")(y).astype(jnp.float32)
    if self.psrp_rank:
      w, b = PSRP(self.psrp_rank, name="psrp")(y)
      y = b + (1 + w) * y
    if self.ls_init_value > 0:
      y = y * self.param("gamma", nn.initializers.constant(self.ls_init_value), (c,))
    rng = self.make_rng("dropout") if train and self.drop_path > 0 else None
    return x + drop_path(y, self.drop_path, rng, not train)


class Stage(nn.Module):
  """Optional downsampling (LayerNorm -> conv 2x2/2 to `dim`), then one `Block` per entry
  of `drop_paths` (its rate)."""
  dim: int
  drop_paths: Sequence[float]
  downsample: bool
  ls_init_value: float = 1e-6
  psrp_rank: int = 0
  unbiased_downsample_norm: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.downsample:
      x = LayerNorm(unbiased=self.unbiased_downsample_norm, name="downsample_norm")(x)
      x = _conv(self.dim, 2, 2, 4 * x.shape[-1], self.dtype, "downsample_proj")(
          x.astype(self.dtype)).astype(jnp.float32)
    for j, rate in enumerate(self.drop_paths):
      x = Block(rate, self.ls_init_value, self.psrp_rank, self.dtype, name=f"blocks_{j}")(
          x, train)
    return x


class ConvNeXt(nn.Module):
  """ConvNeXt backbone ending in a feature-map head (which holds the classifier).

  Input `[B, H, W, 3]` images; output `[B, K]` float32 logits from `head`, called on the
  final map `[B, H/32, W/32, dims[-1]]` (float32).

  Attributes:
    head: a module from `gcp.heads.MAP_HEADS`; its class attribute `psrp` switches the PSRP
      adapters on in every block (MP+).
    depths, dims: blocks and channels per stage (defaults: ConvNeXt-B).
    drop_path: stochastic depth of the last block; the k-th of all n blocks uses
      drop_path * k / (n - 1) (`drop_path_rates`). Randomness only from the 'dropout' rng.
    ls_init_value: initial layer scale `gamma` (1e-6; <= 0: no layer scale).
    psrp_rank: hidden width of the PSRP adapters (16, the release's `PSRP(dim)`).
    unbiased_downsample_norm: the release's downsample LayerNorms (see the module
      docstring); False: FB's / later timm's biased ones.
    dtype: conv and dense compute dtype (float32 / bfloat16 / float16).
  """
  head: nn.Module
  depths: Sequence[int] = (3, 3, 27, 3)
  dims: Sequence[int] = (128, 256, 512, 1024)
  drop_path: float = 0.0
  ls_init_value: float = 1e-6
  psrp_rank: int = 16
  unbiased_downsample_norm: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"ConvNeXt expects NHWC RGB images [B, H, W, 3], got shape {x.shape}")
    if len(self.depths) != len(self.dims):
      raise ValueError(f"{len(self.depths)} stage depths but {len(self.dims)} widths")
    x = _conv(self.dims[0], 4, 4, 48, self.dtype, "stem_proj")(x.astype(self.dtype))
    x = LayerNorm(name="stem_norm")(x)
    psrp = getattr(type(self.head), "psrp", False)
    for i, (dim, rates) in enumerate(zip(self.dims, drop_path_rates(self.depths,
                                                                    self.drop_path))):
      x = Stage(dim, rates, downsample=i > 0, ls_init_value=self.ls_init_value,
                psrp_rank=self.psrp_rank if psrp else 0,
                unbiased_downsample_norm=self.unbiased_downsample_norm, dtype=self.dtype,
                name=f"stages_{i}")(x, train)
    return self.head(x, train=train)
