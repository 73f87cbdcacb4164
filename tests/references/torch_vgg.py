"""PyTorch port of fast-MPN-COV's VGGs and AlexNet (src/network/vgg.py, alexnet.py) as its
Basemodel and Newmodel (src/network/base.py, model_init.py) run them, written from the
release's code with its module names, so that state_dict keys are the release's:

  features        the backbone's features Sequential without its last max-pool (VGG:
                  conv, [BN,] ReLU per conv and a slot per 2x2 max-pool; AlexNet: conv,
                  ReLU and 3x3/2 max-pools);
  representation  'gap': GAvP, 'bcnn': BCNN (`torch_resnet.BCNN`; no parameters);
                  'isqrt': MPNCOV (`torch_resnet.MPNCOV`,
                  iSQRT with 5 iterations), with `conv_dr_block.{0,1}` when trained from
                  scratch (`dim`), without when fine-tuned (--pretrained, `dim=None`);
  classifier      from scratch: the backbone's FC classifier with its first Linear sized to
                  the representation (VGG: Linear, ReLU, Dropout twice, Linear; AlexNet:
                  Dropout, Linear, ReLU twice, Linear); fine-tuned: one Linear (`hidden=0`).

mpncovvgg16_bn (src/network/mpncovvgg.py) is vgg16_bn + MPNCOV(256) from scratch; fine-tuned
(finetune_mpncovvggd16.sh: no new representation) it keeps its reduction block and ends in
one Linear (`dim=256, hidden=0`). Sizes the release hard-codes (4096, 256, 64 stem channels)
are arguments, for small test models.
"""
from torch import nn

from references import torch_resnet

# vgg.py's cfg 'A', 'B', 'D', 'E' (vgg11, vgg13, vgg16, vgg19).
CFGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512,
              512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


def make_layers(cfg, batch_norm: bool, width: int = 64) -> nn.Sequential:
  """vgg.py's make_layers, channels scaled by width / 64."""
  layers, cin = [], 3
  for v in cfg:
    if v == "M":
      layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
      continue
    v = v * width // 64
    layers += [nn.Conv2d(cin, v, kernel_size=3, padding=1),
               *([nn.BatchNorm2d(v)] if batch_norm else []), nn.ReLU(inplace=True)]
    cin = v
  return nn.Sequential(*layers)


def alexnet_features() -> nn.Sequential:
  """alexnet.py's AlexNet.features."""
  return nn.Sequential(
      nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2),
      nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2),
      nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
      nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
      nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
      nn.MaxPool2d(kernel_size=3, stride=2))


class Network(torch_resnet.Basemodel):
  """Newmodel(arch, representation, num_classes, pretrained=dim is None and 'isqrt')."""

  def __init__(self, arch: str, head: str = "isqrt", dim: int | None = 256,
               hidden: int = 4096, num_classes: int = 1000, width: int = 64):
    if arch == "alexnet":
      features, channels = alexnet_features(), 256
    else:
      features = make_layers(CFGS[arch.removesuffix("_bn")], arch.endswith("_bn"), width)
      channels = 512 * width // 64
    if head == "gap":
      representation, out = nn.AdaptiveAvgPool2d((1, 1)), channels
    elif head == "bcnn":
      representation, out = torch_resnet.BCNN(), channels * channels
    else:
      representation = torch_resnet.MPNCOV(channels, dim)
      out = (dim or channels) * ((dim or channels) + 1) // 2
    if not hidden:
      classifier = nn.Linear(out, num_classes)
    elif arch == "alexnet":
      classifier = nn.Sequential(
          nn.Dropout(), nn.Linear(out, hidden), nn.ReLU(inplace=True), nn.Dropout(),
          nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
    else:
      classifier = nn.Sequential(
          nn.Linear(out, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, hidden),
          nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, num_classes))
    # Basemodel: the last max-pool of the features becomes the representation.
    super().__init__(features[:-1], representation, classifier)
