"""fast-MPN-COV's Basemodel networks beyond the ResNets (src/network/base.py, model_init.py):
VGGs, AlexNet, DenseNets and Inception-v3, from scratch (MPNCOV with its reduction block,
the backbone's classifier) and fine-tuned (--pretrained: MPNCOV without reduction, one
Linear). PyTorch ports written from the release (tests/references/torch_vgg.py,
torch_densenet.py, torch_inception.py) are randomised and saved as the release's main.py
saves them (DataParallel around `features`), converted with the architecture and layout
read off the names, and exported back, which the release's network loads strictly.
Our float32 logits agree to 1e-5 of the largest logit with the port's in float64 (160 px:
at least 81 positions per covariance, so the iSQRT head is well-conditioned)."""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch checkpoints need torch (test extra)")

import gcp.convert  # noqa: E402
from gcp.convert import layouts  # noqa: E402
from gcp.convert.__main__ import evaluation_hint  # noqa: E402
from gcp.convert.torch_layout import from_torch  # noqa: E402
from gcp.models import create_model  # noqa: E402

from references import torch_densenet, torch_inception, torch_resnet, torch_vgg  # noqa: E402,E501
from references.numerics import max_rel_diff  # noqa: E402

CLASSES = 10
IMAGES = np.random.default_rng(0).normal(size=(2, 160, 160, 3)).astype(np.float32)
TINY_DENSENET = dict(growth_rate=8, block_config=(1, 2, 1, 1), num_init_features=16)
# name -> (our spec without num_classes, the release network's layout, the release network
# of `head`, `dim` (None: fine-tuned, no reduction), CLASSES classes): from scratch
# (reduction, the backbone's classifier), fine-tuned (--pretrained: no reduction, VGG's one
# Linear) and with GAvP.
CASES = {
    "vgg11 from scratch": (
        dict(arch="vgg11", head="isqrt", reduction_dim=8, hidden=32, width=8), "fastmpn_vgg",
        lambda: torch_vgg.Network("vgg11", "isqrt", 8, 32, CLASSES, width=8)),
    "vgg13_bn fine-tuned": (
        dict(arch="vgg13_bn", head="isqrt", reduction_dim=None, hidden=0, width=8),
        "fastmpn_vgg",
        lambda: torch_vgg.Network("vgg13_bn", "isqrt", None, 0, CLASSES, width=8)),
    # finetune_mpncovvggd16.sh: mpncovvgg16_bn keeps its reduction, one Linear classifier
    "mpncovvgg16_bn fine-tuned": (
        dict(arch="vgg16_bn", head="isqrt", reduction_dim=8, hidden=0, width=8),
        "fastmpn_vgg", lambda: torch_vgg.Network("vgg16_bn", "isqrt", 8, 0, CLASSES, width=8)),
    "vgg19_bn GAvP": (
        dict(arch="vgg19_bn", head="gap", reduction_dim=None, hidden=32, width=8),
        "fastmpn_vgg", lambda: torch_vgg.Network("vgg19_bn", "gap", None, 32, CLASSES, width=8)),
    "vgg11_bn BCNN": (
        dict(arch="vgg11_bn", head="bcnn", reduction_dim=None, hidden=32, width=8),
        "fastmpn_vgg", lambda: torch_vgg.Network("vgg11_bn", "bcnn", None, 32, CLASSES, width=8)),
    "alexnet from scratch": (
        dict(arch="alexnet", head="isqrt", reduction_dim=16, hidden=32), "fastmpn_vgg",
        lambda: torch_vgg.Network("alexnet", "isqrt", 16, 32, CLASSES)),
    "densenet from scratch": (
        dict(arch="densenet121", head="isqrt", reduction_dim=8, **TINY_DENSENET),
        "fastmpn_densenet",
        lambda: torch_densenet.basemodel(torch_densenet.DenseNet("isqrt", 8, CLASSES,
                                                                 **TINY_DENSENET))),
}


