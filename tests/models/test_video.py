"""Video models (SPEC §5): CPTM, CSTP, the auxiliary head and TCP against a PyTorch port
written from SPEC with weights copied across, the branch competitions, the auxiliary-head
contract, inflation from an image ResNet, and create_model routing.

Parity: our float32 outputs against the port run in float64, max |ours - ref| / max |ref|
<= 1e-5, for eval mode (random running statistics) and train mode (batch statistics).
Models are tiny (width 8, one block per stage, T = 3, 64 px) so the suite stays fast;
full-size models are only traced (shapes and parameter counts).
"""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gcp import checkpoint
from gcp.heads import GAPHead
from gcp.models import create_model, resnet, video
from references import torch_video
from references.numerics import max_rel_diff
from references.torch_resnet import randomize_

TOL = 1e-5  # max_rel_diff of our float32 output against the float64 port
# Inflated video backbone against the image model, both float32 (only summation order
# differs: the snippet stem adds zero channels).
INFLATION_TOL = 1e-6
B, T = 2, 3
TINY = dict(stage_sizes=(1, 1, 1, 1), width=8)


def normal(shape, seed):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def to_torch(x):  # [B, T, H, W, C] -> float64 [B, C, T, H, W]
  return torch.from_numpy(np.asarray(x, np.float64)).permute(0, 4, 1, 2, 3)


