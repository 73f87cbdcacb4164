"""ViT backbones and token heads: sizes (by `jax.eval_shape`, no real init of big models),
the MP head, a PSRP block, the DropCov head and the conv-stem DeiT against PyTorch ports of
SPEC §4, DropCov's token dropout, drop-path, dtype, options."""
import functools

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gcp.convert.vit import timm_to_arrays
from gcp.heads import HEADS, TOKEN_HEADS, DropCovTokenHead, MPHead, mp_cross_covariance
from gcp.models import VIT_ARCHS, create_model
from gcp.models.vit import (ConvTokenStem, Encoder1DBlock, drop_path, resample_posemb,
                            sinusoid_posemb)

from references import torch_dropcov_vit, torch_mp

SMALL = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def shapes(arch, head, num_classes=1000, size=224, **options):
  model = create_model(arch, head=head, num_classes=num_classes, **options)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def vit_params(patch, width, depth, mlp, tokens) -> int:
  """A class-token ViT's backbone from its shape: patch embedding, cls, position
  embedding, per block 2 LayerNorms + q/k/v/out + MLP, final LayerNorm."""
  block = 2 * 2 * width + 4 * (width * width + width) + 2 * width * mlp + mlp + width
  return (patch * patch * 3 * width + width) + width + tokens * width + depth * block + 2 * width


def test_vit_b16_sizes():
  linear = shapes("vit_b16", "linear")["params"]
  backbone = count({k: v for k, v in linear.items() if k != "head"})
  assert backbone == vit_params(16, 768, 12, 3072, 197) == 85_798_656
  assert count(linear) == 86_567_656  # timm vit_base_patch16_224; SPEC: 86.57 M fine-tuned
  assert count(linear["head"]) == 769_000  # SPEC §4 linear probe: 0.77 M
  mp = shapes("vit_b16", "mp")["params"]
  assert count(mp["head"]) == 4_047_146  # SPEC §4
  assert count({k: v for k, v in mp.items() if k != "head"}) == backbone
  plus = shapes("vit_b16", "mp_plus")["params"]
  psrp = count([b["psrp"] for n, b in plus["Transformer"].items() if n.startswith("encoderblock_")])
  assert psrp == 442_368  # SPEC §4: ~0.44 M over 12 blocks
  assert count(plus) == count(mp) + psrp


@pytest.mark.parametrize("arch, want", [("vit_s16", 22_050_664), ("deit_s16", 22_050_664),
                                        ("deit_t16", 5_717_416)])
def test_small_vit_sizes_equal_timm(arch, want):
  assert count(shapes(arch, "linear")) == want  # timm vit_small / deit_small / deit_tiny


def _randomise(module: torch.nn.Module, seed=0):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      noise = torch.randn(p.shape, generator=gen) * 0.2
      p.copy_(1 + noise if "norm" in name and name.endswith("weight") else noise)
  return module


def _mp_variables(ref: torch_mp.MPHead) -> dict:
  t = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  conv = lambda w: w.transpose(2, 3, 1, 0)
  return {"params": {
      "proj": {"kernel": t["proj.weight"].T, "bias": t["proj.bias"]},
      "norm": {"scale": t["norm.weight"], "bias": t["norm.bias"]},
      "conv_0": {"kernel": conv(t["conv0.weight"])}, "conv_1": {"kernel": conv(t["conv1.weight"])},
      "fc_cls": {"kernel": t["fc_cls.weight"].T, "bias": t["fc_cls.bias"]},
      "fc_cov": {"kernel": t["fc_cov.weight"].T, "bias": t["fc_cov.bias"]}}}


@pytest.mark.parametrize("mean_removal", ["scalar", "channel"])
def test_mp_head_equals_pytorch_port(mean_removal):
  # D 32, 16 patch tokens, 4 groups of 16 channels: 16 x 16 maps -> 7 x 7 -> 3 x 3.
  ref = _randomise(torch_mp.MPHead(dim=32, num_classes=5, proj_dim=64, groups=4,
                                   mean_removal=mean_removal)).eval()
  tokens = np.random.default_rng(1).normal(size=(3, 17, 32)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(tokens)).numpy()
  head = MPHead(num_classes=5, proj_dim=64, num_groups=4, mean_removal=mean_removal)
  got = head.apply(_mp_variables(ref), tokens)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 both sides


