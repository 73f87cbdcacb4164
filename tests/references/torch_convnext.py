"""PyTorch port of the Moment Probing release's ConvNeXt (mingzeG/Moment-Probing,
models/convnext.py, a timm 0.5-era copy) with its `Moment_Probing_CNN` head
(models/representation/MP.py) and MP+'s `PSRP`, written from the release's code (not from
ours). Only what the release trains: `conv_mlp=False`, `head_norm_first=False`,
probing_mode 'mp' (the release's default) or anything else (timm's pool -> norm -> fc head),
tuning_mode None or 'psrp'.

Module names are the release's, so `state_dict()` has its keys:
  stem.{proj, norm}, stages.{i}.downsample.{norm, proj} (i >= 1),
  stages.{i}.blocks.{j}.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma, psrp.{down, up_weight,
  up_bias}}, and
  head.{norm, fc} (linear) or head.{proj, ln, cls_head.norm, cls_head.fc, classifier2,
  downblocks.0.0, downblocks.0.2} (MP).

Kept as the release has them, quirks included:
- `LayerNorm2d` branches on memory layout: a contiguous NCHW input goes through
  F.layer_norm (biased variance); any other layout through `torch.var_mean` WITHOUT
  `unbiased=False` (timm added it later), i.e. the variance over C channels divided by
  C - 1. A block's output is channels-last strided (its MLP runs on the NHWC permutation
  and `x.mul(gamma)` keeps those strides), so the downsample norms of stages 1-3 take the
  unbiased branch; the stem norm (a conv's contiguous output) and the heads' norms (on a
  1 x 1 pooled map, contiguous in every layout) the biased one.
- PSRP is fed the MLP's output itself (`weight, bias = psrp(x)` right after `x = mlp(x)`),
  not the block's input as in the ViT.
- The MP head groups the projected channels interleaved: `reshape(B, C // G, G, N)`, so
  group g holds channels g, g + G, g + 2G, ...
- `_init_weights` is commented out: every layer keeps PyTorch's default initialisation.
Sizes the release hard-codes (the MP head's 512 / 4 and `classifier2`'s 2883 inputs) are
arguments (2883 computed from them), for reduced test models.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from references.torch_mp import PSRP, Mlp


class LayerNorm2d(nn.LayerNorm):
  """The release's channels-first LayerNorm, both branches (see the module docstring)."""

  def __init__(self, channels, eps=1e-6):
    super().__init__(channels, eps=eps)

  def forward(self, x):
    if x.is_contiguous(memory_format=torch.contiguous_format):
      return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight,
                          self.bias, self.eps).permute(0, 3, 1, 2)
    s, u = torch.var_mean(x, dim=1, keepdim=True)  # unbiased: as the release
    x = (x - u) * torch.rsqrt(s + self.eps)
    return x * self.weight[:, None, None] + self.bias[:, None, None]


class DropPath(nn.Module):
  """timm's stochastic depth: per sample, survivors scaled by 1 / keep."""

  def __init__(self, rate):
    super().__init__()
    self.rate = rate

  def forward(self, x):
    if not self.training or self.rate == 0.0:
      return x
    keep = 1 - self.rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep)


class ConvNeXtBlock(nn.Module):
  def __init__(self, dim, drop_path=0.0, ls_init_value=1e-6, tuning_mode=None):
    super().__init__()
    self.conv_dw = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
    self.norm = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, 4 * dim)
    self.gamma = nn.Parameter(ls_init_value * torch.ones(dim)) if ls_init_value > 0 else None
    self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
    self.tuning_mode = tuning_mode
    if tuning_mode == "psrp":
      self.psrp = PSRP(dim)

  def forward(self, x):
    shortcut = x
    x = self.norm(self.conv_dw(x).permute(0, 2, 3, 1))
    x = self.mlp(x)
    if self.tuning_mode == "psrp":
      weight, bias = self.psrp(x)
      x = bias + (weight + 1) * x
    x = x.permute(0, 3, 1, 2)
    if self.gamma is not None:
      x = x.mul(self.gamma.reshape(1, -1, 1, 1))
    return self.drop_path(x) + shortcut


class Downsample(nn.Module):
  def __init__(self, dim, out_dim, stride):
    super().__init__()
    self.norm = LayerNorm2d(dim)
    self.proj = nn.Conv2d(dim, out_dim, kernel_size=stride, stride=stride)

  def forward(self, x):
    return self.proj(self.norm(x))


class ConvNeXtStage(nn.Module):
  def __init__(self, in_chs, out_chs, stride, depth, dp_rates, ls_init_value, tuning_mode):
    super().__init__()
    if in_chs != out_chs or stride > 1:
      self.downsample = Downsample(in_chs, out_chs, stride)
    else:
      self.downsample = nn.Identity()
    self.blocks = nn.Sequential(*[ConvNeXtBlock(out_chs, dp_rates[j], ls_init_value,
                                                tuning_mode) for j in range(depth)])

  def forward(self, x):
    return self.blocks(self.downsample(x))


class PatchEmbed(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, kernel_size=4, stride=4)
    self.norm = LayerNorm2d(dim)

  def forward(self, x):
    return self.norm(self.proj(x))


