"""Swin-B with the linear, MP and MP+ heads against a PyTorch port of the Moment Probing
release (tests/references/torch_swin.py): parameter counts at full size, the logits of a
reduced network for every head, the shifted-window masks and relative position index, and
the release's window clamp and input-size limits. The port's weights come across through
`to_ours`, an explicit table from the release's state_dict names to our variable paths."""
import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gcp.heads import LinearTokenHead, MPHead, MPPlusHead
from gcp.models.swin import (SwinTransformer, relative_position_index, shifted_window_mask,
                             stage_window)

from references import torch_mp, torch_swin
from references.numerics import max_rel_diff

# head -> (our head class, the release's probing_mode, tuning_mode)
HEADS = {"linear": (LinearTokenHead, "linear", None), "mp": (MPHead, "mp", None),
         "mp_plus": (MPPlusHead, "mp", "psrp")}
# 224 px, so every stage keeps window 7 (56, 28, 14, 7 tokens a side): stage 3 runs a
# shifted block, stage 4's second block is the release's clamped (unshifted) one.
REDUCED = dict(embed_dim=16, depths=(1, 1, 2, 2), num_heads=(1, 2, 2, 4), window_size=7)
MP_SIZES = dict(proj_dim=64, num_groups=4)  # 16-channel groups: 16 x 16 -> 7 x 7 -> 3 x 3

# The release's module names -> our module paths. Their parameters: Linear weight `[out,
# in]` -> kernel (transposed), conv weight OIHW -> kernel HWIO, LayerNorm weight -> scale,
# bias -> bias. The relative position tables keep their name and layout; the buffers have
# no variable here (computed from the window and the resolution).
_BLOCK = r"layers\.(\d+)\.blocks\.(\d+)\."
MODULES = (
    (r"patch_embed\.(proj|norm)", r"patch_embed_\1"),
    (_BLOCK + r"(norm1|norm2)", r"layers_\1/blocks_\2/\3"),
    (_BLOCK + r"attn\.(qkv|proj)", r"layers_\1/blocks_\2/attn_\3"),
    (_BLOCK + r"mlp\.(fc1|fc2)", r"layers_\1/blocks_\2/mlp_\3"),
    (_BLOCK + r"psrp\.down", r"layers_\1/blocks_\2/psrp/down"),
    (_BLOCK + r"psrp\.up_weight", r"layers_\1/blocks_\2/psrp/scale"),
    (_BLOCK + r"psrp\.up_bias", r"layers_\1/blocks_\2/psrp/shift"),
    (r"layers\.(\d+)\.downsample\.(norm|reduction)", r"layers_\1/downsample_\2"),
    (r"norm", "norm"),
    (r"head\.proj", "head/proj"),
    (r"head\.ln", "head/norm"),
    (r"head\.downblocks\.0\.0", "head/conv_0"),
    (r"head\.downblocks\.0\.2", "head/conv_1"),
    (r"head\.classifier1", "head/fc_cls"),
    (r"head\.classifier2", "head/fc_cov"),
    (r"head", "head"),  # the linear head: head/{kernel, bias}
)
TABLE = (_BLOCK + r"attn\.relative_position_bias_table",
         r"layers_\1/blocks_\2/attn_relative_position_bias_table")
BUFFERS = _BLOCK + r"(attn\.relative_position_index|attn_mask)"


def to_ours(state_dict) -> dict:
  """The release's state_dict -> our `params` tree (float32 numpy)."""
  flat = {}
  for name, tensor in state_dict.items():
    if re.fullmatch(BUFFERS, name):
      continue
    a = tensor.detach().cpu().numpy().astype(np.float32)
    if re.fullmatch(TABLE[0], name):
      flat[re.sub(TABLE[0], TABLE[1], name)] = a
      continue
    module, leaf = name.rsplit(".", 1)
    path = next((re.sub(f"^{p}$", ours, module) for p, ours in MODULES
                 if re.fullmatch(p, module)), None)
    if path is None or leaf not in ("weight", "bias"):
      raise KeyError(f"no rule for the release's {name}")
    if leaf == "bias":
      flat[f"{path}/bias"] = a
    elif a.ndim == 4:
      flat[f"{path}/kernel"] = a.transpose(2, 3, 1, 0)
    else:
      flat[f"{path}/{'kernel' if a.ndim == 2 else 'scale'}"] = a.T
  return flax.traverse_util.unflatten_dict(flat, sep="/")


def ours(head: str, num_classes: int, **sizes) -> SwinTransformer:
  """Our Swin-B, or with `sizes` a reduced one whose MP head has `MP_SIZES`."""
  head_cls = HEADS[head][0]
  mp = MP_SIZES if sizes and head_cls is not LinearTokenHead else {}
  return SwinTransformer(head_cls(num_classes=num_classes, **mp), **sizes)


def port(head: str, num_classes: int, **sizes) -> torch.nn.Module:
  """The release's Swin-B, or with `sizes` the reduced one `ours` builds."""
  _, probing_mode, tuning_mode = HEADS[head]
  mp = dict(mp_hidden_dim=MP_SIZES["proj_dim"], mp_heads=MP_SIZES["num_groups"]) if sizes else {}
  return torch_swin.SwinTransformer(num_classes=num_classes, probing_mode=probing_mode,
                                    tuning_mode=tuning_mode, **mp, **sizes)


