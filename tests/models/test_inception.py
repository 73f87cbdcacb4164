"""Inception-v3 as fast-MPN-COV builds it (gcp.models.inception) against a PyTorch port of
the release (tests/references/torch_inception.py): parameter counts and feature size at
full size (traced only), and, at 139 px, batch 2, logits with the randomised port's weights
carried through gcp.convert.torch_layout (from_torch into our tree, to_torch back into a
fresh port, loaded strictly). Our float32 eval logits agree to 1e-5 of the largest logit
with the port's in float64 (measured: 1.4e-6 for gap, 2.2e-6 for isqrt; the port's own
float32 logits: 9e-7, 2.5e-6); train mode is compared in float64 (see its test).

139 px is the smallest size giving Mixed_7c 3 x 3 positions (75 px: 1 x 1, where the
covariance is zero; 107 px: 2 x 2), so that the iSQRT head sees a covariance of rank 8 (of
16), not 0 or 3. Three programs are compiled: eval gap, eval isqrt, train gap (float64).
"""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the PyTorch reference needs torch (test extra)")

from gcp.convert.torch_layout import from_torch, to_torch  # noqa: E402
from gcp.heads import HEADS  # noqa: E402
from gcp.models.inception import InceptionV3  # noqa: E402

from references import torch_inception, torch_resnet  # noqa: E402
from references.numerics import max_rel_diff  # noqa: E402

# torchvision's inception_v3 model card (1000 classes, AuxLogits included) and its
# AuxLogits branch, which the release's Basemodel drops.
TORCHVISION = 27_161_264
AUX = 3_326_696
GAP = TORCHVISION - AUX
# fast-MPN-COV's MPNCOV from scratch: the 2048 -> 1000 fc (2,049,000) becomes a 2048 -> 256
# conv + BN and a 32,896 -> 1000 fc.
MPNCOV = GAP - 2_049_000 + 2048 * 256 + 2 * 256 + 32_896 * 1000 + 1000
SIZE, DIM, CLASSES = 139, 16, 10
IMAGES = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)


def build(head, dim=DIM, num_classes=CLASSES):
  """Our InceptionV3 with `head` ('gap' | 'isqrt', reduction to `dim`)."""
  head_module = (HEADS["isqrt"](reduction_dim=dim, init_scheme="torchvision")
                 if head == "isqrt" else HEADS["gap"]())
  return InceptionV3(head=head_module, num_classes=num_classes)


def abstract_variables(model, size=SIZE):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def tensors(module):
  """A PyTorch module's state_dict as numpy, without BN's num_batches_tracked."""
  return {n: t.numpy() for n, t in module.state_dict().items()
          if not n.endswith("num_batches_tracked")}


def run_port(port, train=False):
  """(logits, Mixed_7c's output `[B, H, W, C]`, the copy run) of a float64 copy of `port`
  on IMAGES (a copy: train mode updates its statistics)."""
  port = copy.deepcopy(port).double().train(train)
  captured = []
  port.Mixed_7c.register_forward_hook(lambda module, inputs, output: captured.append(output))
  with torch.no_grad():
    logits = port(torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).astype(np.float64)))
  return logits.numpy(), captured[0].numpy().transpose(0, 2, 3, 1), port


def test_parameter_counts_are_the_releases():
  assert MPNCOV == 55_207_368
  assert torch_inception.num_params(torch_inception.InceptionAux(768, 1000)) == AUX
  for head, dim, want in (("gap", None, GAP), ("isqrt", 256, MPNCOV)):
    port = torch_inception.Inception3(head, dim, 1000)
    model = build(head, dim, num_classes=1000)
    variables = abstract_variables(model, 299)
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == \
        torch_inception.num_params(port) == want, head
  # Every stride kept under a second-order head (`model`: the isqrt one): 8 x 8 x 2048 at
  # 299 px.
  _, state = jax.eval_shape(lambda v: model.apply(
      v, jnp.zeros((1, 299, 299, 3)), capture_intermediates=True, mutable=["intermediates"]),
      variables)
  assert state["intermediates"]["Mixed_7c"]["__call__"][0].shape == (1, 8, 8, 2048)
  assert state["intermediates"]["head"]["__call__"][0].shape == (1, 256 * 257 // 2)


@pytest.fixture(scope="module")
def cases():
  """head -> (our model, our variables, the port holding them in eval mode, its float64
  logits), built once: the randomised port's tensors -> from_torch -> to_torch -> a fresh
  port, loaded strictly."""
  cache = {}

  def get(head):
    if head not in cache:
      model = build(head)
      dim = DIM if head == "isqrt" else None
      source = tensors(torch_resnet.randomize_(torch_inception.Inception3(head, dim, CLASSES),
                                               seed=len(head)))
      variables = from_torch(source, abstract_variables(model))
      port = torch_inception.Inception3(head, dim, CLASSES)
      port.load_state_dict({n: torch.from_numpy(t) for n, t in to_torch(variables).items()},
                           strict=True)
      loaded = tensors(port)
      for name, value in source.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)
      port.eval()
      cache[head] = model, variables, port, run_port(port)[0]
    return cache[head]
  return get


