"""ViT backbones and token heads: sizes (by `jax.eval_shape`, no real init of big models;
the releases' ports counted on PyTorch's meta device), the MP head, the blocks (MP+'s PSRP,
the DropCov DeiT's conventions), the DropCov head and the conv token stem against PyTorch
ports of the releases (tests/references), DropCov's token dropout, drop-path, dtype,
options. The ports' weights come across through `gcp.convert.vit`'s name tables; whole
release networks are compared in tests/convert/test_vit_weights.py."""
import functools
import operator

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gcp.convert import vit as vit_layouts
from gcp.heads import HEADS, TOKEN_HEADS, DropCovTokenHead, MPHead, mp_cross_covariance
from gcp.models import VIT_ARCHS, create_model
from gcp.models.vit import (STEMS, ConvTokenStem, Encoder, Encoder1DBlock, drop_path,
                            resample_posemb, sinusoid_posemb)

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


def release_count(build) -> int:
  """Parameters of a port built on the meta device (no memory), as the releases' train
  scripts log them: `sum(p.numel() for p in model.parameters())`, here without frozen
  ones (DropCov's fixed position table)."""
  with torch.device("meta"):
    model = build()
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_vit_b16_sizes():
  linear = shapes("vit_b16", "linear")["params"]
  backbone = count({k: v for k, v in linear.items() if k != "head"})
  assert backbone == vit_params(16, 768, 12, 3072, 197) == 85_798_656
  assert count(linear) == 86_567_656  # timm vit_base_patch16_224; SPEC: 86.57 M fine-tuned
  assert count(linear["head"]) == 769_000  # SPEC §4 linear probe: 0.77 M
  mp = shapes("vit_b16", "mp")["params"]
  assert count(mp["head"]) == 4_047_146  # SPEC §4
  assert count({k: v for k, v in mp.items() if k != "head"}) == backbone
  assert count(mp) == 89_845_802 == release_count(
      lambda: torch_mp.VisionTransformer(probing_mode="mp"))
  plus = shapes("vit_b16", "mp_plus")["params"]
  psrp = count([b["psrp"] for n, b in plus["Transformer"].items() if n.startswith("encoderblock_")])
  assert psrp == 442_368  # SPEC §4: ~0.44 M over 12 blocks
  assert count(plus) == count(mp) + psrp == release_count(
      lambda: torch_mp.VisionTransformer(probing_mode="mp", tuning_mode="psrp"))


@pytest.mark.parametrize("arch, want", [("vit_s16", 22_050_664), ("deit_s16", 22_050_664),
                                        ("deit_t16", 5_717_416)])
def test_small_vit_sizes_equal_timm(arch, want):
  assert count(shapes(arch, "linear")) == want  # timm vit_small / deit_small / deit_tiny


def from_release(ref: torch.nn.Module, prefix: str, layout: str, module, *inputs,
                 at: tuple[str, ...]) -> dict:
  """A port's weights as the variables of `module`, a part of our ViT at path `at` (e.g.
  ("head",)) whose release names start with `prefix`, through the layout's name table."""
  nest = lambda tree: functools.reduce(lambda t, k: {k: t}, reversed(at), tree)
  target = {c: nest(v) for c, v in
            jax.eval_shape(module.init, jax.random.key(0), *inputs).items()}
  tensors = {prefix + k: v for k, v in ref.state_dict().items()
             if not k.endswith("num_batches_tracked")}
  loaded = vit_layouts.import_variables(tensors, target, layout)
  return {c: functools.reduce(operator.getitem, at, v) for c, v in loaded.items()}


@pytest.mark.parametrize("mean_removal", ["scalar", "channel"])
def test_mp_head_equals_pytorch_port(mean_removal):
  # D 32, 16 patch tokens, 4 groups of 16 channels: 16 x 16 maps -> 7 x 7 -> 3 x 3.
  ref = torch_mp.randomize_(torch_mp.MomentProbingViT(
      in_dim=32, hidden_dim=64, num_heads=4, num_classes=5, mean_removal=mean_removal)).eval()
  tokens = np.random.default_rng(1).normal(size=(3, 17, 32)).astype(np.float32)
  with torch.no_grad():
    x = torch.from_numpy(tokens)
    want = ref(x[:, 0], x).numpy()
  head = MPHead(num_classes=5, proj_dim=64, num_groups=4, mean_removal=mean_removal)
  variables = from_release(ref, "head.", "moment_probing", head, tokens, at=("head",))
  got = head.apply(variables, tokens)
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
  ref = torch_mp.randomize_(torch_mp.Block(32, 2, 64, tuning_mode="psrp"), seed=3).eval()
  x = np.random.default_rng(4).normal(size=(2, 17, 32)).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
  block = Encoder1DBlock(num_heads=2, mlp_dim=64, psrp_rank=16)
  variables = from_release(ref, "blocks.0.", "moment_probing", block, x,
                           at=("Transformer", "encoderblock_0"))
  np.testing.assert_allclose(block.apply(variables, x), want, rtol=1e-5, atol=1e-5)


