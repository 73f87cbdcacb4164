"""DenseNet-121/161/169/201 as fast-MPN-COV builds them (gcp.models.densenet) against a
PyTorch port of the release (tests/references/torch_densenet.py): parameter counts at full
size (traced only), and, on a reduced DenseNet (growth 8, two layers per block, 16 initial
channels) at 224 px, logits in eval and train mode with our weights copied into the port
through gcp.convert.torch_layout. Our float32 logits agree to 1e-5 of the largest logit
with the port's in float64 (measured: 2e-7 (eval) and 3e-7 (train) for gap, 7e-7 and 2e-6
for isqrt)."""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch (test extra)")

from gcp.convert.torch_layout import from_torch, to_torch  # noqa: E402
from gcp.heads import HEADS  # noqa: E402
from gcp.models.densenet import SIZES, DenseNet  # noqa: E402

from references import torch_densenet, torch_resnet  # noqa: E402
from references.numerics import max_rel_diff  # noqa: E402

# torchvision's model cards (1000 classes, GAP).
TORCHVISION = {"densenet121": 7_978_856, "densenet161": 28_681_000,
               "densenet169": 14_149_480, "densenet201": 20_013_928}
# fast-MPN-COV's densenet121 + MPNCOV from scratch: the 1024 -> 1000 classifier (1,025,000)
# becomes a 1024 -> 256 conv + BN and a 32,896 -> 1000 classifier.
MPNCOV_121 = TORCHVISION["densenet121"] - 1_025_000 + 1024 * 256 + 2 * 256 + 32_896 * 1000 + 1000
SMALL = dict(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16)
DIM, CLASSES = 16, 10
# 224 px: 7 x 7 positions, more than DIM, so the iSQRT head's covariance has full rank (at
# 64 or 128 px, 2 x 2 or 4 x 4 positions, train mode's float32 logits drift 7e-6 to 1.3e-5
# from float64 in ours and the port alike). Compiling takes as long as at 64 px.
IMAGES = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)


def build(head, dim=None, num_classes=CLASSES, **size):
  """Our DenseNet with `head` ('gap' | 'isqrt', reduction to `dim`)."""
  head_module = (HEADS["isqrt"](reduction_dim=dim, init_scheme="torchvision")
                 if head == "isqrt" else HEADS["gap"]())
  return DenseNet(head=head_module, num_classes=num_classes, **size)


def abstract_variables(model, size=64):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def num_params(variables):
  return sum(x.size for x in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("arch", sorted(SIZES))
def test_parameter_counts_are_torchvisions(arch):
  growth, blocks, init = SIZES[arch]
  with torch.device("meta"):  # shapes only, no initialisation
    port = torch_densenet.DenseNet("gap", None, 1000, growth, blocks, init)
  model = build("gap", num_classes=1000, growth_rate=growth, block_config=blocks,
                num_init_features=init)
  assert num_params(abstract_variables(model)) == torch_densenet.num_params(port) == \
      TORCHVISION[arch]


def test_mpncov_from_scratch_count_and_7x7_features():
  assert MPNCOV_121 == 40_113_512
  with torch.device("meta"):
    port = torch_densenet.DenseNet("isqrt", 256, 1000)
  model = build("isqrt", 256, num_classes=1000)
  variables = abstract_variables(model, 224)
  assert num_params(variables) == torch_densenet.num_params(port) == MPNCOV_121
  # Every stride kept under a second-order head: 7 x 7 x 1024 features at 224 px.
  _, state = jax.eval_shape(lambda v: model.apply(
      v, jnp.zeros((1, 224, 224, 3)), capture_intermediates=True, mutable=["intermediates"]),
      variables)
  assert state["intermediates"]["norm5"]["__call__"][0].shape == (1, 7, 7, 1024)
  assert state["intermediates"]["head"]["__call__"][0].shape == (1, 256 * 257 // 2)


def randomized(target, seed):
  """Random variables shaped like `target`: fan-in scaled kernels, non-trivial BatchNorm."""
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name, shape = path[-1].key, leaf.shape
    if name == "kernel":
      value = rng.normal(size=shape) * (2.0 / np.prod(shape[:-1])) ** 0.5
    elif name == "scale":
      value = rng.uniform(0.8, 1.2, shape)
    elif name == "var":
      value = rng.uniform(0.5, 1.5, shape)
    else:  # bias, mean
      value = 0.1 * rng.normal(size=shape)
    return jnp.asarray(value, leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, target)


def port_logits(port, train=False):
  """The port's logits on IMAGES in float64 (a copy: train mode updates its statistics),
  and the copy."""
  port = copy.deepcopy(port).double().train(train)
  with torch.no_grad():
    return port(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).astype(np.float64))).numpy(), port


