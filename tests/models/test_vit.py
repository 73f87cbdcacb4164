"""ViT backbones and token heads: sizes (by `jax.eval_shape`, no real init of big models),
the MP head and a PSRP block against PyTorch ports of SPEC §4, drop-path, dtype, options."""
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gcp.convert.vit import timm_to_arrays
from gcp.heads import HEADS, TOKEN_HEADS, MPHead, mp_cross_covariance
from gcp.models import VIT_ARCHS, create_model
from gcp.models.vit import Encoder1DBlock, drop_path, resample_posemb

from references import torch_mp

SMALL = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def shapes(arch, head, num_classes=1000, size=224):
  model = create_model(arch, head=head, num_classes=num_classes)
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
  assert set(TOKEN_HEADS) == {"linear", "mp", "mp_plus"} and not set(TOKEN_HEADS) & set(HEADS)
  with pytest.raises(ValueError, match="unknown head 'isqrt'.*linear, mp, mp_plus"):
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
