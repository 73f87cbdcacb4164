"""PyTorch port of AMS-Net (CPTM, CSTP neck, auxiliary head) and TCPNet's pooling on a
TSN ResNet, written from SPEC §5 (not from ours), channels first: clips and feature maps
NCTHW.

The 2D backbone runs on frames folded into the batch ([B*T, C, H, W], torchvision blocks
of `torch_resnet`); CPTM and CSTP are written with Conv3d / BatchNorm3d / MaxPool3d as
SPEC states them. Module names mirror our parameter names ('cptm1.attention.branch_0',
'head.fuse1_td_bn', 'layer1.0.downsample.0'), so `to_flax` copies weights by name.
Choices SPEC leaves open are the same as gcp.models.video's: convs bias-free, Linear with
bias.
"""
import re

import flax.traverse_util
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from references import torch_release
from references.torch_resnet import Block


def _conv_bn(parent: nn.Module, name: str, cin: int, cout: int, kernel, stride=1,
             groups: int = 1, eps: float = 1e-5) -> None:
  """Registers `name` (Conv3d, padding kernel // 2, no bias) and `name_bn` (BatchNorm3d)."""
  setattr(parent, name, nn.Conv3d(cin, cout, kernel, stride, tuple(k // 2 for k in kernel),
                                  groups=groups, bias=False))
  setattr(parent, f"{name}_bn", nn.BatchNorm3d(cout, eps))


def _apply_conv_bn(parent: nn.Module, name: str, x):
  return F.relu(getattr(parent, f"{name}_bn")(getattr(parent, name)(x)))


class BranchAttention(nn.Module):
  """s [B, C] -> softmax over K of Linear_k(ReLU(BN1d(Linear(C -> hidden)(s)))): [B, K, C]."""

  def __init__(self, channels, hidden, branches, eps=1e-5):
    super().__init__()
    self.squeeze = nn.Linear(channels, hidden)
    self.squeeze_bn = nn.BatchNorm1d(hidden, eps)
    self.branches = branches
    for k in range(branches):
      setattr(self, f"branch_{k}", nn.Linear(hidden, channels))

  def forward(self, s):
    z = F.relu(self.squeeze_bn(self.squeeze(s)))
    logits = torch.stack([getattr(self, f"branch_{k}")(z) for k in range(self.branches)], 1)
    return torch.softmax(logits, dim=1)


def _gap(x):  # [B, C, T, H, W] -> [B, C]
  return x.mean(dim=(2, 3, 4))


def _scale(weights, k, x):  # weights [B, K, C], x [B, C, T, H, W]
  return weights[:, k, :, None, None, None] * x


class CPTM(nn.Module):
  """[B, C, T, H, W] -> same shape; SPEC §5's CPTM with 'competitive' or 'average' fusion."""

  def __init__(self, channels, fusion="competitive", eps=1e-5):
    super().__init__()
    c = channels // 4
    self.fusion = fusion
    _conv_bn(self, "reduce", channels, c, (1, 1, 1), eps=eps)
    for k in range(3):
      _conv_bn(self, f"temporal_{k}", c, c, (3, 1, 1), eps=eps)
    if fusion == "competitive":
      self.attention = BranchAttention(c, max(c // 16, 32), 3, eps)
    _conv_bn(self, "expand", c, channels, (1, 1, 1), eps=eps)

  def forward(self, x):
    r = _apply_conv_bn(self, "reduce", x)
    f1 = _apply_conv_bn(self, "temporal_0", r)
    f2 = _apply_conv_bn(self, "temporal_1", f1)
    f3 = _apply_conv_bn(self, "temporal_2", f2)
    u = (f1 + f2 + f3) / 3
    if self.fusion == "average":
      v = u
    else:
      a = self.attention(_gap(u))
      v = _scale(a, 0, f1) + _scale(a, 1, f2) + _scale(a, 2, f3)
    return _apply_conv_bn(self, "expand", v)


class CSTP(nn.Module):
  """x3 [B, C3, T, 2h, 2w], x4 [B, C4, T, h, w] -> [B, C4] (neck + 7x7 average pool)."""

  def __init__(self, c3, c4, num_segments, eps=1e-5, groups=32):
    super().__init__()
    c = c4 // 2
    _conv_bn(self, "res4_conv", c3, c4, (1, 3, 3), (1, 2, 2), eps=eps)
    for i in range(2):
      setattr(self, f"temporal_{i}", nn.Conv3d(c4, c, (3, 1, 1), padding=(1, 0, 0),
                                               groups=groups, bias=False))
    self.pool = nn.MaxPool3d((num_segments, 1, 1), (num_segments, 1, 1))
    self.bottom_up = nn.Conv3d(c, c, (3, 1, 1), padding=(1, 0, 0), bias=False)
    for name in ("td_0", "td_1", "bu_0", "bu_1"):
      _conv_bn(self, name, c, c, (1, 1, 1), groups=groups, eps=eps)
    self.fuse1_attention = BranchAttention(c, c // 8, 4, eps)
    _conv_bn(self, "fuse1_td", 2 * c, c4, (1, 1, 1), eps=eps)
    _conv_bn(self, "fuse1_bu", 2 * c, c4, (1, 1, 1), eps=eps)
    self.fuse2_attention = BranchAttention(c4, c4 // 8, 2, eps)
    _conv_bn(self, "fuse2", 2 * c4, c4, (1, 1, 1), eps=eps)

  def forward(self, x3, x4):
    ys = [_apply_conv_bn(self, "res4_conv", x3), x4]
    t0, t1 = (self.pool(getattr(self, f"temporal_{i}")(y)) for i, y in enumerate(ys))
    td0 = _apply_conv_bn(self, "td_0", t0 + t1)
    td1 = _apply_conv_bn(self, "td_1", t1)
    bu0 = _apply_conv_bn(self, "bu_0", t0)
    bu1 = _apply_conv_bn(self, "bu_1", t1 + self.bottom_up(t0))
    a = self.fuse1_attention(_gap(td0 + td1 + bu0 + bu1))
    td = _apply_conv_bn(self, "fuse1_td", torch.cat([_scale(a, 0, td0), _scale(a, 1, td1)], 1))
    bu = _apply_conv_bn(self, "fuse1_bu", torch.cat([_scale(a, 2, bu0), _scale(a, 3, bu1)], 1))
    a = self.fuse2_attention(_gap(td + bu))
    out = _apply_conv_bn(self, "fuse2", torch.cat([_scale(a, 0, td), _scale(a, 1, bu)], 1))
    return _gap(out)


class AuxHead(nn.Module):
  """x3 [B, C3, T, H, W] -> logits: Conv3d (1,3,3)/(1,2,2) + BN + ReLU -> GAP -> fc (the
  dropout of SPEC is left to the caller: these tests compare deterministic outputs)."""

  def __init__(self, c3, c4, num_classes, eps=1e-5):
    super().__init__()
    _conv_bn(self, "conv", c3, c4, (1, 3, 3), (1, 2, 2), eps=eps)
    self.fc = nn.Linear(c4, num_classes)

  def forward(self, x3):
    return self.fc(_gap(_apply_conv_bn(self, "conv", x3)))


class _Reduce(nn.Module):
  def __init__(self, cin, cout, eps):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, 1, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class TCP(nn.Module):
  """TCPNet's pooling without attention: x4 [B, C, T, h, w] -> per-frame reductions
  C -> inner -> dim -> covariance over all T*h*w positions -> iSQRT(3) -> triu."""

  def __init__(self, cin, inner=256, dim=128, num_iters=3, eps=1e-5):
    super().__init__()
    self.reduce1, self.reduce2 = _Reduce(cin, inner, eps), _Reduce(inner, dim, eps)
    self.num_iters = num_iters

  def forward(self, x4):
    b, c, t, h, w = x4.shape
    y = self.reduce2(self.reduce1(x4.transpose(1, 2).reshape(b * t, c, h, w)))
    y = y.reshape(b, t, -1, h, w).transpose(1, 2).reshape(b, y.shape[1], t * h * w)
    return torch_release.meta_layer(y, self.num_iters)


class VideoResNet(nn.Module):
  """TSN ResNet (Bottleneck blocks, torchvision layout) on clips [B, 3, T, H, W] with
  optional CPTM after layer1 and layer3 and head 'cstp' (+ aux_head) or 'tcp' (layer4
  stride 1, reductions to `tcp_dims`). forward returns logits, and in training mode
  (logits, aux logits) for 'cstp'."""

  def __init__(self, stage_sizes, num_segments, num_classes, width=64, head="cstp",
               cptm=False, fusion="competitive", tcp_dims=(256, 128)):
    super().__init__()
    self.head_name, self.cptm = head, cptm
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    cin = width
    for i, n in enumerate(stage_sizes):
      stride = 1 if i == 0 or (i == 3 and head == "tcp") else 2
      blocks = []
      for j in range(n):
        blocks.append(Block(cin, width * 2**i, stride if j == 0 else 1, True, False, 1e-5,
                            1e-5))
        cin = width * 2**i * 4
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    if cptm:
      self.cptm1, self.cptm3 = CPTM(width * 4, fusion), CPTM(width * 16, fusion)
    if head == "cstp":
      self.head = CSTP(cin // 2, cin, num_segments)
      self.aux_head = AuxHead(cin // 2, cin, num_classes)
    else:
      self.head = TCP(cin, *tcp_dims)
    dim = tcp_dims[-1]
    self.fc = nn.Linear(cin if head == "cstp" else dim * (dim + 1) // 2, num_classes)

  def forward(self, x):
    b, c, t, h, w = x.shape
    unfold = lambda y: y.reshape(b, t, *y.shape[1:]).transpose(1, 2)
    fold = lambda y: y.transpose(1, 2).reshape(b * t, *y.shape[1:2], *y.shape[3:])
    y = F.max_pool2d(F.relu(self.bn1(self.conv1(fold(x)))), 3, 2, padding=1)
    for i in range(1, 5):
      y = getattr(self, f"layer{i}")(y)
      if self.cptm and i in (1, 3):
        y = fold(getattr(self, f"cptm{i}")(unfold(y)))
      if i == 3:
        res4 = unfold(y)
    res5 = unfold(y)
    if self.head_name == "cstp":
      logits = self.fc(self.head(res4, res5))
    else:
      logits = self.fc(self.head(res5))
    if self.training and self.head_name == "cstp":
      return logits, self.aux_head(res4)
    return logits


# --------------------------------------------------------------------- weights to Flax

_LEAVES = {("params", "kernel"): "weight", ("params", "scale"): "weight",
           ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
           ("batch_stats", "var"): "running_var"}


def torch_name(path: tuple[str, ...]) -> str:
  """Our variable path ('params', 'layer1_0', 'downsample_conv', 'kernel') -> the port's
  state-dict name ('layer1.0.downsample.0.weight')."""
  collection, *modules, leaf = path
  name = ".".join(modules)
  if re.match(r"layer\d+_\d+\.", name):
    name = re.sub(r"^(layer\d+)_(\d+)", r"\1.\2", name)
    name = name.replace("downsample_conv", "downsample.0").replace("downsample_bn",
                                                                   "downsample.1")
  return f"{name}.{_LEAVES[collection, leaf]}"


def to_flax(module: nn.Module, target: dict) -> dict:
  """The port's weights as our variables shaped like `target` (a tree of arrays or
  ShapeDtypeStructs with paths `(collection, ..., leaf)`): conv [O, I/g, *k] -> [*k, I/g, O]
  (reshaped to ours, e.g. a 1x1x1 Conv3d onto a 1x1 kernel), Linear [out, in] -> [in, out].
  Every tensor of the port must be used."""
  state = {k: v.detach().numpy() for k, v in module.state_dict().items()
           if not k.endswith("num_batches_tracked")}
  flat = flax.traverse_util.flatten_dict(dict(target))
  out, used = {}, set()
  for path, leaf in flat.items():
    name = torch_name(path)
    t = state[name]
    if t.ndim > 2:
      t = t.transpose(*range(2, t.ndim), 1, 0)
    elif t.ndim == 2:
      t = t.T
    out[path] = np.asarray(t, np.float32).reshape(leaf.shape)
    used.add(name)
  unused = sorted(set(state) - used)
  if unused:
    raise ValueError(f"port tensors without a Flax counterpart: {unused}")
  return flax.traverse_util.unflatten_dict(out)


def num_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())