def test_mp_mean_removal_modes_differ_and_scalar_is_one_scalar():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 10, 3, 4)) + 3.0, jnp.float32)
  scalar, channel = mp_cross_covariance(x, "scalar"), mp_cross_covariance(x, "channel")
  assert scalar.shape == channel.shape == (2, 4, 4, 2)
  assert not np.allclose(scalar, channel)
  # By hand: subtract the mean over tokens and channels of each group, C = h0^T h1 / N.
  h = x - x.mean(axis=(1, 3), keepdims=True)
  cov = np.einsum("bna,bnc->bac", h[:, :, 0], h[:, :, 1]) / 10
  np.testing.assert_allclose(scalar[..., 0], cov / np.linalg.norm(cov, axis=1, keepdims=True),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(scalar, axis=1), 1.0, rtol=1e-5)
  with pytest.raises(ValueError, match="mean_removal"):
    mp_cross_covariance(x, "none")


def test_psrp_block_equals_pytorch_port():
  ref = _randomise(torch_mp.Block(32, 2, 64, psrp_rank=4), seed=3).eval()
  x = np.random.default_rng(4).normal(size=(2, 17, 32)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
  sd = {f"blocks.0.{k}": v.numpy() for k, v in ref.state_dict().items() if "psrp" not in k}
  prefix = "Transformer/encoderblock_0/"
  params = {tuple(k[len(prefix):].split("/")): v for k, v in timm_to_arrays(sd, 2).items()}
  for part in ("down", "scale", "shift"):
    params["psrp", part, "kernel"] = ref.state_dict()[f"psrp_{part}.weight"].numpy().T
  block = Encoder1DBlock(num_heads=2, mlp_dim=64, psrp_rank=4)
  got = block.apply({"params": flax.traverse_util.unflatten_dict(params)}, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 both sides


@pytest.fixture(scope="module")
def mp_plus():
  model = create_model("vit_test", head="mp_plus", num_classes=7, proj_dim=32, drop_path=0.5)
  return model, model.init(jax.random.key(0), SMALL)


def test_mp_plus_switches_psrp_on_and_starts_as_the_frozen_network(mp_plus):
  model, variables = mp_plus
  blocks = variables["params"]["Transformer"]
  assert all("psrp" in blocks[f"encoderblock_{i}"] for i in range(2))
  mp = create_model("vit_test", head="mp", num_classes=7, proj_dim=32)
  mp_vars = {"params": jax.tree.map(lambda x: x, variables["params"])}
  for i in range(2):
    del mp_vars["params"]["Transformer"][f"encoderblock_{i}"]["psrp"]
  assert count(mp_vars) < count(variables)
  # scale and shift start at zero: MP+ at initialisation computes MP's function.
  np.testing.assert_allclose(model.apply(variables, SMALL), mp.apply(mp_vars, SMALL),
                             rtol=1e-6, atol=1e-6)


def test_drop_path_only_in_training_and_only_from_the_dropout_rng(mp_plus):
  model, variables = mp_plus
  train = lambda seed: model.apply(variables, SMALL, train=True,
                                   rngs={"dropout": jax.random.key(seed)})
  evaluation = model.apply(variables, SMALL)
  assert not np.allclose(train(1), train(2))
  np.testing.assert_array_equal(train(1), train(1))
  no_drop = create_model("vit_test", head="mp_plus", num_classes=7, proj_dim=32)
  np.testing.assert_allclose(no_drop.apply(variables, SMALL, train=True), evaluation,
                             rtol=1e-6, atol=1e-6)


def test_drop_path_rate_and_scaling():
  x = jnp.ones((20000, 3))
  y = drop_path(x, 0.25, jax.random.key(0), deterministic=False)
  dropped = np.all(np.asarray(y) == 0, axis=1)
  assert abs(dropped.mean() - 0.25) < 0.02
  np.testing.assert_allclose(np.asarray(y)[~dropped], 1 / 0.75, rtol=1e-6)
  np.testing.assert_array_equal(drop_path(x, 0.25, None, deterministic=True), x)


def test_bfloat16_compute_stays_close_and_returns_float32():
  f32 = create_model("vit_test", head="linear", num_classes=4)
  variables = f32.init(jax.random.key(0), SMALL)
  variables = jax.tree.map(lambda v: v + 0.05, variables)  # a non-zero classifier
  bf16 = create_model("vit_test", head="linear", num_classes=4, dtype="bfloat16")
  want, got = f32.apply(variables, SMALL), bf16.apply(variables, SMALL)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05)


def test_create_model_vit_registry_and_options():
  assert set(VIT_ARCHS) == {"vit_s16", "vit_b16", "deit_t16", "deit_s16", "vit_test"}
  assert set(TOKEN_HEADS) == {"linear", "mp", "mp_plus", "dropcov"}
  assert set(TOKEN_HEADS) & set(HEADS) == {"dropcov"}  # the arch picks the registry
  assert isinstance(create_model("vit_test", head="dropcov", num_classes=3).head,
                    DropCovTokenHead)
  with pytest.raises(ValueError, match="unknown head 'isqrt'.*linear, mp, mp_plus, dropcov"):
    create_model("vit_test", head="isqrt", num_classes=3)
  with pytest.raises(ValueError, match="unknown head 'mp'"):
    create_model("resnet18", head="mp", num_classes=3)
  with pytest.raises(ValueError, match="unknown model option"):
    create_model("vit_test", head="mp", num_classes=3, not_an_option=1)
  # CNN-only options (one config serves every model) never reshape a ViT.
  model = create_model("vit_b16", head="linear", num_classes=3, width=64, reduction_dim=128,
                       num_iters=3, drop_path=0.1)
  assert (model.width, model.drop_path) == (768, 0.1)
  resnet = create_model("resnet18", head="gap", num_classes=3, drop_path=0.1, width=32)
  assert resnet.width == 32


def test_image_size_must_fit_the_position_embedding():
  model = create_model("vit_test", head="linear", num_classes=3)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), SMALL))
  with pytest.raises(ValueError, match="resample"):
    jax.eval_shape(model.apply, variables, jnp.zeros((1, 48, 48, 3)))
  with pytest.raises(ValueError, match="multiple of the patch size"):
    jax.eval_shape(model.apply, variables, jnp.zeros((1, 36, 36, 3)))


