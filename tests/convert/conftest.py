"""Shared by the conversion tests: PyTorch reference models and our forward pass."""
import copy
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


def _release_logits(network, images) -> np.ndarray:
  """A PyTorch network's logits on NHWC `images`, computed in float64 (on a copy), fed a
  contiguous NCHW batch as the releases' data loaders give it (the Moment Probing
  release's ConvNeXt normalises a strided input differently: gcp.models.convnext)."""
  import torch
  batch = np.ascontiguousarray(images.transpose(0, 3, 1, 2), np.float64)
  with torch.no_grad():
    return copy.deepcopy(network).double()(torch.from_numpy(batch)).numpy()


def _check_exports_back(release, converted, out_dir: str, images, tmp_path) -> None:
  """A release file converted into `out_dir` (`converted`: its `Converted`) goes back:
  export writes the layout it came from, which a copy of the release network loads
  strictly with every tensor equal; and our weights, perturbed so that they are no longer
  the release's, exported into that layout give the network our logits (1e-5 of the
  largest, its float64 against our float32)."""
  import torch

  import gcp.convert
  from gcp import checkpoint
  from references.torch_resnet import randomize_
  written, count = gcp.convert.export(out_dir, str(tmp_path / "exported.pth"))
  original = release.state_dict()
  assert written.name == converted.layout and count == sum(
      not n.endswith("num_batches_tracked") for n in original)
  loaded = randomize_(copy.deepcopy(release), seed=99)
  loaded.load_state_dict(torch.load(tmp_path / "exported.pth", weights_only=True), strict=True)
  for name, value in loaded.state_dict().items():
    assert torch.equal(value, original[name]), name

  rng = np.random.default_rng(1)
  perturbed = jax.tree.map(lambda a: a * rng.uniform(0.8, 1.2, a.shape).astype(a.dtype),
                           converted.variables)
  checkpoint.save_variables(str(tmp_path / "ours"), perturbed, converted.spec)
  gcp.convert.export(str(tmp_path / "ours"), str(tmp_path / "ours.pth"))
  loaded.load_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True), strict=True)
  theirs = _release_logits(loaded, images)
  assert not np.allclose(theirs, _release_logits(release, images))
  assert max_rel_diff(ours(converted.spec, perturbed, images), theirs) < 1e-5


@pytest.fixture(scope="session")
def release_logits():
  """`(torch network, NHWC images) -> its float64 logits`."""
  return _release_logits


@pytest.fixture(scope="session")
def exports_back():
  """`(release network, Converted, its checkpoint dir, images, tmp_path)`: the checks of
  `_check_exports_back`."""
  return _check_exports_back


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
