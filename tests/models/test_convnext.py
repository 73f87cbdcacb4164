"""ConvNeXt-B with the feature-map heads (linear, MP, MP+) against a PyTorch port of the
Moment Probing release (tests/references/torch_convnext.py): parameter counts at full size
(traced; the port on the meta device), float32 logits of a reduced network against the
port's float64 ones with the weights renamed by `NAME_MAP`, the release's interleaved
channel groups and its downsample LayerNorm, drop-path."""
import re

import flax.errors
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gcp.heads import MAP_HEADS, MPMapHead, MPPlusMapHead, map_groups
from gcp.models.convnext import ConvNeXt, LayerNorm, drop_path_rates

from references import torch_convnext
from references.numerics import max_rel_diff

# (probing_mode, tuning_mode) of the release for each of our heads.
RELEASE_MODES = {"linear": ("linear", None), "mp": ("mp", None), "mp_plus": ("mp", "psrp")}
# The release's module names -> ours ({i}, {j}: stage and block indices). Leaves: a Conv2d /
# Linear `weight` becomes `kernel` (OIHW -> HWIO, [out, in] -> [in, out]), a norm's
# `weight` becomes `scale`; `bias` and `gamma` keep their names and layout.
NAME_MAP = (
    ("stem.proj", "stem_proj"),
    ("stem.norm", "stem_norm"),
    ("stages.{i}.downsample.norm", "stages_{i}/downsample_norm"),
    ("stages.{i}.downsample.proj", "stages_{i}/downsample_proj"),
    ("stages.{i}.blocks.{j}", "stages_{i}/blocks_{j}"),  # gamma
    ("stages.{i}.blocks.{j}.conv_dw", "stages_{i}/blocks_{j}/conv_dw"),
    ("stages.{i}.blocks.{j}.norm", "stages_{i}/blocks_{j}/norm"),
    ("stages.{i}.blocks.{j}.mlp.fc1", "stages_{i}/blocks_{j}/mlp_fc1"),
    ("stages.{i}.blocks.{j}.mlp.fc2", "stages_{i}/blocks_{j}/mlp_fc2"),
    ("stages.{i}.blocks.{j}.psrp.down", "stages_{i}/blocks_{j}/psrp/down"),
    ("stages.{i}.blocks.{j}.psrp.up_weight", "stages_{i}/blocks_{j}/psrp/scale"),
    ("stages.{i}.blocks.{j}.psrp.up_bias", "stages_{i}/blocks_{j}/psrp/shift"),
    ("head.norm", "head/norm"),  # linear head
    ("head.fc", "head/fc"),
    ("head.cls_head.norm", "head/cls_norm"),  # MP head
    ("head.cls_head.fc", "head/fc_cls"),
    ("head.proj", "head/proj"),
    ("head.ln", "head/norm"),
    ("head.downblocks.0.0", "head/conv_0"),
    ("head.downblocks.0.2", "head/conv_1"),
    ("head.classifier2", "head/fc_cov"),
)
_NAME_PATTERNS = [(re.compile(re.escape(theirs).replace(r"\{i\}", r"(?P<i>\d+)")
                              .replace(r"\{j\}", r"(?P<j>\d+)")), ours)
                  for theirs, ours in NAME_MAP]


def our_path(name: str, tensor: np.ndarray) -> tuple[str, np.ndarray]:
  """A release state_dict entry -> (our variable path, the array in our layout)."""
  module, leaf = name.rsplit(".", 1)
  matches = [ours.format(**m.groupdict()) for pattern, ours in _NAME_PATTERNS
             if (m := pattern.fullmatch(module))]
  assert len(matches) == 1, (name, matches)
  if leaf == "weight":
    leaf = "kernel" if tensor.ndim > 1 else "scale"
  if tensor.ndim == 4:
    tensor = tensor.transpose(2, 3, 1, 0)
  elif tensor.ndim == 2:
    tensor = tensor.T
  return f"params/{matches[0]}/{leaf}", tensor


