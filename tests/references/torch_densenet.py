"""PyTorch port of fast-MPN-COV's DenseNets, written from the release's
src/network/densenet.py (torchvision's DenseNet-BC) and its Basemodel / Newmodel
(src/network/base.py `_reconstruct_densenet`, model_init.py), not from ours.

`DenseNet` keeps torchvision's module names, our converter's canonical ones:
  features.{conv0 7x7/2, norm0, relu0, pool0 max 3x3/2 pad 1,
            denseblock{b}.denselayer{l}.{norm1, relu1, conv1 1x1, norm2, relu2, conv2 3x3},
            transition{b}.{norm, relu, conv 1x1, pool avg 2x2/2}, norm5},
  then (the Basemodel's forward) the release's last ReLU and
    'gap'    spatial mean -> classifier;
    'isqrt'  [layer_reduce (1x1, no bias), layer_reduce_bn, ReLU] -> Covpool -> Sqrtm(5) ->
             Triuvec (`torch_release.meta_layer`) -> classifier.
A dense layer concatenates its input and its `growth_rate` new channels; a transition
halves the channels. `basemodel(port)` rebuilds the same network as the release's Newmodel
holds it (features + last_relu, representation, classifier), whose state_dict keys are the
release's. Sizes the release hard-codes (the reduction's 256) are arguments, for small test
models.
"""
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from references import torch_release, torch_resnet


def _bn_relu_conv(suffix, cin, cout, kernel):
  """norm{suffix}, relu{suffix}, conv{suffix} (bias-free, stride 1, padded to keep the size)."""
  return [(f"norm{suffix}", nn.BatchNorm2d(cin)), (f"relu{suffix}", nn.ReLU(inplace=True)),
          (f"conv{suffix}", nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False))]


class DenseLayer(nn.Sequential):
  """The release's _DenseLayer (drop_rate 0): `[B, C, H, W]` -> `[B, C + growth, H, W]`."""

  def __init__(self, cin, growth_rate, bn_size):
    width = bn_size * growth_rate
    super().__init__(OrderedDict(_bn_relu_conv("1", cin, width, 1)
                                 + _bn_relu_conv("2", width, growth_rate, 3)))

  def forward(self, x):
    return torch.cat([x, super().forward(x)], 1)


class Transition(nn.Sequential):
  """The release's _Transition: `[B, C, H, W]` -> `[B, cout, H / 2, W / 2]`."""

  def __init__(self, cin, cout):
    super().__init__(OrderedDict(_bn_relu_conv("", cin, cout, 1)
                                 + [("pool", nn.AvgPool2d(kernel_size=2, stride=2))]))


class DenseNet(nn.Module):
  """torchvision's DenseNet-BC with the release's Basemodel forward. head: 'gap' or
  'isqrt'; `dim`: the reduction's channels (None: no reduction, as with --pretrained)."""

  def __init__(self, head="gap", dim=None, num_classes=1000, growth_rate=32,
               block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4):
    super().__init__()
    self.head, self.dim = head, dim
    c = num_init_features
    parts = [("conv0", nn.Conv2d(3, c, 7, 2, 3, bias=False)), ("norm0", nn.BatchNorm2d(c)),
             ("relu0", nn.ReLU(inplace=True)), ("pool0", nn.MaxPool2d(3, 2, 1))]
    for b, num_layers in enumerate(block_config, start=1):
      block = nn.Sequential(OrderedDict(
          (f"denselayer{i + 1}", DenseLayer(c + i * growth_rate, growth_rate, bn_size))
          for i in range(num_layers)))
      parts.append((f"denseblock{b}", block))
      c += num_layers * growth_rate
      if b < len(block_config):
        parts.append((f"transition{b}", Transition(c, c // 2)))
        c //= 2
    parts.append(("norm5", nn.BatchNorm2d(c)))
    self.features = nn.Sequential(OrderedDict(parts))
    if head == "isqrt":
      if dim:
        self.layer_reduce = nn.Conv2d(c, dim, 1, bias=False)
        self.layer_reduce_bn = nn.BatchNorm2d(dim)
        c = dim
      c = c * (c + 1) // 2
    elif head != "gap":
      raise ValueError(f"the release's DenseNets pool with GAvP or MPNCOV, not {head!r}")
    self.classifier = nn.Linear(c, num_classes)

  def forward(self, x):
    x = F.relu(self.features(x))  # the release's last_relu
    if self.head == "gap":
      return self.classifier(x.mean(dim=(2, 3)))
    if self.dim:
      x = F.relu(self.layer_reduce_bn(self.layer_reduce(x)))
    return self.classifier(torch_release.meta_layer(x.flatten(2), 5))


def basemodel(port: DenseNet) -> torch_resnet.Basemodel:
  """`port` as fast-MPN-COV's Newmodel holds a densenet, sharing the port's modules:
  features = the port's features plus `last_relu` (`_reconstruct_densenet`),
  representation = GAvP (adaptive average pooling) or MPNCOV(input_dim=channels,
  dimension_reduction=dim) whose `conv_dr_block` holds layer_reduce and layer_reduce_bn,
  classifier = the port's."""
  features = nn.Sequential(OrderedDict([*port.features.named_children(),
                                        ("last_relu", nn.ReLU(inplace=True))]))
  representation = torch_resnet.representation(port, port.features.norm5.num_features)
  return torch_resnet.Basemodel(features, representation, port.classifier)


def num_params(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())
