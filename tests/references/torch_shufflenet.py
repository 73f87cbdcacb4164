"""PyTorch port of GCP_Optimization's ShuffleNetV2 networks, written from the release's
src/models/ShuffleNetV2.py ('gap') and ShuffleNetV2_MPNCOV.py ('isqrt'), not from ours,
with their module names, so that state_dict keys are the release's (the GAP network's are
torchvision's shufflenet_v2_x*):

  conv1.{0 conv 3x3/2, 1 BN, 2 ReLU}, maxpool, stage{2,3,4}.{unit}.branch1 (stride-2 units:
  0 depthwise 3x3, 1 BN, 2 conv 1x1, 3 BN, 4 ReLU) and .branch2 (0 conv 1x1, 1 BN, 2 ReLU,
  3 depthwise 3x3, 4 BN, 5 conv 1x1, 6 BN, 7 ReLU), conv5.{0 conv 1x1, 1 BN, 2 ReLU},
  then 'gap': spatial mean -> fc; 'isqrt': dimension_reduction.{0 conv 1x1, 1 BN, 2 ReLU6}
  -> Covpool -> Sqrtm(5) -> Triuvec (`torch_release.meta_layer`) -> fc.

A stride-1 unit splits its channels in halves (`chunk`) and runs branch2 on the second; a
stride-2 unit runs both branches on the whole input; both concatenate and shuffle the
channels in 2 groups. Sizes the release hard-codes (the reduction's 256, fc's 32896 inputs)
are arguments, for small test models.
"""
import torch
from torch import nn

from references import torch_release

REPEATS = (4, 8, 4)
# The release's shufflenet_v2[_mpncov]_x0_5 ... x2_0: stem, stage2..4, conv5 channels.
CHANNELS = {0.5: (24, 48, 96, 192, 1024), 1.0: (24, 116, 232, 464, 1024),
            1.5: (24, 176, 352, 704, 1024), 2.0: (24, 244, 488, 976, 2048)}


def shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
  """`[B, C, H, W]`: channels viewed as `[groups, C / groups]`, transposed, flattened."""
  b, c, h, w = x.shape
  return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _bn_relu(channels):
  return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


def _depthwise(channels, stride):
  return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)


class Unit(nn.Module):
  """The release's InvertedResidual (ShuffleNetV2 unit)."""

  def __init__(self, cin, cout, stride):
    super().__init__()
    half = cout // 2
    self.stride = stride
    if stride == 1:
      assert cin == cout, (cin, cout)
    else:
      self.branch1 = nn.Sequential(_depthwise(cin, stride), nn.BatchNorm2d(cin),
                                   nn.Conv2d(cin, half, 1, bias=False), *_bn_relu(half))
    self.branch2 = nn.Sequential(
        nn.Conv2d(cin if stride > 1 else half, half, 1, bias=False), *_bn_relu(half),
        _depthwise(half, stride), nn.BatchNorm2d(half),
        nn.Conv2d(half, half, 1, bias=False), *_bn_relu(half))

  def forward(self, x):
    if self.stride == 1:
      kept, x = x.chunk(2, dim=1)
    else:
      kept = self.branch1(x)
    return shuffle(torch.cat([kept, self.branch2(x)], dim=1))


class ShuffleNetV2(nn.Module):
  """The release's ShuffleNetV2 (head 'gap') or ShuffleNetV2_MPNCOV (head 'isqrt', reduction
  to `dim` with ReLU6); `width_mult` picks a row of `CHANNELS`."""

  def __init__(self, head="isqrt", dim=256, num_classes=1000, width_mult=1.0):
    super().__init__()
    self.head = head
    stem, *stages, last = CHANNELS[width_mult]
    self.conv1 = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), *_bn_relu(stem))
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    cin = stem
    for i, (repeats, cout) in enumerate(zip(REPEATS, stages)):
      units = [Unit(cin, cout, 2)] + [Unit(cout, cout, 1) for _ in range(repeats - 1)]
      setattr(self, f"stage{i + 2}", nn.Sequential(*units))
      cin = cout
    self.conv5 = nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), *_bn_relu(last))
    if head == "isqrt":
      self.dimension_reduction = nn.Sequential(nn.Conv2d(last, dim, 1, bias=False),
                                               nn.BatchNorm2d(dim), nn.ReLU6(inplace=True))
      last = dim * (dim + 1) // 2
    self.fc = nn.Linear(last, num_classes)

  def forward(self, x):
    x = self.maxpool(self.conv1(x))
    x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
    if self.head == "gap":
      return self.fc(x.mean(dim=(2, 3)))
    x = torch_release.meta_layer(self.dimension_reduction(x).flatten(2), 5)
    return self.fc(x.view(x.size(0), -1))


def num_params(model: nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
