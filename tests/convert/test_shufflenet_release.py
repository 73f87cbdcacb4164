"""GCP_Optimization's ShuffleNetV2 files: a PyTorch port of the release's networks
(tests/references/torch_shufflenet.py), randomised, saved as the release saves it, converted
with the architecture read off the names, and exported back into the release's layout,
which the port loads strictly. Our float32 logits agree to 1e-5 of the largest logit with the
port's evaluated in float64. (The port's own float32 logits are 3e-6 off those at 224 px,
3e-5 at 64 px, where 2 x 2 positions leave the covariance ill-conditioned: the iSQRT head
amplifies float32 rounding ~10x over GAP's 1e-6.)"""

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="PyTorch checkpoints need torch (test extra)")

import gcp.convert  # noqa: E402
from gcp.convert import ConversionError, layouts  # noqa: E402
from gcp.convert.__main__ import evaluation_hint  # noqa: E402
from gcp.convert.torch_layout import infer_model_spec  # noqa: E402
from gcp.models import create_model  # noqa: E402

from references import torch_resnet, torch_shufflenet  # noqa: E402
from references.numerics import max_rel_diff  # noqa: E402

WIDTH, DIM, CLASSES = 1.0, 16, 10  # the release's 1.0x, a reduction to 16 (not 256)
# 224 px, the release's 7 x 7 map; compiling takes as long as at 64 px.
IMAGES = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def releases():
  """head -> the randomised release network (eval mode), built once."""
  return {head: torch_resnet.randomize_(torch_shufflenet.ShuffleNetV2(
      head, DIM, CLASSES, WIDTH), seed=i) for i, head in enumerate(("isqrt", "gap"))}


# (head, the layout, how the file is saved: main_shufflenet.py's training checkpoint of the
# DataParallel-wrapped network, or a bare state_dict as torchvision publishes its GAP one)
CASES = [("isqrt", "gcp_opt_mobilenet", "model"), ("gap", "torchvision", None)]


@pytest.mark.parametrize("head, layout, wrap", CASES, ids=[c[0] for c in CASES])
def test_release_file_converts_and_exports_back(head, layout, wrap, releases, our_logits,
                                                release_logits, exports_back, tmp_path):
  release = releases[head]
  path = str(tmp_path / "model_best.pth.tar")
  if wrap:
    saved = torch_resnet.training_checkpoint(release, "shufflenet_v2_mpncov_x1_0", wrap)
    assert all(k.startswith("module.") for k in saved["state_dict"])
    torch.save(saved, path)
  else:
    torch.save(release.state_dict(), path)
  out = str(tmp_path / "converted")
  converted = gcp.convert.convert_to_checkpoint(path, out)
  spec = converted.spec
  assert (spec["arch"], spec["head"], spec["num_classes"], spec["width_mult"],
          spec["reduction_dim"]) == ("shufflenet_v2", head, CLASSES, WIDTH,
                                     DIM if head == "isqrt" else None)
  assert converted.layout == layout and converted.weights == ("state_dict" if wrap else None)
  assert max_rel_diff(our_logits(spec, converted.variables, IMAGES),
                      release_logits(release, IMAGES)) < 1e-5

  exports_back(release, converted, out, IMAGES, tmp_path)


def test_parameter_counts_equal_the_release_networks():
  for head, dim in (("isqrt", 256), ("gap", None)):
    port = torch_shufflenet.ShuffleNetV2(head, dim or 256, 1000, 1.0)
    model = create_model("shufflenet_v2", head=head, num_classes=1000, reduction_dim=dim)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 64, 64, 3))))
    ours = sum(x.size for x in jax.tree.leaves(shapes["params"]))
    assert ours == torch_shufflenet.num_params(port) == {"isqrt": 34_413_260,
                                                         "gap": 2_278_604}[head]


def test_layouts_and_recipe_of_the_release_models():
  spec = dict(arch="shufflenet_v2", head="isqrt", reduction_dim=256, num_classes=1000)
  assert layouts.fitting(spec) == ["gcp_opt_mobilenet"]
  assert layouts.fitting({**spec, "head": "gap", "reduction_dim": None}) == ["torchvision"]
  assert "--config configs/gcp_optimization.py:shufflenet_v2,LRnorm" in evaluation_hint(
      spec, "converted/m")
  with pytest.raises(ConversionError, match="gcp_opt_mobilenet layout .* cannot hold this "
                     r"model: its network is a MobileNetV2 or ShuffleNetV2 .* shufflenet_v2 "
                     r"\+ cov head"):
    layouts.check(layouts.get("gcp_opt_mobilenet"), {**spec, "head": "cov"})


def test_a_width_the_release_has_not_is_named(releases):
  tensors = {n: t.numpy() for n, t in releases["gap"].state_dict().items()
             if not n.endswith("num_batches_tracked") and not n.startswith("stage4.3.")}
  with pytest.raises(ConversionError, match=r"\(4, 8, 3\) units per stage and 116 stage2"):
    infer_model_spec(tensors)