def from_release(ref: torch.nn.Module, target) -> dict:
  """The port's weights as variables with the structure of `target` (shapes), strictly:
  every variable filled exactly once with its shape, nothing of the port's left over."""
  want = {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(target).items()}
  got = dict(our_path(k, v.detach().numpy()) for k, v in ref.state_dict().items())
  assert len(got) == len(ref.state_dict()) and set(got) == set(want)
  for path, value in got.items():
    assert value.shape == want[path].shape, path
  return flax.traverse_util.unflatten_dict(
      {tuple(k.split("/")): v.astype(np.float32) for k, v in got.items()})


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def release_count(**kwargs) -> int:
  with torch.device("meta"):
    return sum(p.numel() for p in torch_convnext.ConvNeXt(**kwargs).parameters())


def test_convnext_b_parameter_counts_equal_the_release():
  x = jnp.zeros((1, 32, 32, 3))  # parameters do not depend on the image size
  counts = {}
  for name, (probing, tuning) in RELEASE_MODES.items():
    model = ConvNeXt(head=MAP_HEADS[name](num_classes=1000))
    params = jax.eval_shape(model.init, jax.random.key(0), x)["params"]
    counts[name] = count(params)
    assert counts[name] == release_count(probing_mode=probing, tuning_mode=tuning), name
  assert counts["linear"] == 88_591_464  # timm's convnext_base
  head = 1024 * 512 + 512 + 2 * 128 + 2 * 1024 + 1024 * 1000 + 1000 + 2 * 81 + 2883 * 1000 + 1000
  assert head == 4_436_266
  assert counts["mp"] == counts["linear"] - (2 * 1024 + 1024 * 1000 + 1000) + head == 92_000_682
  # PSRP: 3 * 16 * C per block (down, up_weight, up_bias without bias).
  psrp = 48 * (3 * 128 + 3 * 256 + 27 * 512 + 3 * 1024)
  assert counts["mp_plus"] == counts["mp"] + psrp == 92_866_986


IMAGES = np.random.default_rng(0).normal(size=(2, 64, 96, 3))  # non-square: 2 x 3 final map
REDUCED = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))


@pytest.mark.parametrize("name", list(RELEASE_MODES))
def test_reduced_network_equals_the_release_port(name):
  probing, tuning = RELEASE_MODES[name]
  ref = torch_convnext.randomize_(torch_convnext.ConvNeXt(
      num_classes=10, probing_mode=probing, tuning_mode=tuning, mp_hidden_dim=64, mp_heads=4,
      **REDUCED), seed=1).double()
  # A contiguous NCHW batch (as the release's loader gives) leaves the stem's norm on the
  # biased branch; the downsample norms see channels-last inputs: the unbiased branch.
  norms = {"stem": ref.stem.norm, **{i: ref.stages[i].downsample.norm for i in (1, 2, 3)}}
  contiguous = {}
  for key, norm in norms.items():
    norm.register_forward_hook(
        lambda m, inputs, out, key=key: contiguous.__setitem__(key, inputs[0].is_contiguous()))
  with torch.no_grad():
    want = ref(torch.from_numpy(np.ascontiguousarray(IMAGES.transpose(0, 3, 1, 2)))).numpy()
  assert contiguous == {"stem": True, 1: False, 2: False, 3: False}
  head = (MAP_HEADS[name](num_classes=10) if name == "linear"
          else MAP_HEADS[name](num_classes=10, proj_dim=64, num_groups=4))
  model = ConvNeXt(head=head, **REDUCED)
  x = IMAGES.astype(np.float32)
  variables = from_release(ref, jax.eval_shape(model.init, jax.random.key(0), x))
  got = jax.jit(model.apply)(variables, x)
  assert got.dtype == jnp.float32 and got.shape == (2, 10)
  # Measured 3e-7 (linear) to 6e-7 (MP+). The biased downsample norms would give 1e-2,
  # MPHead's contiguous channel groups 0.15.
  assert max_rel_diff(got, want) < 1e-5