def shapes(tree) -> dict:
  return {"/".join(p): tuple(v.shape) for p, v in flax.traverse_util.flatten_dict(tree).items()}


def count(tree) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def abstract_params(model, size=224) -> dict:
  return jax.eval_shape(lambda: model.init(jax.random.key(0),
                                           jnp.zeros((1, size, size, 3))))["params"]


@pytest.fixture(scope="module")
def swin_b():
  """Our full-size Swin-B parameter shapes for every head (traced, never allocated)."""
  return {head: abstract_params(ours(head, 1000)) for head in HEADS}


def test_swin_b_parameter_counts_equal_the_release(swin_b):
  def release_count(head):  # on the meta device: no memory; buffers are not parameters
    with torch.device("meta"):
      return sum(p.numel() for p in port(head, 1000).parameters())

  counts = {head: count(params) for head, params in swin_b.items()}
  assert counts == {head: release_count(head) for head in HEADS}
  backbone = count({k: v for k, v in swin_b["linear"].items() if k != "head"})
  assert backbone == 86_743_224  # timm swin_base_patch4_window7_224 without its head
  assert counts["linear"] == backbone + 1024 * 1000 + 1000 == 87_768_224
  # MP head: proj 1024 -> 512, LayerNorm 128, 2 convs 3x3x3x3, classifiers 1024 and 2883.
  assert counts["mp"] - backbone == 524_800 + 256 + 162 + 1_025_000 + 2_884_000 == 4_434_218
  # PSRP: 3 x 16 x width per block, widths 128 x 2, 256 x 2, 512 x 18, 1024 x 2.
  assert counts["mp_plus"] - counts["mp"] == 48 * 12_032 == 577_536
  table = swin_b["mp_plus"]["layers_3"]["blocks_1"]["attn_relative_position_bias_table"]
  assert table.shape == (13 * 13, 32)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)


@pytest.mark.parametrize("head", list(HEADS))
def test_reduced_swin_equals_the_release_port(head, images):
  torch.manual_seed(0)  # the port's default init, which randomize_ perturbs
  ref = torch_mp.randomize_(port(head, 5, **REDUCED), seed=1).eval()
  model = ours(head, 5, **REDUCED)
  params = to_ours(ref.state_dict())
  assert shapes(params) == shapes(abstract_params(model))  # the name map is one-to-one
  got = jax.jit(model.apply)({"params": params}, images)
  with torch.no_grad():
    want = ref.double()(torch.from_numpy(images).double().permute(0, 3, 1, 2)).numpy()
  assert got.dtype == jnp.float32 and got.shape == (2, 5)
  diff = max_rel_diff(got, want)
  print(f"{head}: max_rel_diff {diff:.2e}")
  assert diff < 1e-5


@pytest.mark.parametrize("resolution", [56, 28, 14, 7])
def test_window_clamp_mask_and_index_equal_the_release_buffers(resolution):
  block = torch_swin.SwinTransformerBlock(4, (resolution, resolution), 1, window_size=7,
                                          shift_size=3)
  window, shift = stage_window(resolution, resolution, 7)
  assert (window, shift) == (block.window_size, block.shift_size)
  np.testing.assert_array_equal(relative_position_index(window),
                                block.attn.relative_position_index.numpy())
  if resolution == 7:  # clamped: one window, no shift, no mask (Swin-B's last stage)
    assert (window, shift) == (7, 0) and block.attn_mask is None
  else:
    mask = shifted_window_mask(resolution, resolution, window, shift)
    assert mask.shape == ((resolution // 7) ** 2, 49, 49)
    np.testing.assert_array_equal(mask, block.attn_mask.numpy())


def test_window_clamp_to_a_smaller_window_gives_the_release_tables():
  """Window 14 at 224 px: stage 3 (14 x 14) and stage 4 (7 x 7) are clamped, stage 4 to a
  7 x 7 window (a 13 x 13 table), and neither shifts."""
  sizes = dict(REDUCED, window_size=14)
  ref = port("mp_plus", 5, **sizes)
  assert [(b.window_size, b.shift_size) for layer in ref.layers for b in layer.blocks] == [
      (14, 0), (14, 0), (14, 0), (14, 0), (7, 0), (7, 0)]
  params = abstract_params(ours("mp_plus", 5, **sizes))
  assert shapes(to_ours(ref.state_dict())) == shapes(params)
  assert params["layers_3"]["blocks_0"]["attn_relative_position_bias_table"].shape == (169, 4)


@pytest.mark.parametrize("size, release_error, match", [
    (112, AssertionError, "not even"),  # 28, 14, 7: patch merging of the 7 x 7 map
    # 48, 24, 12 tokens a side, not multiples of window 7: the release fails building the
    # first shifted block's mask (here stage 3's), or in its forward.
    (192, RuntimeError, "does not split"),
])
def test_other_input_sizes_fail_as_in_the_release(size, release_error, match):
  with pytest.raises(release_error), torch.no_grad():
    port("mp", 5, img_size=size, **REDUCED).eval()(torch.zeros(1, 3, size, size))
  with pytest.raises(ValueError, match=match):
    abstract_params(ours("mp", 5, **REDUCED), size)
