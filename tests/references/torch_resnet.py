"""PyTorch ports of the releases' CNNs with their GCP heads, written from the releases' code
(not from ours), keeping the releases' module names so that state_dict keys are theirs,
and savers that write files as the releases' training scripts do.

- `ResNet`: torchvision v1.5 layout and names (conv1, bn1, relu, maxpool, layer{i}.{j}...,
  downsample.{0,1}) with the head of
    'gap'      torchvision's ResNet (avgpool, fc);
    'isqrt'    fast-MPN-COV's MPNCOVResNet = GCP_Optimization's ResNet_MPNCOV: layer4 at
               stride 1, layer_reduce (1x1 conv, no bias), layer_reduce_bn,
               layer_reduce_relu, Covpool -> Sqrtm(5) -> Triuvec (the release port), fc;
    'cov'      the same without the square root;
    'dropcov'  DropCov's ResNet_ACD (CNNs/models/ResNet_ACD.py): eca_layer.conv (Conv1d, 3
               taps, training only) and, at evaluation, covariance -> triu -> fc.
  Children are in the releases' order, which fast-MPN-COV's `Basemodel` indexes.
  `variant='mindspore'` reproduces the MindSpore releases (SPEC §6): TF SAME padding in
  ResNet-50/101 (extra row/column at the bottom/right of strided convs and the max-pool),
  BatchNorm eps 1e-4, except 1e-5 for the ResNet-18/34 stem and downsample BNs.
- `Basemodel`: fast-MPN-COV's src/network/base.py + model_init.py `Newmodel` (features,
  representation, classifier); `fastmpn_resnet` builds it around an mpncovresnet (MPNCOV,
  src/representation/MPNCOV.py) or a torchvision ResNet (GAvP).
- `MobileNetV2`: GCP_Optimization's src/models/MobileNetV2.py ('gap') and
  MobileNetV2_MPNCOV.py ('isqrt': dimension_reduction with ReLU6). Channels are
  `int(c * width_mult)` as there; torchvision rounds to multiples of 8, which agrees at
  width_mult 1.0 only.
Sizes the releases hard-code (the reduction's 256) are arguments, for tiny test models.
(fast-MPN-COV's VGGs and AlexNet: `torch_vgg`.)
"""
import argparse

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