def test_inception_file_converts_onto_torchvisions_modules_and_exports_back(tmp_path):
  """The Basemodel's features.{0..17} land on the modules torchvision names (our logits
  through those names are checked in tests/models/test_inception.py; a full-size Inception
  is not compiled again here)."""
  port = torch_resnet.randomize_(torch_inception.Inception3("isqrt", 8, CLASSES))
  release = torch_inception.basemodel(port)
  path = str(tmp_path / "checkpoint.pth.tar")
  torch.save(torch_resnet.training_checkpoint(release, "inception_v3", wrap="features"), path)
  converted = gcp.convert.convert_to_checkpoint(path, str(tmp_path / "converted"))
  assert converted.layout == "fastmpn_inception"
  assert {k: converted.spec[k] for k in ("arch", "head", "reduction_dim", "num_classes")} == \
      dict(arch="inception_v3", head="isqrt", reduction_dim=8, num_classes=CLASSES)
  canonical = {n: t.numpy() for n, t in port.state_dict().items()
               if not n.endswith("num_batches_tracked")}
  want = from_torch(canonical, converted.variables)
  for a, b in zip(jax.tree.leaves(converted.variables), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  written, _ = gcp.convert.export(str(tmp_path / "converted"), str(tmp_path / "ours.pth"))
  assert written.name == "fastmpn_inception"
  loaded = torch_inception.basemodel(torch_resnet.randomize_(
      torch_inception.Inception3("isqrt", 8, CLASSES), seed=99))
  loaded.load_state_dict(torch.load(tmp_path / "ours.pth", weights_only=True), strict=True)
  for name, value in release.state_dict().items():
    assert torch.equal(loaded.state_dict()[name], value), name


@pytest.mark.parametrize("case", CASES)
def test_release_file_converts_and_exports_back(case, our_logits, release_logits,
                                                exports_back, tmp_path):
  want_spec, layout, build = CASES[case]
  release = torch_resnet.randomize_(build(), seed=len(case))
  path = str(tmp_path / "checkpoint.pth.tar")
  saved = torch_resnet.training_checkpoint(release, want_spec["arch"], wrap="features")
  assert any(k.startswith("features.module.") for k in saved["state_dict"])
  torch.save(saved, path)

  out = str(tmp_path / "converted")
  converted = gcp.convert.convert_to_checkpoint(path, out)
  spec = converted.spec
  assert {k: spec.get(k) for k in [*want_spec, "num_classes"]} == {**want_spec,
                                                                    "num_classes": CLASSES}
  assert converted.layout == layout
  assert max_rel_diff(our_logits(spec, converted.variables, IMAGES),
                      release_logits(release, IMAGES)) < 1e-5

  exports_back(release, converted, out, IMAGES, tmp_path)


def num_params(model) -> int:
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 224, 224, 3))))
  return sum(x.size for x in jax.tree.leaves(shapes["params"]))


# torchvision's model card counts (the FC-4096 classifier on 7x7 maps); GAvP makes the first
# FC 512 (AlexNet: 256) wide instead of 25,088 (9,216).
TORCHVISION = {"alexnet": 61_100_840, "vgg11": 132_863_336, "vgg11_bn": 132_868_840,
               "vgg13": 133_047_848, "vgg13_bn": 133_053_736, "vgg16": 138_357_544,
               "vgg16_bn": 138_365_992, "vgg19": 143_667_240, "vgg19_bn": 143_678_248}


@pytest.mark.parametrize("arch", TORCHVISION)
def test_parameter_counts_equal_the_release_networks(arch):
  flat = 9216 if arch == "alexnet" else 25_088
  channels = 256 if arch == "alexnet" else 512
  gap = TORCHVISION[arch] - (flat - channels) * 4096
  # From scratch: MPNCOV(256) adds a 1x1 conv and BN, and the first FC takes 32,896 inputs.
  scratch = gap + channels * 256 + 2 * 256 + (32_896 - channels) * 4096
  # Fine-tuned: no reduction, one Linear from the C(C+1)/2 features (the release's 1000
  # classes here).
  tuned = gap - (channels * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000) + (
      channels * (channels + 1) // 2 * 1000 + 1000)
  with torch.device("meta"):
    ports = {"gap": torch_vgg.Network(arch, "gap"), "scratch": torch_vgg.Network(arch),
             "tuned": torch_vgg.Network(arch, dim=None, hidden=0)}
  ours = {"gap": create_model(arch, head="gap", num_classes=1000),
          "scratch": create_model(arch, head="isqrt", num_classes=1000, reduction_dim=256),
          "tuned": create_model(arch, head="isqrt", num_classes=1000, hidden=0)}
  for kind, want in (("gap", gap), ("scratch", scratch), ("tuned", tuned)):
    assert num_params(ours[kind]) == sum(p.numel() for p in ports[kind].parameters()) \
        == want, kind


def test_layouts_and_recipes_of_the_release_models():
  spec = dict(arch="vgg19", head="isqrt", reduction_dim=256, num_classes=1000)
  assert layouts.fitting(spec) == ["fastmpn_vgg"]
  assert layouts.fitting({**spec, "arch": "densenet169"}) == ["fastmpn_densenet"]
  assert layouts.fitting({**spec, "arch": "inception_v3", "head": "gap"}) == [
      "torchvision", "fastmpn_inception"]
  for arch in ("alexnet", "vgg19", "densenet201", "inception_v3"):
    assert f"--config configs/fast_mpn_cov.py:{arch} " in evaluation_hint(
        {**spec, "arch": arch}, "converted/m")