def test_resample_posemb_is_big_vision_bilinear_and_keeps_the_class_token():
  scipy_ndimage = pytest.importorskip("scipy.ndimage")
  posemb = np.random.default_rng(5).normal(size=(1, 1 + 14 * 14, 6)).astype(np.float32)
  out = resample_posemb(posemb, 1 + 24 * 24)
  assert out.shape == (1, 1 + 24 * 24, 6)
  np.testing.assert_array_equal(out[0, 0], posemb[0, 0])
  grid = posemb[0, 1:].reshape(14, 14, 6)
  want = scipy_ndimage.zoom(grid, (24 / 14, 24 / 14, 1), order=1)  # big_vision's call
  np.testing.assert_allclose(out[0, 1:].reshape(24, 24, 6), want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(resample_posemb(posemb, posemb.shape[1]), posemb)
  with pytest.raises(ValueError, match="square grid"):
    resample_posemb(posemb, 30)


# --- DropCov on vision transformers (SPEC §4) ---------------------------------------------

def conv_stem_params(width, token_dim=64, growth=16, layers=6, bn_size=2, out=128) -> int:
  """The conv token stem from its description: conv 3x3 (3 -> 64, bias), three dense
  blocks (per layer BN(c) + conv 1x1 c -> 32 + BN(32) + conv 3x3 32 -> 16) each followed by
  a transition (BN(c) + conv 1x1 c -> 128), conv 1x1 (128 -> width, bias)."""
  hidden = bn_size * growth
  total, c = 9 * 3 * token_dim + token_dim, token_dim
  for _ in range(3):
    total += sum(2 * (c + j * growth) + (c + j * growth) * hidden + 2 * hidden
                 + 9 * hidden * growth for j in range(layers))
    c += layers * growth
    total += 2 * c + c * out
    c = out
  return total + out * width + width


def test_dropcov_deit_s_sizes():
  variables = shapes("deit_s16", "dropcov", stem="conv")
  params = variables["params"]
  # SPEC §4: Dense(384 -> 3 * 6 * 24, no bias) + Dense(6 * 24 * 24 = 3456 -> 1000)
  # + Dense(384 -> 1000).
  assert count(params["head"]) == 384 * 432 + (3456 * 1000 + 1000) + (384 * 1000 + 1000)
  assert count(params["head"]) == 4_007_888
  assert count(params["conv_stem"]) == conv_stem_params(384) == 304_224
  # The rest is DeiT-S without its patch embedding and its learned position embedding.
  rest = count({k: v for k, v in params.items() if k not in ("head", "conv_stem")})
  assert rest == vit_params(16, 384, 12, 1536, 197) - (16 * 16 * 3 * 384 + 384) - 197 * 384
  assert "posembed_input" not in params["Transformer"]
  assert set(variables["batch_stats"]) == {"conv_stem"}
  tokens = jax.eval_shape(lambda: ConvTokenStem(384).init_with_output(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3))))[0]
  assert tokens.shape == (1, 14, 14, 384)  # 196 tokens at 224 px, as the release


