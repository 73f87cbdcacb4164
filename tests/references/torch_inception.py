"""PyTorch port of fast-MPN-COV's Inception-v3, written from the release's
src/network/inception.py (torchvision's old Inception3), src/network/base.py
(`_reconstruct_inception`) and model_init.py (`Newmodel`), not from ours.

- `Inception3`: torchvision's module names (Conv2d_1a_3x3.conv / .bn, ..., Mixed_7c,
  fc) without AuxLogits, run as the release's Basemodel runs it: the features, then
  'gap' (GAvP: spatial mean) or 'isqrt' (MPNCOV: the optional reduction `layer_reduce`,
  1x1 conv without bias, `layer_reduce_bn` (eps 1e-5), ReLU, then Covpool -> Sqrtm(5) ->
  Triuvec, `torch_release.meta_layer`), then fc. No dropout and no transform_input: the
  Basemodel never calls Inception3.forward. `dim` is the reduction (256 from scratch, None
  with --pretrained), an argument for small test models.
- `basemodel(port)`: the same network in the release's own module structure, sharing the
  port's modules, so its state_dict keys are the release's (features.{0..17}...,
  representation.conv_dr_block.{0,1}..., classifier...).
- `InceptionAux`: the release's auxiliary classifier, for counting what the Basemodel drops.
"""
import torch
import torch.nn.functional as F
from torch import nn

from references import torch_release, torch_resnet


class BasicConv2d(nn.Module):
  """Conv2d (no bias) -> BatchNorm2d(eps 0.001) -> ReLU."""

  def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


def _pool3x3(x):
  return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1)  # count_include_pad=True


class InceptionA(nn.Module):
  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 64, 1)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool_features, 1)

  def forward(self, x):
    return torch.cat([
        self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(_pool3x3(x))], 1)


class InceptionB(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

  def forward(self, x):
    return torch.cat([
        self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 192, 1)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, 192, 1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for i in range(1, 6):
      bd = getattr(self, f"branch7x7dbl_{i}")(bd)
    return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_pool3x3(x))], 1)


class InceptionD(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(cin, 192, 1)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

  def forward(self, x):
    b7 = x
    for i in range(1, 5):
      b7 = getattr(self, f"branch7x7x3_{i}")(b7)
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7,
                      F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
  def __init__(self, cin):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 320, 1)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, 192, 1)

  def forward(self, x):
    b3 = self.branch3x3_1(x)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    return torch.cat([
        self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
        self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd), self.branch_pool(_pool3x3(x))], 1)


class InceptionAux(nn.Module):
  """The release's auxiliary classifier on Mixed_6e (17x17x768): avg-pool 5/3, 1x1 conv to
  128, 5x5 conv to 768, fc."""

  def __init__(self, cin, num_classes):
    super().__init__()
    self.conv0 = BasicConv2d(cin, 128, 1)
    self.conv1 = BasicConv2d(128, 768, 5)
    self.fc = nn.Linear(768, num_classes)

  def forward(self, x):
    x = self.conv1(self.conv0(F.avg_pool2d(x, kernel_size=5, stride=3)))
    return self.fc(x.flatten(1))


STEM = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3")
MIXED = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
         "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")


class Inception3(nn.Module):
  """`[B, 3, H, W]` -> logits; head 'gap' or 'isqrt' (see the module docstring)."""

  def __init__(self, head="gap", dim=None, num_classes=1000):
    super().__init__()
    self.head, self.dim = head, dim
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
    self.Mixed_5b = InceptionA(192, 32)
    self.Mixed_5c = InceptionA(256, 64)
    self.Mixed_5d = InceptionA(288, 64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = InceptionC(768, 128)
    self.Mixed_6c = InceptionC(768, 160)
    self.Mixed_6d = InceptionC(768, 160)
    self.Mixed_6e = InceptionC(768, 192)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = InceptionE(1280)
    self.Mixed_7c = InceptionE(2048)
    out = 2048
    if head == "isqrt":
      if dim:
        self.layer_reduce = nn.Conv2d(2048, dim, 1, bias=False)
        self.layer_reduce_bn = nn.BatchNorm2d(dim)
        out = dim
      out = out * (out + 1) // 2
    self.fc = nn.Linear(out, num_classes)

  def features(self, x):
    """The release's `features` Sequential: the stem with its two max-pools, the Mixed
    blocks."""
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
    for name in MIXED:
      x = getattr(self, name)(x)
    return x

  def forward(self, x):
    x = self.features(x)
    if self.head == "gap":  # GAvP's adaptive pooling, so that `basemodel` agrees bitwise
      return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
    if self.dim:
      x = F.relu(self.layer_reduce_bn(self.layer_reduce(x)))
    return self.fc(torch_release.meta_layer(x.flatten(2), 5))


def basemodel(port: Inception3) -> torch_resnet.Basemodel:
  """`port` in the release's structure, sharing its modules: features = the 18-slot
  Sequential (slots 3 and 6 the parameter-free max-pools: Mixed_5b is features.7, Mixed_7c
  features.17), representation = GAvP or MPNCOV (conv_dr_block.{0,1} = layer_reduce,
  layer_reduce_bn), classifier = fc."""
  stem = [getattr(port, name) for name in STEM]
  features = nn.Sequential(*stem[:3], nn.MaxPool2d(kernel_size=3, stride=2), *stem[3:],
                           nn.MaxPool2d(kernel_size=3, stride=2),
                           *(getattr(port, name) for name in MIXED))
  return torch_resnet.Basemodel(features, torch_resnet.representation(port, 2048), port.fc)


def num_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())