HEAD_NAMES = ["gap", "isqrt"]


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_names_are_torchvisions(head, cases):
  _, variables, _, _ = cases(head)
  names = to_torch(variables).keys()
  assert {"Conv2d_1a_3x3.conv.weight", "Conv2d_4a_3x3.bn.running_var",
          "Mixed_5b.branch_pool.conv.weight", "Mixed_6e.branch7x7dbl_5.bn.bias",
          "Mixed_7a.branch7x7x3_4.conv.weight", "Mixed_7c.branch3x3dbl_3b.conv.weight",
          "fc.weight", "fc.bias"} <= names
  assert ("layer_reduce.weight" in names) == ("layer_reduce_bn.running_mean" in names) == (
      head == "isqrt")
  assert not any("AuxLogits" in n for n in names)
  assert to_torch(variables)["Mixed_6b.branch7x7_2.conv.weight"].shape == (128, 128, 1, 7)


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_eval_logits_match_the_port(head, cases):
  model, variables, _, want = cases(head)
  ours = jax.jit(lambda v, x: model.apply(v, x))(variables, IMAGES)
  assert ours.dtype == jnp.float32 and ours.shape == (2, CLASSES)
  assert max_rel_diff(ours, want) < 1e-5, head


def test_train_mode_matches_the_port_in_float64(cases):
  """Batch statistics in every BN: checks their placement (the gap model only, one compile
  less; the isqrt head's reduction is the ResNets' ReductionBlock).

  In float64: in float32 the 94 train-mode BNs amplify rounding layer after layer, in
  PyTorch as in ours (measured against float64: at Mixed_7c ours 2.4e-4 of the largest
  value, PyTorch's own float32 2-3e-4; logits 9e-5 and 8e-5). In float64 we agree to 7e-13
  at Mixed_7c; our fc computes in float32 (layers.dense), hence the logits' 1e-5 (1.5e-6).
  """
  model, variables, port, _ = cases("gap")
  with jax.enable_x64(True):
    model64 = model.clone(dtype=jnp.float64)
    ours, state = jax.jit(lambda v, x: model64.apply(
        v, x, train=True, mutable=["batch_stats", "intermediates"],
        capture_intermediates=lambda module, _: module.name == "Mixed_7c"))(
            variables, IMAGES.astype(np.float64))
  want, features, trained = run_port(port, train=True)
  assert max_rel_diff(state["intermediates"]["Mixed_7c"]["__call__"][0], features) < 1e-10
  assert max_rel_diff(ours, want) < 1e-5
  # Running means move with momentum 0.1 in both (flax multiplies the old float32 mean in
  # float32; PyTorch's running_var uses the unbiased batch variance, flax's the biased one:
  # not compared).
  theirs = trained.state_dict()
  for name, value in to_torch({**variables, "batch_stats": state["batch_stats"]}).items():
    if name.endswith("running_mean"):
      np.testing.assert_allclose(value, theirs[name].numpy(), rtol=0, atol=1e-7,
                                 err_msg=name)


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_release_basemodel_is_the_port(head, cases):
  """fast-MPN-COV's Newmodel structure (features: 18 slots, the max-pools at 3 and 6;
  representation; classifier) computes the port's logits from the release's keys."""
  _, _, port, _ = cases(head)
  release = torch_inception.basemodel(port)
  keys = release.state_dict().keys()
  assert {"features.0.conv.weight", "features.2.bn.running_var", "features.4.conv.weight",
          "features.7.branch1x1.conv.weight", "features.10.branch3x3.conv.weight",
          "features.17.branch3x3dbl_3b.bn.weight", "classifier.weight"} <= keys
  assert not any(n.startswith(("features.3.", "features.6.")) for n in keys)
  assert ("representation.conv_dr_block.0.weight" in keys) == (head == "isqrt")
  assert ("representation.conv_dr_block.1.running_mean" in keys) == (head == "isqrt")
  slots = dict(zip(["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1",
                    "Conv2d_4a_3x3"], [0, 1, 2, 4, 5]))
  slots.update({name: i for i, name in enumerate(torch_inception.MIXED, start=7)})

  def release_name(name):
    module, rest = name.split(".", 1)
    if module in slots:
      return f"features.{slots[module]}.{rest}"
    return {"layer_reduce": "representation.conv_dr_block.0",
            "layer_reduce_bn": "representation.conv_dr_block.1", "fc": "classifier"}[
                module] + "." + rest
  assert {release_name(n) for n in port.state_dict()} == set(keys)
  # The same modules in the same order: equal float32 logits, bit for bit.
  images = torch.from_numpy(IMAGES.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    np.testing.assert_array_equal(release(images).numpy(), port(images).numpy())


@pytest.mark.parametrize("shape, message", [
    ((2, 3, 139, 139), r"expects NHWC RGB images \[B, H, W, 3\], got \(2, 3, 139, 139\)"),
    ((139, 139, 3), r"expects NHWC RGB images \[B, H, W, 3\], got \(139, 139, 3\)"),
    ((2, 139, 74, 3), r"needs images of at least 75x75 pixels .* got 139x74")])
def test_wrong_input_is_named(shape, message):
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda: build("gap").init(jax.random.key(0), jnp.zeros(shape)))