TOKENS = (np.random.default_rng(6).normal(size=(3, 17, 32)) + 0.5).astype(np.float32)


def _dropcov_head_variables(ref: torch_dropcov_vit.DropCovHead) -> dict:
  t = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  return {"params": {
      "qkv": {"kernel": t["wr.weight"].T},
      "fc_cls": {"kernel": t["cls_fc.weight"].T, "bias": t["cls_fc.bias"]},
      "fc_cov": {"kernel": t["visual_fc.weight"].T, "bias": t["visual_fc.bias"]}}}


def _dropcov_heads(mean_removal="scalar"):
  """The PyTorch port and ours, 2 heads of 4 channels on D = 32, 16 patch tokens."""
  ref = _randomise(torch_dropcov_vit.DropCovHead(32, 5, heads=2, head_dim=4,
                                                 mean_removal=mean_removal), seed=7)
  head = DropCovTokenHead(num_classes=5, cov_heads=2, cov_head_dim=4, mean_removal=mean_removal)
  return ref, head, _dropcov_head_variables(ref)


@pytest.mark.parametrize("mean_removal", ["scalar", "channel"])
def test_dropcov_head_equals_pytorch_port(mean_removal):
  ref, head, variables = _dropcov_heads(mean_removal)
  with torch.no_grad():
    want = ref.eval()(torch.from_numpy(TOKENS)).numpy()
  got = head.apply(variables, TOKENS)  # evaluation: no rng needed
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 both sides
  with pytest.raises(ValueError, match="mean_removal"):
    DropCovTokenHead(num_classes=5, mean_removal="none").init(jax.random.key(0), TOKENS)


def _captured(state, name):
  return np.asarray(state["intermediates"][name]["__call__"][0])


def test_dropcov_head_in_training_equals_pytorch_port_given_the_same_masks():
  ref, head, variables = _dropcov_heads()
  got, state = jax.jit(functools.partial(head.apply, train=True, capture_intermediates=True))(
      variables, TOKENS, rngs={"dropout": jax.random.key(8)})
  qk = _captured(state, "qkv").reshape(3, 16, 3, 2, 4)[:, :, :2]
  dropped = _captured(state, "token_dropout")  # [B, N, q/k, heads, c]
  token_mask = (dropped[:, :, 0, :, 0] != 0) / 0.8  # [B, N, heads]: 0 or 1 / (1 - p)
  np.testing.assert_allclose(dropped, qk * token_mask[:, :, None, :, None], rtol=1e-6)
  cov = _captured(state, "cov_dropout")  # [B, heads, c, c]
  cov_mask = (cov != 0) / 0.5
  assert 0 < token_mask.mean() < 1 / 0.8 and 0 < cov_mask.mean() < 2  # both masks dropped
  with torch.no_grad():
    want = ref.train()(torch.from_numpy(TOKENS),
                       token_mask=torch.from_numpy(token_mask.transpose(0, 2, 1)).float(),
                       cov_mask=torch.from_numpy(cov_mask).float()).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 both sides


