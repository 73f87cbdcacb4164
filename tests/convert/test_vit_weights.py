"""ViT weights: AugReg `.npz` round trip, position-embedding resampling, mismatch reports,
timm state_dicts (a timm-named PyTorch ViT from tests/references/torch_mp.py; the real
timm where it imports)."""
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gcp import checkpoint
from gcp.convert import ConversionError, convert, detect_format, vit
from gcp.models import create_model

from references import torch_mp

IMAGES = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)


def _random_variables(model, size=32, seed=0):
  variables = model.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
  return jax.tree.unflatten(tree, [np.asarray(x + 0.1 * jax.random.normal(k, x.shape))
                                   for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def linear_vit():
  model = create_model("vit_test", head="linear", num_classes=10)
  variables = _random_variables(model)
  return model, variables, np.asarray(model.apply(variables, IMAGES))


def test_npz_names_are_the_augreg_layout(linear_vit):
  names = set(vit.to_arrays(linear_vit[1]))
  for name in ("embedding/kernel", "cls", "Transformer/posembed_input/pos_embedding",
               "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel",
               "Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias",
               "Transformer/encoderblock_0/LayerNorm_2/scale",
               "Transformer/encoder_norm/bias", "head/kernel", "head/bias"):
    assert name in names


def test_npz_round_trip_gives_identical_logits(linear_vit, tmp_path):
  model, variables, want = linear_vit
  path = str(tmp_path / "vit.npz")
  vit.write_npz(path, variables)
  assert detect_format(path) == "vit_npz"
  spec, loaded = convert(path)
  assert spec == {"arch": "vit_test", "head": "linear", "num_classes": 10, "dtype": "float32"}
  np.testing.assert_array_equal(create_model(**spec).apply(loaded, IMAGES), want)


def test_backbone_only_for_a_new_mp_head(linear_vit, tmp_path):
  _, variables, _ = linear_vit
  arrays = vit.to_arrays(variables)
  arrays["head/kernel"] = np.zeros((32, 21843), np.float32)  # an ImageNet-21k classifier
  arrays["head/bias"] = np.zeros((21843,), np.float32)
  arrays["pre_logits/kernel"] = np.zeros((32, 32), np.float32)
  mp = create_model("vit_test", head="mp_plus", num_classes=5, proj_dim=32)
  init = mp.init(jax.random.key(3), IMAGES)
  loaded = vit.from_arrays(arrays, init, load_head=False)
  assert set(loaded["params"]) == {"embedding", "cls", "Transformer"}
  assert "psrp" not in loaded["params"]["Transformer"]["encoderblock_0"]
  merged, kept = checkpoint.merge_pretrained(init, loaded, dont_load="^params/head/|/psrp/")
  assert any("/psrp/" in k for k in kept) and any(k.startswith("params/head/") for k in kept)
  np.testing.assert_array_equal(merged["params"]["cls"], variables["params"]["cls"])
  with pytest.raises(ConversionError, match=r"(?s)missing \(10\):\n    head/proj.*"
                                           r"unexpected \(3\):\n    head/bias"):
    vit.from_arrays(arrays, init, load_head=True)
  # convert() does the same: backbone from the file, a fresh head and fresh PSRP adapters.
  path = str(tmp_path / "i21k.npz")
  np.savez(path, **arrays)
  spec, converted = convert(path, head="mp_plus", num_classes=5, proj_dim=32)
  assert spec["head"] == "mp_plus" and spec["num_classes"] == 5
  np.testing.assert_array_equal(converted["params"]["embedding"]["kernel"],
                                variables["params"]["embedding"]["kernel"])
  assert "psrp" in converted["params"]["Transformer"]["encoderblock_1"]


def test_position_embedding_is_resampled_for_another_resolution(linear_vit, tmp_path):
  model, variables, _ = linear_vit
  path = str(tmp_path / "vit.npz")
  vit.write_npz(path, variables)
  spec, loaded = convert(path, image_size=48)  # 4 x 4 patches -> 6 x 6
  old = variables["params"]["Transformer"]["posembed_input"]["pos_embedding"]
  new = loaded["params"]["Transformer"]["posembed_input"]["pos_embedding"]
  assert old.shape == (1, 17, 32) and new.shape == (1, 37, 32)
  np.testing.assert_array_equal(new[0, 0], old[0, 0])  # the class token's entry is kept
  np.testing.assert_allclose(new[0, 1:].reshape(6, 6, 32)[[0, 0, -1, -1], [0, -1, 0, -1]],
                             old[0, 1:].reshape(4, 4, 32)[[0, 0, -1, -1], [0, -1, 0, -1]],
                             rtol=1e-6)  # corners aligned, as big_vision
  logits = create_model(**spec).apply(loaded, np.zeros((1, 48, 48, 3), np.float32))
  assert logits.shape == (1, 10)
  again = vit.resample_variables(variables, 37)
  np.testing.assert_allclose(again["params"]["Transformer"]["posembed_input"]["pos_embedding"],
                             new, rtol=1e-6)
  with pytest.raises(ConversionError, match="pos_embedding: expected"):
    vit.from_arrays(vit.to_arrays(variables), loaded, resample=False)


def test_mismatched_npz_is_reported_and_nothing_loads(linear_vit):
  _, variables, _ = linear_vit
  arrays = vit.to_arrays(variables)
  del arrays["Transformer/encoderblock_1/LayerNorm_0/scale"]
  arrays["Transformer/encoderblock_2/LayerNorm_0/scale"] = np.ones(32, np.float32)
  arrays["Transformer/encoder_norm/bias"] = np.ones(48, np.float32)
  with pytest.raises(ConversionError) as e:
    vit.from_arrays(arrays, variables, source="bad.npz")
  report = str(e.value)
  assert "bad.npz does not match the architecture" in report
  assert "missing (1):\n    Transformer/encoderblock_1/LayerNorm_0/scale" in report
  assert "unexpected (1):\n    Transformer/encoderblock_2/LayerNorm_0/scale" in report
  assert "Transformer/encoder_norm/bias: expected (32,), found (48,)" in report
  with pytest.raises(ConversionError, match="not one of"):
    vit.infer_spec({**arrays, "embedding/kernel": np.zeros((4, 4, 3, 32))})


def _timm_reference(seed=0):
  torch.manual_seed(seed)
  ref = torch_mp.VisionTransformer(image_size=32, patch=8, dim=32, depth=2, num_heads=2,
                                   mlp_dim=64, num_classes=10).eval()
  with torch.no_grad():
    for name, p in ref.named_parameters():
      p.add_(0.1 * torch.randn(p.shape))
  return ref


def _torch_logits(ref, images=IMAGES):
  with torch.no_grad():
    return ref(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def test_timm_layout_state_dict_loads_and_logits_agree(linear_vit, tmp_path):
  model, variables, _ = linear_vit
  ref = _timm_reference()
  state = ref.state_dict()
  assert {"patch_embed.proj.weight", "cls_token", "pos_embed", "blocks.1.attn.qkv.weight",
          "blocks.0.attn.proj.bias", "blocks.0.mlp.fc2.weight", "norm.weight",
          "head.bias"} <= set(state)
  loaded = vit.from_timm(state, variables)
  np.testing.assert_allclose(model.apply(loaded, IMAGES), _torch_logits(ref),
                             rtol=1e-5, atol=1e-5)  # float32 both sides
  # Through the CLI path: a .pth (DeiT's {"model": ...} wrapping) reads as a timm ViT.
  path = str(tmp_path / "deit.pth")
  torch.save({"model": state}, path)
  spec, converted = convert(path)
  assert spec["arch"] == "vit_test" and spec["num_classes"] == 10
  np.testing.assert_allclose(create_model(**spec).apply(converted, IMAGES), _torch_logits(ref),
                             rtol=1e-5, atol=1e-5)


def test_mismatched_timm_state_dict_is_reported(linear_vit):
  _, variables, _ = linear_vit
  state = {k: v.numpy() for k, v in _timm_reference().state_dict().items()}
  state["dist_token"] = np.zeros((1, 1, 32), np.float32)  # a distilled DeiT
  del state["blocks.1.mlp.fc1.bias"]
  with pytest.raises(ConversionError) as e:
    vit.from_timm(state, variables)
  assert "dist_token" in str(e.value)
  assert "Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias" in str(e.value)


def test_real_timm_vit_loads_and_logits_agree(linear_vit):
  timm = pytest.importorskip(
      "timm", reason="timm is not installed: its pip wheel pulls torchvision (a 5.5 GB CUDA "
      "build here); the timm layout is tested above with a timm-named PyTorch ViT")
  from timm.models.vision_transformer import VisionTransformer
  model, variables, _ = linear_vit
  torch.manual_seed(0)
  ref = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                          mlp_ratio=2.0, num_classes=10).eval()
  with torch.no_grad():
    for p in ref.parameters():
      p.add_(0.1 * torch.randn(p.shape))
  loaded = vit.from_timm(ref.state_dict(), variables)
  np.testing.assert_allclose(model.apply(loaded, IMAGES), _torch_logits(ref),
                             rtol=1e-4, atol=1e-4)
  del timm
