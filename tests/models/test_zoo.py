"""VGG-16-BN, MobileNetV2, the MindSpore-parity ResNet variant, initialisation schemes,
and every backbone x head training a step."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gcp import layers, train
from gcp.heads import HEADS
from gcp.models import create_model, resnet
from references.every_head import every_head_model


def abstract_params(model, size=64):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def num_params(model):
  return sum(x.size for x in jax.tree.leaves(abstract_params(model)["params"]))


def test_torchvision_sizes():
  # torchvision's published counts: mobilenet_v2 3,504,872; vgg16_bn 138,365,992 with its
  # 25,088-wide first FC, which global pooling makes 512 wide: 25,088 - 512 inputs fewer.
  assert num_params(create_model("mobilenet_v2", head="gap", num_classes=1000)) == 3_504_872
  assert num_params(create_model("vgg16_bn", head="gap", num_classes=1000)) == (
      138_365_992 - (25_088 - 512) * 4096)


def test_gcp_versions_add_reduction_and_wider_classifier():
  # MobileNetV2: 1280 -> 256 conv + BN, FC 32,896 -> 1000 instead of 1280 -> 1000.
  mnv2 = create_model("mobilenet_v2", head="isqrt", num_classes=1000, reduction_dim=256)
  assert num_params(mnv2) == 3_504_872 - 1_281_000 + 1280 * 256 + 512 + 32_896 * 1000 + 1000
  assert mnv2.head.reduction_relu6
  # VGG-16-BN: 512 -> 256 conv + BN, first FC 32,896 -> 4096 instead of 512 -> 4096.
  vgg = create_model("vgg16_bn", head="isqrt", num_classes=1000, reduction_dim=256)
  assert num_params(vgg) == num_params(create_model("vgg16_bn", head="gap", num_classes=1000)) \
      + 512 * 256 + 512 + (32_896 - 512) * 4096


def feature_map(model, size):
  variables = abstract_params(model, size)
  _, state = jax.eval_shape(lambda v: model.apply(
      v, jnp.zeros((1, size, size, 3)), capture_intermediates=True,
      mutable=["intermediates"]), variables)
  return state["intermediates"]["head"]["reduce"]["__call__"][0].shape


def test_vgg_and_alexnet_replace_their_last_pool_with_the_head():
  model = create_model("vgg16_bn", head="isqrt", num_classes=10, reduction_dim=256)
  assert feature_map(model, 224) == (1, 14, 14, 256)
  model = create_model("alexnet", head="isqrt", num_classes=10, reduction_dim=256)
  assert feature_map(model, 224) == (1, 13, 13, 256)


def test_mobilenet_keeps_its_strides():
  model = create_model("mobilenet_v2", head="isqrt", num_classes=10, reduction_dim=256)
  assert feature_map(model, 224) == (1, 7, 7, 256)


# ------------------------------------------------------------ MindSpore-parity variant

@pytest.mark.parametrize("kernel, strides, differs", [
    (7, 2, True), (3, 2, True), (1, 2, False), (3, 1, False), (1, 1, False)])
def test_same_padding_differs_from_symmetric_only_for_strided_spatial_kernels(
    kernel, strides, differs):
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 16, 16, 3)), jnp.float32)
  outs = []
  for padding in ("symmetric", "same"):
    layer = layers.conv(4, kernel, strides, name="c", dtype=jnp.float32, padding=padding)
    outs.append(layer.apply(layer.init(jax.random.key(0), x), x))
  assert outs[0].shape == outs[1].shape
  assert (not np.allclose(outs[0], outs[1])) == differs


def test_same_max_pool_differs_from_symmetric():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 8, 8, 2)), jnp.float32)
  a, b = layers.max_pool_3x3_s2(x, "symmetric"), layers.max_pool_3x3_s2(x, "same")
  assert a.shape == b.shape and not np.allclose(a, b)
  # TF SAME puts the extra padding at the end: the last window starts one row lower.
  np.testing.assert_array_equal(b[0, 0, 0], x[0, :3, :3].max(axis=(0, 1)))


def record_conventions(monkeypatch, arch, variant):
  """(name, padding, (kernel, strides)) of every conv and (name, eps) of every BatchNorm
  that `arch` with an iSQRT head builds."""
  convs, norms = [], []
  real_conv, real_bn = layers.conv, layers.batch_norm

  def conv(*args, **kwargs):
    convs.append((kwargs["name"], kwargs.get("padding", "symmetric"), args[1:3]))
    return real_conv(*args, **kwargs)

  def batch_norm(*args, **kwargs):
    norms.append((kwargs["name"], kwargs.get("epsilon", 1e-5)))
    return real_bn(*args, **kwargs)

  for module in (layers, resnet):
    monkeypatch.setattr(module, "conv", conv)
    monkeypatch.setattr(module, "batch_norm", batch_norm)
  abstract_params(create_model(arch, head="isqrt", num_classes=10, reduction_dim=8,
                               variant=variant), 64)
  return convs, norms


def test_mindspore_resnet50_pads_same_everywhere_with_eps_1e4(monkeypatch):
  convs, norms = record_conventions(monkeypatch, "resnet50", "mindspore")
  # Every backbone conv; the head's reduction ("conv", 1x1 stride 1) pads nothing either way.
  assert {p for n, p, _ in convs if n != "conv"} == {"same"}
  assert {eps for _, eps in norms} == {1e-4}


def test_mindspore_resnet18_pads_symmetrically_with_mixed_eps(monkeypatch):
  convs, norms = record_conventions(monkeypatch, "resnet18", "mindspore")
  assert {p for _, p, _ in convs} == {"symmetric"}
  eps = {}
  for name, e in norms:
    eps.setdefault(name, set()).add(e)
  # SPEC §6: 1e-5 for the stem and downsample BNs, 1e-4 in the blocks and the reduction.
  assert eps["bn1"] == {1e-5, 1e-4}  # the stem's bn1 and the blocks' bn1
  assert eps["downsample_bn"] == {1e-5} and eps["bn2"] == {1e-4} and eps["bn"] == {1e-4}


def test_pytorch_variant_uses_torchvision_conventions(monkeypatch):
  convs, norms = record_conventions(monkeypatch, "resnet50", "pytorch")
  assert {p for _, p, _ in convs} == {"symmetric"}
  assert {e for _, e in norms} == {1e-5}


def test_variants_share_parameter_shapes_but_not_outputs():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 32, 32, 3)), jnp.float32)
  models = [create_model("resnet50", head="gap", num_classes=10, width=8, variant=v)
            for v in ("pytorch", "mindspore")]
  key = jax.random.key(0, impl="rbg")  # compiled, with rbg keys: seconds, not 20
  variables = jax.jit(models[0].init)(key, x)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
      jnp.shape, jax.eval_shape(models[1].init, key, x))
  a, b = (jax.jit(m.apply)(variables, x) for m in models)
  assert not np.allclose(a, b)


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match="unknown variant 'tf'; valid variants: pytorch, mindspore"):
    create_model("resnet50", head="gap", num_classes=10, variant="tf")


# --------------------------------------------------------------- initialisation schemes

def conv_kernel(arch, init_scheme=None):
  model = create_model(arch, head="gap", num_classes=10, init_scheme=init_scheme)
  # One compiled init with rbg keys (as gcp.train's): 2 s instead of 13-18 s op by op.
  params = jax.jit(model.init)(jax.random.key(0, impl="rbg"),
                               jnp.zeros((1, 32, 32, 3)))["params"]
  return params["layer3_0"]["conv2"]["kernel"] if arch.startswith("resnet") else \
      params["features_10"]["kernel"]


@pytest.mark.parametrize("arch, scheme, std", [
    ("resnet18", None, (2 / (9 * 256 + 9 * 256)) ** 0.5),        # Xavier-uniform (MindSpore)
    ("resnet18", "torchvision", (2 / (9 * 256)) ** 0.5),          # Kaiming-normal fan-out
    ("vgg16_bn", None, (2 / (9 * 512)) ** 0.5),                   # torchvision, VGG's default
])
def test_init_schemes(arch, scheme, std):
  kernel = np.asarray(conv_kernel(arch, scheme))
  assert abs(kernel.std() / std - 1) < 0.05


# fast-MPN-COV's Basemodel networks: their backbone's own conv init, and a fresh PyTorch
# Linear classifier (uniform +-1/sqrt(fan_in): std 1/sqrt(3 fan_in)). A 3x3 conv from 128 to
# 256 channels (fan-in 1,152, fan-out 2,304) and a 512 -> 1000 dense layer.
@pytest.mark.parametrize("arch, scheme, conv_std", [
    ("alexnet", "pytorch", (1 / (3 * 1152)) ** 0.5),   # nn.Conv2d's default
    ("densenet121", "densenet", (2 / 1152) ** 0.5),     # Kaiming-normal fan-in
    # normal(0.1) truncated at 2 sigma (torchvision's old Inception3): std 0.1 * 0.8796
    ("inception_v3", "inception", 0.1 * 0.8796),
])
def test_basemodel_networks_initialise_as_their_release(arch, scheme, conv_std):
  assert create_model(arch, head="gap", num_classes=10).init_scheme == scheme
  conv, dense = (np.asarray(init(jax.random.key(1), shape)) for init, shape in zip(
      layers.INITS[scheme], [(3, 3, 128, 256), (512, 1000)]))
  assert abs(conv.std() / conv_std - 1) < 0.03
  assert abs(dense.std() / (1 / (3 * 512)) ** 0.5 - 1) < 0.03
  assert np.abs(dense).max() <= 512 ** -0.5
  if scheme == "inception":
    assert np.abs(conv).max() <= 0.2


# ------------------------------------------------------- every backbone x head, one step

TINY = {"vgg16_bn": dict(width=8, hidden=16), "mobilenet_v2": dict(width_mult=0.25),
        "shufflenet_v2": dict(width_mult=0.5),
        "densenet121": dict(growth_rate=4, block_config=(1, 1, 1, 1), num_init_features=8)}


@pytest.mark.parametrize("arch", sorted(TINY))
def test_every_backbone_trains_every_head_in_one_step(arch):
  # These backbones keep their strides whatever the head. 64 px: 2x2 maps at stride 32 (a
  # 1x1 map's covariance is 0, and so is its gradient).
  heads = sorted(HEADS)
  model = every_head_model(arch, heads, num_classes=5, reduction_dim=8, sketch_dim=32,
                           **TINY[arch])
  tx = optax.sgd(0.01, momentum=0.9)
  mesh = train.make_mesh(jax.devices()[:1])
  state = train.init_state(model, tx, (64, 64, 3), seed=0, mesh=mesh)
  before = jax.device_get(state.params)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(2, 64, 64, 3)).astype(np.float32),
           "label": rng.integers(0, 5, 2).astype(np.int32)}
  state, metrics = train.make_train_step(model, tx, 0.1)(state, train.shard_batch(batch, mesh))
  assert np.isfinite(float(metrics["loss"]))
  after = jax.device_get(state.params)
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(after))
  for i, head in enumerate(heads):  # the gradient reached every head that has parameters
    name = f"heads_{i}"
    assert (name in before["head"]) == (head != "gap"), head
    if name in before["head"]:
      assert any(not np.array_equal(a, b) for a, b in zip(
          jax.tree.leaves(before["head"][name]), jax.tree.leaves(after["head"][name]))), head