def test_dropcov_token_dropout_rate_scaling_and_no_randomness_at_evaluation():
  head = DropCovTokenHead(num_classes=3, cov_heads=4, cov_head_dim=8)
  tokens = np.random.default_rng(9).normal(size=(4, 257, 16)).astype(np.float32)
  variables = head.init(jax.random.key(0), tokens)
  apply = jax.jit(lambda key: head.apply(variables, tokens, train=True,
                                         rngs={"dropout": key}, capture_intermediates=True))
  train = lambda seed: apply(jax.random.key(seed))
  logits, state = train(1)
  qk = _captured(state, "qkv").reshape(4, 256, 3, 4, 8)[:, :, :2]
  dropped = _captured(state, "token_dropout")
  kept = dropped != 0
  # Whole tokens: one decision per (sample, token, head), shared by q, k and the channels.
  assert np.array_equal(kept, np.broadcast_to(kept[:, :, :1, :, :1], kept.shape))
  decisions = kept[:, :, 0, :, 0]  # 4 x 256 x 4 = 4096 Bernoulli(0.8) draws
  assert abs(1 - decisions.mean() - 0.2) < 0.03  # std of the rate 0.0063: 4.8 std
  np.testing.assert_allclose(dropped[kept], qk[kept] / 0.8, rtol=1e-6)
  # Independent per head (the release's Dropout2d over [B * heads, N, c]): two heads
  # disagree with probability 2 * 0.2 * 0.8 = 0.32; 1024 pairs, std 0.015.
  assert abs(np.mean(decisions[..., 0] != decisions[..., 1]) - 0.32) < 0.07
  cov = _captured(state, "cov_dropout")  # 4 x 4 x 8 x 8 = 1024 draws, std 0.016
  assert abs(np.mean(cov == 0) - 0.5) < 0.07
  np.testing.assert_array_equal(train(1)[0], logits)
  assert not np.allclose(train(2)[0], logits)
  # Evaluation draws nothing (no rng given) and is the training graph without dropout.
  evaluation = head.apply(variables, tokens)
  no_dropout = DropCovTokenHead(num_classes=3, cov_heads=4, cov_head_dim=8, token_drop=0.0,
                                cov_drop=0.0).apply(variables, tokens, train=True)
  np.testing.assert_allclose(evaluation, no_dropout, rtol=1e-6, atol=1e-6)
  assert not np.allclose(evaluation, logits, rtol=0, atol=1e-5)


def test_sinusoid_posemb_is_the_fixed_table():
  table = sinusoid_posemb(50, 24)
  assert table.shape == (1, 50, 24) and table.dtype == np.float32
  np.testing.assert_array_equal(table[0, 0], np.tile([0.0, 1.0], 12))  # the class token
  np.testing.assert_allclose(table[0, 7, 4:6], [np.sin(7 / 10000 ** (4 / 24)),
                                                np.cos(7 / 10000 ** (4 / 24))], rtol=1e-6)
  np.testing.assert_allclose(table, torch_dropcov_vit.sinusoid_table(50, 24).numpy(),
                             rtol=1e-6, atol=1e-6)


def _randomise_batch_norms(module: torch.nn.Module, seed=0):
  """BatchNorm affine parameters and running statistics away from 1 and 0 (the convs keep
  PyTorch's default initialisation, which keeps 40 layers' activations of order one)."""
  gen = torch.Generator().manual_seed(seed)
  noise = lambda t: 0.2 * torch.randn(t.shape, generator=gen)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(1 + noise(m.weight)), m.bias.copy_(noise(m.bias))
        m.running_mean.copy_(noise(m.running_mean))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
  return module