def _pool_norm_fc(dim, num_classes):
  """timm's ConvNeXt head (head_norm_first=False): pool -> LayerNorm2d -> flatten -> fc."""
  return nn.Sequential(OrderedDict([
      ("global_pool", nn.AdaptiveAvgPool2d(1)),  # SelectAdaptivePool2d('avg'), no flatten
      ("norm", LayerNorm2d(dim)),
      ("flatten", nn.Flatten(1)),
      ("drop", nn.Dropout(0.0)),
      ("fc", nn.Linear(dim, num_classes))]))


class MomentProbingCNN(nn.Module):
  """The release's `Moment_Probing_CNN` (cross_type 'near'): (cls_head(x) +
  classifier2(flatten(conv(GELU(conv(C)))))) / 2, C_i the column-normalised
  cross-covariance of the interleaved channel groups i and i + 1 of proj(x), each group
  through the shared `ln`, the scalar mean of each removed (`Covariance._remove_mean`)."""

  def __init__(self, in_dim, hidden_dim=512, num_heads=4, num_classes=1000):
    super().__init__()
    self.hidden_dim, self.num_heads = hidden_dim, num_heads
    self.proj = nn.Conv2d(in_dim, hidden_dim, 1, 1, 0)
    self.ln = nn.LayerNorm(hidden_dim // num_heads)
    self.cls_head = _pool_norm_fc(in_dim, num_classes)
    side = ((hidden_dim // num_heads - 3) // 2 + 1 - 3) // 2 + 1
    self.classifier2 = nn.Linear((num_heads - 1) * side * side, num_classes)
    self.downblocks = nn.ModuleList([nn.Sequential(
        nn.Conv2d(num_heads - 1, num_heads - 1, 3, stride=2, bias=False), nn.GELU(),
        nn.Conv2d(num_heads - 1, num_heads - 1, 3, stride=2, bias=False))])

  @staticmethod
  def groups(x, num_heads):
    """`[B, C, N]` -> `[G, B, N, C / G]` as the release: group g holds channels g + G k."""
    b, c, n = x.shape
    return x.reshape(b, c // num_heads, num_heads, n).permute(2, 0, 3, 1)

  def forward(self, x):
    b = x.shape[0]
    cls = self.cls_head(x)
    heads = self.groups(self.proj(x).reshape(b, self.hidden_dim, -1), self.num_heads)
    covs = []
    for i in range(self.num_heads - 1):
      h0, h1 = self.ln(heads[i]), self.ln(heads[i + 1])  # [B, N, c]
      h0 = h0 - h0.mean(dim=(1, 2), keepdim=True)  # adaptive_avg_pool2d over (c, N)
      h1 = h1 - h1.mean(dim=(1, 2), keepdim=True)
      cov = (h0.transpose(1, 2) @ h1 / h0.shape[1]).unsqueeze(1)  # [B, 1, c, c]
      covs.append(F.normalize(cov, dim=2))
    y = torch.cat(covs, dim=1)
    for layer in self.downblocks:
      y = layer(y)
    return (cls + self.classifier2(y.reshape(b, -1))) / 2


class ConvNeXt(nn.Module):
  """NCHW images -> logits. Defaults: the release's convnext_base(_in22k)."""

  def __init__(self, num_classes=1000, depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024),
               ls_init_value=1e-6, drop_path_rate=0.0, probing_mode="mp", tuning_mode=None,
               mp_hidden_dim=512, mp_heads=4):
    super().__init__()
    self.stem = PatchEmbed(dims[0])
    rates = drop_path_rates(depths, drop_path_rate)
    stages, prev = [], dims[0]
    for i in range(4):
      stages.append(ConvNeXtStage(prev, dims[i], 2 if i > 0 else 1, depths[i], rates[i],
                                  ls_init_value, tuning_mode))
      prev = dims[i]
    self.stages = nn.Sequential(*stages)
    if probing_mode == "mp":
      self.head = MomentProbingCNN(prev, mp_hidden_dim, mp_heads, num_classes)
    else:
      self.head = _pool_norm_fc(prev, num_classes)

  def forward(self, x):
    return self.head(self.stages(self.stem(x)))


def drop_path_rates(depths, rate):
  """The release's per-stage lists: linspace(0, rate, total blocks) split by stage (on the
  CPU, also when the model is built on the meta device)."""
  rates = torch.linspace(0, rate, sum(depths), device="cpu")
  return [r.tolist() for r in rates.split(list(depths))]


def randomize_(model: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
  """Every parameter away from its initialisation (so each tensor matters), activations
  O(1): conv / linear weights N(0, 1 / fan_in), biases N(0, scale^2), LayerNorm weights and
  layer-scale `gamma` 1 + N(0, scale^2), LayerNorm biases N(0, scale^2). Returns the model
  in eval mode."""
  gen = torch.Generator().manual_seed(seed)
  noise = lambda t: scale * torch.randn(t.shape, generator=gen, dtype=t.dtype)
  with torch.no_grad():
    for m in model.modules():
      for name, p in m.named_parameters(recurse=False):
        if name == "weight" and isinstance(m, (nn.Conv2d, nn.Linear)):
          p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) / p[0].numel() ** 0.5)
        elif name == "gamma" or (name == "weight" and isinstance(m, nn.LayerNorm)):
          p.copy_(1 + noise(p))
        else:
          p.copy_(noise(p))
  return model.eval()