@pytest.fixture(scope="module", params=["gap", "isqrt"])
def case(request):
  """(head, our model, our random variables, the port holding them in eval mode)."""
  head = request.param
  model = build(head, DIM, **SMALL)
  variables = randomized(abstract_variables(model), seed=len(head))
  port = torch_densenet.DenseNet(head, DIM if head == "isqrt" else None, CLASSES, **SMALL)
  tensors = to_torch(variables)
  port.load_state_dict({n: torch.tensor(t) for n, t in tensors.items()}, strict=True)
  return head, model, variables, port.eval()


def test_eval_logits_match_the_port(case):
  head, model, variables, port = case
  ours = jax.jit(lambda v, x: model.apply(v, x))(variables, IMAGES)
  assert ours.dtype == jnp.float32 and ours.shape == (2, CLASSES)
  want, _ = port_logits(port)
  assert max_rel_diff(ours, want) < 1e-5, head

  # The round trip: the port's tensors back into our tree, unchanged.
  back = from_torch({n: t.numpy() for n, t in port.state_dict().items()
                     if not n.endswith("num_batches_tracked")}, variables)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, variables))


def test_train_logits_and_running_means_match_the_port(case):
  """Batch statistics in every BN (reduction included): checks their placement."""
  head, model, variables, port = case
  ours, updated = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, IMAGES)
  want, trained = port_logits(port, train=True)
  assert max_rel_diff(ours, want) < 1e-5, head
  # Running means move with momentum 0.1 in both (PyTorch's running_var uses the unbiased
  # batch variance, flax's the biased one: not compared).
  theirs = trained.state_dict()
  for name, value in to_torch({**variables, **updated}).items():
    if name.endswith("running_mean"):
      np.testing.assert_allclose(value, theirs[name].numpy(), rtol=1e-5, atol=1e-5,
                                 err_msg=name)


def test_release_basemodel_is_the_port(case):
  """fast-MPN-COV's Newmodel structure (features + last_relu, representation, classifier)
  computes the port's logits from the release's state_dict keys."""
  head, _, _, port = case
  release = torch_densenet.basemodel(port)
  keys = release.state_dict().keys()
  assert {"features.conv0.weight", "features.denseblock4.denselayer2.conv2.weight",
          "features.norm5.running_var", "classifier.weight"} <= keys
  assert ("representation.conv_dr_block.0.weight" in keys) == (head == "isqrt")
  assert ("representation.conv_dr_block.1.running_mean" in keys) == (head == "isqrt")
  renamed = {n.replace("representation.conv_dr_block.0", "layer_reduce")
             .replace("representation.conv_dr_block.1", "layer_reduce_bn") for n in keys}
  assert renamed == set(port.state_dict())
  np.testing.assert_array_equal(port_logits(release)[0], port_logits(port)[0])


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (64, 64, 3)])
def test_wrong_input_shape_is_named(shape):
  model = build("gap", **SMALL)
  with pytest.raises(ValueError, match=r"DenseNet expects NHWC RGB images \[B, H, W, 3\], "
                     rf"got \({shape[0]}, "):
    jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))


def test_mpncov_without_reduction_as_when_fine_tuning():
  """--pretrained: MPNCOV(dimension_reduction=None) on norm5's 32 channels, no parameters in
  the representation, a 528-input classifier."""
  port = torch_resnet.randomize_(torch_densenet.DenseNet("isqrt", None, CLASSES, **SMALL))
  release = torch_densenet.basemodel(port)
  assert not any(n.startswith("representation.") for n in release.state_dict())
  assert port.classifier.in_features == 32 * 33 // 2
  np.testing.assert_array_equal(port_logits(release)[0], port_logits(port)[0])
  assert num_params(abstract_variables(build("isqrt", None, **SMALL))) == \
      torch_densenet.num_params(port)