def test_map_groups_interleave_the_channels_as_the_release():
  p = np.arange(2 * 2 * 3 * 8, dtype=np.float64).reshape(2, 2, 3, 8)  # [B, H, W, P]
  got = np.asarray(map_groups(jnp.asarray(p), 4))
  assert got.shape == (2, 6, 4, 2)
  np.testing.assert_array_equal(got[1, 5, 1], p[1, 1, 2, [1, 5]])  # channels g, g + G
  # The release: [B, P, N] -> reshape(B, P // G, G, N).permute(2, 0, 3, 1) = [G, B, N, c].
  release = torch_convnext.MomentProbingCNN.groups(
      torch.from_numpy(p.reshape(2, 6, 8).transpose(0, 2, 1).copy()), 4)
  np.testing.assert_array_equal(got, release.permute(1, 2, 0, 3).numpy())


def test_downsample_layer_norm_is_the_releases_unbiased_branch():
  ref = torch_convnext.randomize_(torch_convnext.LayerNorm2d(6), seed=2).double()
  x = np.random.default_rng(3).normal(size=(2, 6, 3, 4))
  with torch.no_grad():
    biased = ref(torch.from_numpy(x)).numpy()  # contiguous: F.layer_norm
    unbiased = ref(torch.from_numpy(x).to(memory_format=torch.channels_last)).numpy()
  params = {"params": {"scale": ref.weight.detach().numpy(), "bias": ref.bias.detach().numpy()}}
  nhwc = x.transpose(0, 2, 3, 1)
  for flag, want in ((False, biased), (True, unbiased)):
    got = LayerNorm(unbiased=flag).apply(params, nhwc).transpose(0, 3, 1, 2)
    assert max_rel_diff(got, want) < 1e-6
  assert max_rel_diff(unbiased, biased) > 0.05  # C = 6: std x sqrt(6 / 5)


def test_drop_path_rates_are_the_releases_linspace():
  depths = (3, 3, 27, 3)
  ours, theirs = drop_path_rates(depths, 0.1), torch_convnext.drop_path_rates(depths, 0.1)
  assert [len(s) for s in ours] == list(depths)
  np.testing.assert_allclose(np.concatenate(ours), np.concatenate(theirs), rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_mp_plus():
  """MP+ on a 4-block ConvNeXt with drop_path 0.5 and random (numpy) variables."""
  model = ConvNeXt(head=MPPlusMapHead(num_classes=5, proj_dim=32), depths=(1, 1, 1, 1),
                   dims=(8, 16, 32, 64), drop_path=0.5)
  x = np.random.default_rng(4).normal(size=(2, 64, 64, 3)).astype(np.float32)
  rng = np.random.default_rng(5)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)
  variables = jax.tree.map(lambda s: rng.normal(0, 0.3, s.shape).astype(s.dtype), shapes)
  return model, variables, x


def test_mp_plus_switches_psrp_on_and_mp_does_not(tiny_mp_plus):
  model, variables, x = tiny_mp_plus
  assert "psrp" in variables["params"]["stages_3"]["blocks_0"]
  mp = jax.eval_shape(ConvNeXt(head=MPMapHead(num_classes=5, proj_dim=32), depths=(1,) * 4,
                               dims=(8, 16, 32, 64)).init, jax.random.key(0), x)
  assert "psrp" not in mp["params"]["stages_3"]["blocks_0"]


def test_drop_path_only_in_training_and_only_from_the_dropout_rng(tiny_mp_plus):
  model, variables, x = tiny_mp_plus
  with pytest.raises(flax.errors.InvalidRngError, match="dropout"):
    jax.eval_shape(lambda v: model.apply(v, x, train=True), variables)
  train = jax.jit(lambda v, key: model.apply(v, x, train=True, rngs={"dropout": key}))
  first = train(variables, jax.random.key(1))
  np.testing.assert_array_equal(train(variables, jax.random.key(1)), first)
  assert not np.allclose(train(variables, jax.random.key(2)), first)
  evaluation = jax.jit(lambda v: model.apply(v, x))(variables)  # no rng needed
  no_drop = jax.jit(lambda v: model.clone(drop_path=0.0).apply(v, x, train=True))(variables)
  np.testing.assert_allclose(evaluation, no_drop, rtol=1e-6, atol=1e-6)
