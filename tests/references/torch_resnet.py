"""PyTorch ResNets with the releases' GCP head, written from SPEC §2 and §6 (not from ours).

torchvision v1.5 layout and names (conv1, bn1, layer{i}.{j}.conv1 ..., downsample.{0,1},
fc) plus mpncovresnet's head: layer_reduce (1x1 conv, no bias), layer_reduce_bn, ReLU,
Covpool -> Sqrtm(5) -> Triuvec from the release port, fc. With a GCP head layer4 keeps
stride 1. `variant='mindspore'` reproduces the MindSpore releases (SPEC §6): TF SAME
padding in ResNet-50/101 (extra row/column at the bottom/right of strided convs and the
max-pool), BatchNorm eps 1e-4, except 1e-5 for the ResNet-18/34 stem and downsample BNs.
"""
import torch
import torch.nn.functional as F
from torch import nn

from references import torch_release

DEPTHS = {"resnet18": ((2, 2, 2, 2), False), "resnet34": ((3, 4, 6, 3), False),
          "resnet50": ((3, 4, 6, 3), True), "resnet101": ((3, 4, 23, 3), True)}


class SameConv(nn.Conv2d):
  """Conv2d with TF SAME padding (the extra pixel after, not before)."""

  def forward(self, x):
    k, s = self.kernel_size[0], self.stride[0]
    pads = []
    for size in (x.shape[3], x.shape[2]):  # F.pad takes the last axis first
      total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
      pads += [total // 2, total - total // 2]
    return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride)


def _conv(cin, cout, k, stride, same):
  if same:
    return SameConv(cin, cout, k, stride, bias=False)
  return nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False)


class Block(nn.Module):
  def __init__(self, cin, planes, stride, bottleneck, same, eps, edge_eps):
    super().__init__()
    cout = planes * (4 if bottleneck else 1)
    self.bottleneck = bottleneck
    if bottleneck:
      self.conv1, self.bn1 = _conv(cin, planes, 1, 1, same), nn.BatchNorm2d(planes, eps)
      self.conv2, self.bn2 = _conv(planes, planes, 3, stride, same), nn.BatchNorm2d(planes, eps)
      self.conv3, self.bn3 = _conv(planes, cout, 1, 1, same), nn.BatchNorm2d(cout, eps)
    else:
      self.conv1, self.bn1 = _conv(cin, planes, 3, stride, same), nn.BatchNorm2d(planes, eps)
      self.conv2, self.bn2 = _conv(planes, planes, 3, 1, same), nn.BatchNorm2d(planes, eps)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(_conv(cin, cout, 1, stride, same),
                                      nn.BatchNorm2d(cout, edge_eps))

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    if self.bottleneck:
      y = F.relu(self.bn2(self.conv2(y)))
      y = self.bn3(self.conv3(y))
    else:
      y = self.bn2(self.conv2(y))
    return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
  """`[B, 3, H, W]` -> logits. head: 'gap' or 'isqrt' (with reduction to `dim`) or 'cov'
  (DropCov at evaluation: covariance -> triu -> fc)."""

  def __init__(self, arch, head="gap", dim=256, num_classes=1000, variant="pytorch"):
    super().__init__()
    stages, bottleneck = DEPTHS[arch]
    mindspore = variant == "mindspore"
    self.same = mindspore and bottleneck
    eps = 1e-4 if mindspore else 1e-5
    edge_eps = 1e-4 if mindspore and bottleneck else 1e-5
    self.head = head
    self.conv1 = _conv(3, 64, 7, 2, self.same)
    self.bn1 = nn.BatchNorm2d(64, edge_eps)
    cin = 64
    for i, n in enumerate(stages):
      stride = 1 if i == 0 or (i == 3 and head != "gap") else 2
      blocks = []
      for j in range(n):
        blocks.append(Block(cin, 64 * 2**i, stride if j == 0 else 1, bottleneck, self.same,
                            eps, edge_eps))
        cin = 64 * 2**i * (4 if bottleneck else 1)
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    if head == "gap":
      self.fc = nn.Linear(cin, num_classes)
    else:
      self.layer_reduce = nn.Conv2d(cin, dim, 1, bias=False)
      self.layer_reduce_bn = nn.BatchNorm2d(dim, eps)
      self.fc = nn.Linear(dim * (dim + 1) // 2, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    if self.same:  # after a ReLU, zero padding equals SAME's -inf padding
      x = F.max_pool2d(F.pad(x, [0, 1, 0, 1] if x.shape[2] % 2 == 0 else [1, 1, 1, 1]), 3, 2)
    else:
      x = F.max_pool2d(x, 3, 2, padding=1)
    for i in range(1, 5):
      x = getattr(self, f"layer{i}")(x)
    if self.head == "gap":
      return self.fc(x.mean(dim=(2, 3)))
    x = F.relu(self.layer_reduce_bn(self.layer_reduce(x)))
    x = x.flatten(2)  # [B, d, M]
    if self.head == "isqrt":
      return self.fc(torch_release.meta_layer(x, 5))
    cov = torch_release.Covpool.apply(x)
    return self.fc(torch_release.Triuvec.apply(cov))


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights and non-trivial BatchNorm statistics, so every tensor matters."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in model.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var"):
        t.copy_(0.5 + torch.rand(t.shape, generator=gen))
      elif name.endswith(("running_mean", "bias")):
        t.copy_(0.1 * torch.randn(t.shape, generator=gen))
      elif name.endswith("weight") and ("bn" in name or name.endswith("downsample.1.weight")):
        t.copy_(0.8 + 0.4 * torch.rand(t.shape, generator=gen))
      else:  # conv / dense kernels: fan-in scaling keeps activations O(1)
        fan_in = t[0].numel()
        t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
  return model.eval()