def test_encoder_with_the_conv_stem_conventions_equals_the_dropcov_port():
  """The DropCov DeiT's blocks and final norm: qkv without bias, LayerNorm eps 1e-5. Small
  weights and tokens that cancel the sinusoidal table keep every LayerNorm's input variance
  near 1e-5, where eps 1e-5 against 1e-6 changes the output by far more than the tolerance."""
  assert STEMS["conv"] == (False, 1e-5)
  ref = torch_dropcov_vit.DeitDrop(32, 2, 2, 64, num_classes=5, cov_heads=2, wr_dim=4)
  torch_mp.randomize_(ref, seed=5)
  with torch.no_grad():
    for m in ref.modules():
      if isinstance(m, torch.nn.Linear):  # branches of order 1e-3: the stream stays small
        m.weight.mul_(0.01), m.bias.mul_(0.01) if m.bias is not None else None
  encoder = torch.nn.ModuleDict({"blocks": ref.blocks, "norm": ref.norm})
  table = sinusoid_posemb(17, 32)
  x = (1e-3 * np.random.default_rng(6).normal(size=(2, 17, 32)) - table).astype(np.float32)
  with torch.no_grad():
    h = torch.from_numpy(x) + ref.pos_embed[:, :17]
    for block in ref.blocks:
      h = block(h)
    want = ref.norm(h).numpy()
  make = lambda eps: Encoder(depth=2, num_heads=2, mlp_dim=64, posemb="sinusoidal",
                             qkv_bias=False, ln_eps=eps)
  variables = from_release(encoder, "", "dropcov_deit", make(1e-5), x, at=("Transformer",))
  assert "bias" not in variables["params"]["encoderblock_0"][
      "MultiHeadDotProductAttention_1"]["query"]
  np.testing.assert_allclose(make(1e-5).apply(variables, x), want, rtol=1e-4, atol=1e-4)
  assert np.abs(make(1e-6).apply(variables, x) - want).max() > 0.01


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
  assert set(VIT_ARCHS) == {"vit_s16", "vit_b16", "deit_t16", "deit_s16", "deit_b16",
                            "dropcov_deit_t", "dropcov_t2t_vit_14", "vit_test"}
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
  blocks (per layer conv 1x1 c -> 32 and conv 3x3 32 -> 16, ReLUs without parameters: no
  BatchNorm) each followed by a transition (BN(c) + conv 1x1 c -> 128), conv 1x1
  (128 -> width, bias)."""
  hidden = bn_size * growth
  total, c = 9 * 3 * token_dim + token_dim, token_dim
  for _ in range(3):
    total += sum((c + j * growth) * hidden + 9 * hidden * growth for j in range(layers))
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
  assert count(params["conv_stem"]) == conv_stem_params(384) == 297_792
  # The rest is DeiT-S without its patch embedding, its learned position embedding and the
  # query / key / value biases (the release's qkv_bias=False).
  rest = count({k: v for k, v in params.items() if k not in ("head", "conv_stem")})
  assert rest == (vit_params(16, 384, 12, 1536, 197) - (16 * 16 * 3 * 384 + 384) - 197 * 384
                  - 12 * 3 * 384)
  assert "posembed_input" not in params["Transformer"]
  # The release's count (its main.py logs 75,648 more: the fixed sinusoidal table, a
  # Parameter with requires_grad=False that the model does not store).
  assert count(params) == 25_586_576 == release_count(torch_dropcov_vit.DeitDrop)
  assert set(variables["batch_stats"]) == {"conv_stem"}
  tokens = jax.eval_shape(lambda: ConvTokenStem(384).init_with_output(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3))))[0]
  assert tokens.shape == (1, 14, 14, 384)  # 196 tokens at 224 px, as the release


TOKENS = (np.random.default_rng(6).normal(size=(3, 17, 32)) + 0.5).astype(np.float32)


def _dropcov_heads(mean_removal="scalar"):
  """The release's classifier (port) and ours, 2 heads of 4 channels on D = 32, 16 patch
  tokens."""
  ref = torch_mp.randomize_(torch_dropcov_vit.Classifier(32, 5, num_heads=2, wr_dim=4,
                                                         mean_removal=mean_removal), seed=7)
  head = DropCovTokenHead(num_classes=5, cov_heads=2, cov_head_dim=4, mean_removal=mean_removal)
  return ref, head, from_release(ref, "classifier.", "dropcov_deit", head, TOKENS, at=("head",))


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


def test_conv_stem_in_training_uses_batch_statistics_as_pytorch():
  # Two dense layers per block instead of six: the same code path at a third of the compile.
  ref = torch_mp.randomize_(torch_dropcov_vit.DenseNetStyleModule(32, layers=2), seed=13)
  stem = ConvTokenStem(32, layers=2)
  variables = from_release(ref.train(), "visual_tokens.tokens.", "dropcov_deit", stem, SMALL,
                           at=("conv_stem",))
  with torch.no_grad():
    want = ref(torch.from_numpy(SMALL.transpose(0, 3, 1, 2))).numpy()
  got, updates = jax.jit(functools.partial(stem.apply, train=True, mutable=["batch_stats"]))(
      variables, SMALL)
  np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want, rtol=1e-5, atol=1e-5)
  # PyTorch's momentum 0.1 on the running mean (the running variance is updated with the
  # biased batch variance here, the unbiased one in PyTorch: not compared).
  np.testing.assert_allclose(updates["batch_stats"]["stage_5"]["norm"]["mean"],
                             ref.stage[5].norm.running_mean.numpy(), rtol=1e-5, atol=1e-6)


def test_stem_option_is_checked():
  with pytest.raises(ValueError, match="unknown stem 'dense'.*patch, conv"):
    jax.eval_shape(create_model("vit_test", head="linear", num_classes=3, stem="dense").init,
                   jax.random.key(0), SMALL)
  with pytest.raises(ValueError, match="multiple of 16"):
    jax.eval_shape(create_model("vit_test", head="linear", num_classes=3, stem="conv").init,
                   jax.random.key(0), jnp.zeros((1, 40, 40, 3)))
