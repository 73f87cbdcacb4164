"""Shared by the conversion tests: PyTorch reference models and our forward pass."""
import json

import jax
import numpy as np
import pytest

from gcp.models import create_model

from references.numerics import max_rel_diff

IMAGES = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
_APPLY = {}


def ours(spec: dict, variables, images=IMAGES) -> np.ndarray:
  """Eval-mode logits of `create_model(**spec)` (one compiled function per spec)."""
  key = json.dumps(spec, sort_keys=True)
  if key not in _APPLY:
    model = create_model(**spec)
    _APPLY[key] = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return np.asarray(_APPLY[key](variables, images))


def theirs(model, images=IMAGES) -> np.ndarray:
  import torch
  with torch.no_grad():
    return model(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.fixture(scope="session")
def our_logits():
  """`(spec, variables, images=IMAGES) -> logits` of our model."""
  return ours


@pytest.fixture(scope="session")
def logits_gap():
  """`(spec, variables, torch model) -> max_rel_diff` of our logits against PyTorch's."""
  return lambda spec, variables, model: max_rel_diff(ours(spec, variables), theirs(model))


@pytest.fixture(scope="session")
def torch_models():
  """Randomised PyTorch ports of the releases' networks by (arch, head, variant), built
  once, 10 classes: ResNets (full width, reduction to 32), VGG-16-BN (width 8, reduction to
  8, FC-32) and MobileNetV2 (width 1, the only one where the release's channel rounding
  equals torchvision's; reduction to 16)."""
  pytest.importorskip("torch", reason="the PyTorch reference needs torch (test extra)")
  from references import torch_resnet, torch_vgg
  cache = {}

  def get(arch, head, variant="pytorch"):
    if (arch, head, variant) not in cache:
      if arch == "vgg16_bn":
        model = torch_vgg.Network("vgg16_bn", dim=8, hidden=32, num_classes=10, width=8)
      elif arch == "mobilenet_v2":
        model = torch_resnet.MobileNetV2(head, dim=16, num_classes=10)
      else:
        model = torch_resnet.ResNet(arch, head, dim=32, num_classes=10, variant=variant)
      cache[arch, head, variant] = torch_resnet.randomize_(model, seed=len(cache))
    return cache[arch, head, variant]
  return get