class ECA(nn.Module):
  """DropCov's eca_layer (CNNs/representation/eca_layer.py): its parameters only (the
  layer runs in training alone)."""

  def __init__(self, k_size=3):
    super().__init__()
    self.conv = nn.Conv1d(1, 1, kernel_size=k_size, padding=(k_size - 1) // 2, bias=False)


def covariance_triu(x: torch.Tensor) -> torch.Tensor:
  """`[B, C, H, W]` -> the upper triangle of the biased covariance (DropCov's Covariance
  with remove_mean, then Triuvec; equal to the release's Covpool)."""
  return torch_release.Triuvec.apply(torch_release.Covpool.apply(x.flatten(2)))


class ResNet(nn.Module):
  """`[B, 3, H, W]` -> logits. head: 'gap', 'isqrt', 'cov' or 'dropcov' (see the module
  docstring); `dim`: the reduction block's channels."""

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
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
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
      self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
      self.fc = nn.Linear(cin, num_classes)
      return
    if head == "dropcov":
      self.eca_layer = ECA()
    self.layer_reduce = nn.Conv2d(cin, dim, 1, bias=False)
    self.layer_reduce_bn = nn.BatchNorm2d(dim, eps)
    self.layer_reduce_relu = nn.ReLU(inplace=True)
    self.fc = nn.Linear(dim * (dim + 1) // 2, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    if self.same:  # after a ReLU, zero padding equals SAME's -inf padding
      x = F.max_pool2d(F.pad(x, [0, 1, 0, 1] if x.shape[2] % 2 == 0 else [1, 1, 1, 1]), 3, 2)
    else:
      x = self.maxpool(x)
    for i in range(1, 5):
      x = getattr(self, f"layer{i}")(x)
    if self.head == "gap":
      return self.fc(x.mean(dim=(2, 3)))
    x = F.relu(self.layer_reduce_bn(self.layer_reduce(x)))
    if self.head == "isqrt":
      return self.fc(torch_release.meta_layer(x.flatten(2), 5))
    return self.fc(covariance_triu(x))


class MPNCOV(nn.Module):
  """fast-MPN-COV's MPNCOV representation (iterNum 5, is_sqrt, is_vec): the optional
  reduction block `conv_dr_block` (conv, BN, ReLU), Covpool -> Sqrtm -> Triuvec."""

  def __init__(self, input_dim, dimension_reduction=None):
    super().__init__()
    self.dr = dimension_reduction
    if dimension_reduction:
      self.conv_dr_block = nn.Sequential(
          nn.Conv2d(input_dim, dimension_reduction, kernel_size=1, stride=1, bias=False),
          nn.BatchNorm2d(dimension_reduction), nn.ReLU(inplace=True))

  def forward(self, x):
    if self.dr:
      x = self.conv_dr_block(x)
    return torch_release.meta_layer(x.flatten(2), 5)


class BCNN(nn.Module):
  """fast-MPN-COV's BCNN representation (src/representation/BCNN.py, is_vec): X X^T / (h w)
  without centring, sign(z) sqrt(|z| + 1e-8), flattened to C x C, L2-normalised."""

  def forward(self, x):
    b, c, h, w = x.shape
    x = x.reshape(b, c, h * w)
    x = x.bmm(x.transpose(1, 2)) / (h * w)
    x = torch.sign(x) * torch.sqrt(x.abs() + 1e-8)
    return F.normalize(x.reshape(b, -1))


class Basemodel(nn.Module):
  """fast-MPN-COV's Basemodel / Newmodel forward (src/network/base.py, model_init.py):
  features -> representation -> view(B, -1) -> classifier, the three parts the release
  rebuilds every backbone into (`fastmpn_resnet`, `torch_vgg`, `torch_densenet`,
  `torch_inception`)."""

  def __init__(self, features: nn.Module, representation: nn.Module, classifier: nn.Module):
    super().__init__()
    self.features, self.representation, self.classifier = features, representation, classifier

  def forward(self, x):
    x = self.representation(self.features(x))
    return self.classifier(x.view(x.size(0), -1))


def representation(port: nn.Module, channels: int) -> nn.Module:
  """The Basemodel's representation of a port with head 'gap' (GAvP: adaptive average
  pooling), 'bcnn' (`BCNN`) or 'isqrt' (MPNCOV on `channels`, its `conv_dr_block` holding the port's
  `layer_reduce` and `layer_reduce_bn` if it has them)."""
  if port.head == "gap":
    return nn.AdaptiveAvgPool2d((1, 1))
  if port.head == "bcnn":
    return BCNN()
  reduce = getattr(port, "layer_reduce", None)
  mpncov = MPNCOV(channels, reduce and reduce.out_channels)
  if reduce is not None:
    mpncov.conv_dr_block[0], mpncov.conv_dr_block[1] = reduce, port.layer_reduce_bn
  return mpncov


def fastmpn_resnet(base: ResNet, pretrained: bool = False) -> Basemodel:
  """The Basemodel around `base`, a `ResNet` port (head 'isqrt' for mpncovresnet, 'gap' for
  torchvision's ResNet with GAvP), sharing its modules:
    pretrained=False (training from scratch): features = conv1 ... layer4, representation
      = MPNCOV(dimension_reduction=d) holding the reduction block, classifier = fc;
    pretrained=True (fine-tuning an mpncovresnet): features = every child but fc (the
      reduction block included), representation = MPNCOV without reduction.
  """
  children = list(base.children())
  if base.head == "gap":
    return Basemodel(nn.Sequential(*children[:-2]), base.avgpool, base.fc)  # GAvP
  if pretrained:
    return Basemodel(nn.Sequential(*children[:-1]), MPNCOV(base.layer_reduce.out_channels),
                     base.fc)
  return Basemodel(nn.Sequential(*children[:8]),
                   representation(base, base.layer_reduce.in_channels), base.fc)


class ConvBNReLU(nn.Sequential):
  def __init__(self, cin, cout, kernel_size=3, stride=1, groups=1):
    super().__init__(nn.Conv2d(cin, cout, kernel_size, stride, (kernel_size - 1) // 2,
                               groups=groups, bias=False),
                     nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
  def __init__(self, inp, oup, stride, expand_ratio):
    super().__init__()
    hidden = int(round(inp * expand_ratio))
    self.use_res_connect = stride == 1 and inp == oup
    layers = [ConvBNReLU(inp, hidden, kernel_size=1)] if expand_ratio != 1 else []
    layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
               nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
    self.conv = nn.Sequential(*layers)

  def forward(self, x):
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
  """GCP_Optimization's MobileNetV2 (head 'gap') / MobileNetV2_MPNCOV (head 'isqrt',
  `dimension_reduction` to `dim` with ReLU6)."""

  SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))

  def __init__(self, head="gap", dim=256, num_classes=1000, width_mult=1.0):
    super().__init__()
    self.head = head
    cin, last = int(32 * width_mult), int(1280 * max(1.0, width_mult))
    features = [ConvBNReLU(3, cin, stride=2)]
    for t, c, n, s in self.SETTING:
      for i in range(n):
        features.append(InvertedResidual(cin, int(c * width_mult), s if i == 0 else 1, t))
        cin = int(c * width_mult)
    features.append(ConvBNReLU(cin, last, kernel_size=1))
    self.features = nn.Sequential(*features)
    if head == "isqrt":
      self.dimension_reduction = nn.Sequential(
          nn.Conv2d(last, dim, kernel_size=1, stride=1, padding=0, bias=False),
          nn.BatchNorm2d(dim), nn.ReLU6(inplace=True))
      last = dim * (dim + 1) // 2
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

  def forward(self, x):
    x = self.features(x)
    if self.head == "gap":
      return self.classifier(x.mean(2).mean(2))
    x = torch_release.meta_layer(self.dimension_reduction(x).flatten(2), 5)
    return self.classifier(x.view(x.size(0), -1))


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights and non-trivial BatchNorm statistics, so every tensor matters."""
  gen = torch.Generator().manual_seed(seed)
  uniform = lambda t, low, high: t.copy_(low + (high - low) * torch.rand(t.shape,
                                                                          generator=gen))
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        uniform(module.weight, 0.8, 1.2)
        module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
        module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
        uniform(module.running_var, 0.5, 1.5)
      elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        w = module.weight  # fan-in scaling keeps activations O(1)
        w.copy_(torch.randn(w.shape, generator=gen) * (2.0 / w[0].numel()) ** 0.5)
        if module.bias is not None:
          module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=gen))
  return model.eval()


# ------------------------------------------------------------ saved as the releases save

def training_checkpoint(model: nn.Module, arch: str, wrap: str = "model") -> dict:
  """What the releases' main.py saves every epoch, under DataParallel: `wrap='features'`
  (fast-MPN-COV; GCP_Optimization and DropCov for VGG / AlexNet) wraps `model.features`,
  `wrap='model'` (GCP_Optimization, DropCov) the whole model. The state dict comes from the
  wrapped model; `model` itself is left unwrapped."""
  features = model.features if wrap == "features" else None
  if features is not None:
    model.features = nn.DataParallel(features)
  wrapped = nn.DataParallel(model) if wrap == "model" else model
  state = wrapped.state_dict()
  if features is not None:
    model.features = features
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  # fast-MPN-COV names the metric best_prec1, the others best_acc1; both are tensors.
  return {"epoch": 65, "arch": arch, "state_dict": state, "best_prec1": torch.tensor(77.9),
          "best_acc1": torch.tensor(77.9), "optimizer": optimizer.state_dict()}


def timm_checkpoint(model: nn.Module, ema: nn.Module | None, model_name: str) -> dict:
  """What timm's CheckpointSaver._save writes (timm 0.4.12 and 0.6, unchanged; Moment
  Probing, DropCov's transformers): unwrapped state dicts, the optimizer, the native AMP
  scaler, and the parsed command line as an argparse.Namespace."""
  optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
  args = argparse.Namespace(model=model_name, model_ema=ema is not None,
                            model_ema_decay=0.99996, lr=1e-3, mean=None, epochs=300,
                            prefetcher=True, device="cuda:0", output="output/train")
  saved = {"epoch": 299, "arch": model_name, "state_dict": model.state_dict(),
           "optimizer": optimizer.state_dict(), "version": 2, "args": args,
           "amp_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                          "growth_interval": 2000, "_growth_tracker": 17}}
  if ema is not None:
    saved["state_dict_ema"] = ema.state_dict()
  saved["metric"] = 82.4
  return saved