def _conv_stem_variables(stem: torch_dropcov_vit.ConvTokenStem) -> dict:
  """The release's stem names -> {'params': ..., 'batch_stats': ...} of `ConvTokenStem`."""
  params, stats = {}, {}
  arr = lambda t: t.detach().numpy().copy()  # not a view: PyTorch training updates in place
  conv = lambda m, *path: params.update({path + ("kernel",): arr(m.weight).transpose(2, 3, 1, 0)})

  def bn(m, *path):
    params.update({path + ("scale",): arr(m.weight), path + ("bias",): arr(m.bias)})
    stats.update({path + ("mean",): arr(m.running_mean), path + ("var",): arr(m.running_var)})

  conv(stem.stem[0], "conv")
  params["conv", "bias"] = arr(stem.stem[0].bias)
  for i in range(3):
    for j, layer in enumerate(stem.stage[2 * i].values()):
      path = (f"dense_{i}", f"layer_{j}")
      bn(layer.norm1, *path, "norm1"), conv(layer.conv1, *path, "conv1")
      bn(layer.norm2, *path, "norm2"), conv(layer.conv2, *path, "conv2")
    bn(stem.stage[2 * i + 1].norm, f"transition_{i}", "norm")
    conv(stem.stage[2 * i + 1].conv, f"transition_{i}", "conv")
  conv(stem.transition, "proj")
  params["proj", "bias"] = arr(stem.transition.bias)
  unflatten = flax.traverse_util.unflatten_dict
  return {"params": unflatten(params), "batch_stats": unflatten(stats)}


def test_conv_stem_dropcov_vit_equals_pytorch_port():
  """A vit_test-sized DropCov DeiT with the conv stem, the PyTorch port's random weights
  copied across, in evaluation."""
  torch.manual_seed(10)
  ref = torch_dropcov_vit.DropCovViT(num_classes=5).eval()
  for part in (ref.blocks, ref.norm, ref.head):
    _randomise(part, seed=11)
  torch.nn.init.normal_(ref.cls_token, std=0.2)
  _randomise_batch_norms(ref.stem, seed=12)
  sd = {k: v.numpy() for k, v in ref.state_dict().items()}
  backbone = timm_to_arrays({k: v for k, v in sd.items()
                             if k.startswith(("blocks.", "norm.", "cls_token"))}, 2)
  stem = _conv_stem_variables(ref.stem)
  variables = {"params": {**flax.traverse_util.unflatten_dict(
                   {tuple(k.split("/")): v for k, v in backbone.items()}),
                          "conv_stem": stem["params"],
                          "head": _dropcov_head_variables(ref.head)["params"]},
               "batch_stats": {"conv_stem": stem["batch_stats"]}}
  model = create_model("vit_test", head="dropcov", num_classes=5, stem="conv", cov_heads=2,
                       cov_head_dim=4)
  expected = jax.eval_shape(model.init, jax.random.key(0), SMALL)
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda x: x.shape, expected)
  with torch.no_grad():
    want = ref(torch.from_numpy(SMALL.transpose(0, 3, 1, 2))).numpy()
  got = jax.jit(model.apply)(variables, SMALL)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)  # float32 both sides


def test_conv_stem_in_training_uses_batch_statistics_as_pytorch():
  # Two dense layers per block instead of six: the same code path at a third of the compile.
  ref = _randomise_batch_norms(torch_dropcov_vit.ConvTokenStem(32, layers=2), seed=13).train()
  variables = _conv_stem_variables(ref)
  with torch.no_grad():
    want = ref(torch.from_numpy(SMALL.transpose(0, 3, 1, 2))).numpy()
  got, updates = jax.jit(functools.partial(ConvTokenStem(32, layers=2).apply, train=True,
                                           mutable=["batch_stats"]))(variables, SMALL)
  np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want, rtol=1e-5, atol=1e-5)
  # PyTorch's momentum 0.1 on the running mean (the running variance is updated with the
  # biased batch variance here, the unbiased one in PyTorch: not compared).
  np.testing.assert_allclose(updates["batch_stats"]["transition_2"]["norm"]["mean"],
                             ref.stage[5].norm.running_mean.numpy(), rtol=1e-5, atol=1e-6)


def test_stem_option_is_checked():
  with pytest.raises(ValueError, match="unknown stem 'dense'.*patch, conv"):
    jax.eval_shape(create_model("vit_test", head="linear", num_classes=3, stem="dense").init,
                   jax.random.key(0), SMALL)
  with pytest.raises(ValueError, match="multiple of 16"):
    jax.eval_shape(create_model("vit_test", head="linear", num_classes=3, stem="conv").init,
                   jax.random.key(0), jnp.zeros((1, 40, 40, 3)))