def port_variables(port, module, *inputs):
  """The port (randomised, float64) and its weights in `module`'s variable tree."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))
  randomize_(port)
  variables = torch_video.to_flax(port, shapes)
  return port.double(), variables


def run(module, variables, *inputs, train):
  """Our output (float32, numpy) in eval or train mode (batch statistics)."""
  def apply(variables, *inputs):
    if train:
      return module.apply(variables, *inputs, train=True, mutable=["batch_stats"])[0]
    return module.apply(variables, *inputs)
  return np.asarray(jax.jit(apply)(variables, *inputs))


def count(params) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


# ----------------------------------------------------------------- blocks in isolation

@pytest.mark.parametrize("fusion", video.FUSIONS)
def test_cptm_matches_port(fusion):
  # 8 clips: in train mode the attention's BatchNorm normalises [B, 32] pooled features by
  # their batch statistics, and over 2 clips that amplifies float32 rounding to ~1e-5 (the
  # port itself in float32 errs by up to 5e-6 there; over 8 clips both stay near 1e-6).
  x = normal((8, T, 6, 6, 32), 0)
  ours = video.CPTM(fusion)
  port, variables = port_variables(torch_video.CPTM(32, fusion), ours, x)
  assert count(variables["params"]) == torch_video.num_params(port)
  for train in (False, True):
    port.train(train)
    with torch.no_grad():
      ref = port(to_torch(x)).permute(0, 2, 3, 4, 1).numpy()
    assert max_rel_diff(run(ours, variables, x, train=train), ref) < TOL, train


def test_cstp_matches_port():
  res4, res5 = normal((B, T, 8, 8, 64), 1), normal((B, T, 4, 4, 128), 2)
  ours = video.CSTPHead()
  port, variables = port_variables(torch_video.CSTP(64, 128, T), ours, res4, res5)
  assert count(variables["params"]) == torch_video.num_params(port)
  for train in (False, True):
    port.train(train)
    with torch.no_grad():
      ref = port(to_torch(res4), to_torch(res5)).numpy()
    assert max_rel_diff(run(ours, variables, res4, res5, train=train), ref) < TOL, train


def test_aux_head_matches_port():
  res4 = normal((B, T, 8, 8, 64), 3)
  ours = video.AuxHead(num_classes=5, features=128, dropout=0.0)
  port, variables = port_variables(torch_video.AuxHead(64, 128, 5), ours, res4)
  assert count(variables["params"]) == torch_video.num_params(port)
  for train in (False, True):
    port.train(train)
    with torch.no_grad():
      ref = port(to_torch(res4)).numpy()
    assert max_rel_diff(run(ours, variables, res4, train=train), ref) < TOL, train


def test_tcp_head_pools_all_positions_of_the_clip_into_8256_features():
  res5 = normal((B, T, 3, 3, 64), 4)
  ours = video.TCPHead()  # 64 -> 256 -> 128, iSQRT(3)
  port, variables = port_variables(torch_video.TCP(64), ours, res5, res5)
  assert count(variables["params"]) == torch_video.num_params(port)
  out = run(ours, variables, res5, res5, train=False)
  assert out.shape == (B, 8256)
  port.eval()
  with torch.no_grad():
    ref = port(to_torch(res5)).numpy()
  assert max_rel_diff(out, ref) < TOL


def test_full_size_parameter_counts_equal_the_port():
  model = create_model("tsn_resnet50", head="cstp", num_classes=174, cptm=True)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, 8, 64, 64, 3))))["params"]
  with torch.device("meta"):
    ports = {"cptm1": torch_video.CPTM(256), "cptm3": torch_video.CPTM(1024),
             "head": torch_video.CSTP(1024, 2048, 8),
             "aux_head": torch_video.AuxHead(1024, 2048, 174)}
  for name, port in ports.items():
    assert count(params[name]) == torch_video.num_params(port), name


# -------------------------------------------------------------- AMS-Net, whole network

@pytest.fixture(scope="module")
def amsnet():
  """Tiny AMS-Net (CPTM + CSTP) and its port: (model, variables, port, clip)."""
  clip = normal((B, T, 64, 64, 3), 5)
  model = video.VideoResNet(head=video.CSTPHead(), num_classes=5, cptm=True, **TINY)
  port = torch_video.VideoResNet((1, 1, 1, 1), T, 5, width=8, cptm=True)
  port, variables = port_variables(port, model, clip)
  return model, variables, port.eval(), clip


@pytest.fixture(scope="module")
def amsnet_eval(amsnet):
  """Eval logits and the branch weights of every competition (`BranchAttention` outputs)."""
  model, variables, _, clip = amsnet
  is_attention = lambda module, _: isinstance(module, video.BranchAttention)
  logits, state = jax.jit(lambda v, x: model.apply(
      v, x, capture_intermediates=is_attention, mutable=["intermediates"]))(variables, clip)
  return np.asarray(logits), state["intermediates"]


def test_amsnet_matches_port(amsnet, amsnet_eval):
  _, variables, port, clip = amsnet
  assert count(variables["params"]) == torch_video.num_params(port)
  with torch.no_grad():
    ref = port(to_torch(clip)).numpy()
  assert max_rel_diff(amsnet_eval[0], ref) < TOL


def test_tcp_network_matches_port():
  # layer4 keeps stride 1 (4 x 4 at 64 px): 3 x 16 positions, reductions 256 -> 32 -> 16.
  clip = normal((B, T, 64, 64, 3), 10)
  model = video.VideoResNet(head=video.TCPHead(reduction_dim=16, inner_dim=32),
                            num_classes=5, **TINY)
  port = torch_video.VideoResNet((1, 1, 1, 1), T, 5, width=8, head="tcp", tcp_dims=(32, 16))
  port, variables = port_variables(port, model, clip)
  assert count(variables["params"]) == torch_video.num_params(port)
  with torch.no_grad():
    ref = port(to_torch(clip)).numpy()
  assert max_rel_diff(run(model, variables, clip, train=False), ref) < TOL


def test_branch_weights_sum_to_one_per_channel(amsnet_eval):
  sown = flax.traverse_util.flatten_dict(amsnet_eval[1])
  weights = {"/".join(p[:-1]): w[0] for p, w in sown.items()}
  # CPTM: 3 temporal branches of C/4 channels; CSTP: 4 levels of 128, then 2 paths of 256.
  assert {k: w.shape for k, w in weights.items()} == {
      "cptm1/attention": (B, 3, 8), "cptm3/attention": (B, 3, 32),
      "head/fuse1_attention": (B, 4, 128), "head/fuse2_attention": (B, 2, 256)}
  for name, w in weights.items():
    np.testing.assert_allclose(np.sum(w, axis=1), 1.0, atol=1e-6, err_msg=name)
    assert np.all(w > 0) and np.ptp(w) > 1e-3, name  # a real competition, not uniform


def test_aux_logits_are_sown_in_training_only(amsnet):
  model, variables, _, clip = amsnet
  key = jax.random.key(0)
  # Parameters of the auxiliary head exist from init on, although init runs in eval mode.
  assert "aux_head" in jax.eval_shape(lambda: model.init(key, clip))["params"]
  apply = lambda train: jax.eval_shape(lambda v: model.apply(
      v, clip, train=train, mutable=["batch_stats", "aux_logits"],
      rngs={"dropout": key}), variables)
  logits, state = apply(True)
  assert jax.tree.map(lambda s: s.shape, state["aux_logits"]) == {"aux": ((B, 5),)}
  assert logits.shape == (B, 5) and logits.dtype == jnp.float32
  _, state = apply(False)
  assert "aux_logits" not in state
  # Evaluation does not run the auxiliary head: it works without its variables.
  without_aux = {k: {m: v for m, v in tree.items() if m != "aux_head"}
                 for k, tree in variables.items()}
  assert jax.eval_shape(lambda v: model.apply(v, clip), without_aux).shape == (B, 5)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
  model = create_model("tsn_resnet50", head="tcp", num_classes=5, width=8,
                       dtype="bfloat16", cptm=True)
  clip = jnp.zeros((1, 2, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), clip))
  assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert jax.eval_shape(lambda v: model.apply(v, clip), variables).dtype == jnp.float32


# ------------------------------------------------------------- inflation from an image

def random_variables(shapes, seed):
  """Values for a variable tree of ShapeDtypeStructs: fan-in scaled kernels, BN scales
  near 1, positive variances, small biases and means."""
  rng = np.random.default_rng(seed)
  def value(path, s):
    leaf = path[-1].key
    if leaf == "kernel":
      return rng.normal(size=s.shape) * (2 / np.prod(s.shape[:-1])) ** 0.5
    if leaf in ("scale", "var"):
      return rng.uniform(0.5, 1.5, s.shape)
    return 0.1 * rng.normal(size=s.shape)
  return jax.tree_util.tree_map_with_path(
      lambda p, s: jnp.asarray(value(p, s), s.dtype), shapes)


def init_random(model, x, seed):
  return random_variables(jax.eval_shape(lambda: model.init(jax.random.key(0), x)), seed)


def layer4_output(model, variables, x):
  captured = jax.jit(lambda v, x: model.apply(
      v, x, capture_intermediates=lambda m, method: (m.name, method) == ("layer4_0",
                                                                       "__call__"),
      mutable=["intermediates"])[1])(variables, x)
  return np.asarray(captured["intermediates"]["layer4_0"]["__call__"][0])


@pytest.fixture(scope="module")
def image_resnet():
  """Tiny image ResNet (Bottleneck, GAP head), random variables, and a clip."""
  model = resnet.ResNet(block=resnet.Bottleneck, head=GAPHead(), num_classes=7, **TINY)
  clip = normal((B, T, 32, 32, 3), 6)
  frames = clip.reshape(B * T, 32, 32, 3)
  variables = init_random(model, frames, 7)
  return variables, clip, layer4_output(model, variables, frames)


def test_inflated_backbone_equals_the_image_model_per_frame(image_resnet):
  image_variables, clip, image_features = image_resnet
  model = video.VideoResNet(head=video.VideoGAPHead(), num_classes=5, **TINY)
  inflated, fresh = checkpoint.inflate_image_variables(image_variables,
                                                       init_random(model, clip, 8))
  assert fresh == ["fc"]
  assert max_rel_diff(layer4_output(model, inflated, clip), image_features) < INFLATION_TOL


def test_snippet_stem_repeats_the_rgb_kernel(image_resnet):
  image_variables, clip, image_features = image_resnet
  model = video.VideoResNet(head=video.VideoGAPHead(), num_classes=5, snippet_frames=3,
                            **TINY)
  snippets = np.concatenate([clip, np.zeros_like(clip), np.zeros_like(clip)], axis=-1)
  inflated, _ = checkpoint.inflate_image_variables(image_variables,
                                                   init_random(model, snippets, 9))
  rgb = image_variables["params"]["conv1"]["kernel"]
  np.testing.assert_array_equal(inflated["params"]["conv1"]["kernel"],
                                np.concatenate([rgb] * 3, axis=2))
  # Frame-major stacking (RGB RGB RGB): a snippet whose other frames are black sees the
  # image model's features of its first frame.
  assert max_rel_diff(layer4_output(model, inflated, snippets),
                      image_features) < INFLATION_TOL


def zeros_like_init(model, shape):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def test_resnet50_checkpoints_initialise_amsnet_star():
  image = zeros_like_init(create_model("resnet50", head="isqrt", num_classes=1000,
                                       reduction_dim=128, width=16), (1, 64, 64, 3))
  amsnet = zeros_like_init(create_model("tsn_resnet50", head="cstp", num_classes=174,
                                        cptm=True, snippet_frames=3, width=16),
                           (1, 2, 64, 64, 9))
  image["params"]["layer4_2"]["conv3"]["kernel"][:] = 1.0
  inflated, _ = checkpoint.inflate_image_variables(image, amsnet)
  assert np.all(inflated["params"]["layer4_2"]["conv3"]["kernel"] == 1.0)
  assert jax.tree.structure(inflated) == jax.tree.structure(amsnet)


def test_architecture_mismatch_is_reported():
  image = zeros_like_init(create_model("resnet18", head="gap", num_classes=10, width=8),
                          (1, 32, 32, 3))
  tsn = zeros_like_init(create_model("tsn_resnet50", head="gap", num_classes=10, width=8),
                        (1, 2, 32, 32, 3))
  with pytest.raises(ValueError, match=(
      r"(?s)does not match the video model's.*missing \(\d+\):.*wrong shape \(\d+\):.*"
      r"params/layer1_0/conv1/kernel: expected \(1, 1, 8, 8\), found \(3, 3, 8, 8\).*"
      r"same depth and width")):
    checkpoint.inflate_image_variables(image, tsn)


# ------------------------------------------------------------------- create_model

def test_create_model_builds_the_published_configurations():
  amsnet_star = create_model("tsn_resnet50", head="cstp", num_classes=174, cptm=True,
                             snippet_frames=3)
  assert isinstance(amsnet_star, video.VideoResNet) and amsnet_star.input_rank == 5
  assert isinstance(amsnet_star.head, video.CSTPHead)
  assert (amsnet_star.stage_sizes, amsnet_star.cptm, amsnet_star.cptm_fusion,
          amsnet_star.snippet_frames) == ((3, 4, 6, 3), True, "competitive", 3)
  tcp = create_model("tsn_resnet50", head="tcp", num_classes=400)
  assert (tcp.head.reduction_dim, tcp.head.inner_dim, tcp.head.num_iters) == (128, 256, 3)
  assert create_model("tsn_resnet50", head="tcp", num_classes=400,
                      reduction_dim=64).head.reduction_dim == 64
  tsn = create_model("tsn_resnet50", head="gap", num_classes=174, reduction_dim=128,
                     cptm_fusion="average", small_input=True)  # other models' options
  assert isinstance(tsn.head, video.VideoGAPHead) and not tsn.cptm


@pytest.mark.parametrize("kwargs, match", [
    (dict(head="isqrt"), r"unknown head 'isqrt'; valid heads: gap, cstp, tcp"),
    (dict(arch="resnet50", head="cstp"), r"unknown head 'cstp'; valid heads: gap, cov"),
    (dict(cptm_fusion="max"), r"unknown cptm_fusion 'max'; valid: competitive, average"),
    (dict(snippet_frames=0), r"snippet_frames must be a positive integer"),
])
def test_bad_arguments_name_the_problem(kwargs, match):
  args = dict(arch="tsn_resnet50", head="cstp", num_classes=10) | kwargs
  with pytest.raises(ValueError, match=match):
    create_model(**args)


def test_rejects_clips_of_the_wrong_shape():
  model = create_model("tsn_resnet50", head="gap", num_classes=10, snippet_frames=3)
  for shape in [(1, 2, 32, 32, 3), (1, 32, 32, 9)]:
    with pytest.raises(ValueError, match=r"expects clips \[B, T, H, W, 9\]"):
      jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape)))
