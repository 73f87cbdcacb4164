"""ViT weights in every layout of `gcp.convert.vit`: AugReg `.npz` round trip, position-
embedding resampling, mismatch reports, timm state_dicts, and the releases' own files
(Moment Probing's MP / MP+ / linear probe, the DropCov DeiT), written by PyTorch ports of
their networks (tests/references) the way their training scripts save them, converted
(EMA weights by default), compared by logits, and exported back into the port with
`load_state_dict(strict=True)`. Full-size layouts are compared by shape, on PyTorch's meta
device and `jax.eval_shape`, without building the big models."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from gcp import checkpoint
from gcp.convert import ConversionError, convert, detect_format, layouts, pytorch, vit
from gcp.models import create_model

from references import torch_dropcov_vit, torch_mp, torch_resnet
from references.numerics import max_rel_diff

IMAGES = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)


def _random_variables(model, size=32, seed=0):
  # Jitted, and the noise from numpy: eagerly, every op and leaf shape compiles on its own.
  variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
  rng = np.random.default_rng(seed + 1)
  return jax.tree.map(
      lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape, np.float32), variables)


@pytest.fixture(scope="module")
def linear_vit():
  model = create_model("vit_test", head="linear", num_classes=10)
  variables = _random_variables(model)
  return model, variables, np.asarray(model.apply(variables, IMAGES))


def test_npz_names_are_the_augreg_layout(linear_vit):
  names = set(vit.export_variables(linear_vit[1], "augreg"))
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
  # The augreg layout of `python -m gcp.convert --export` writes the same arrays.
  assert layouts.get("augreg").fits(spec) == "" and layouts.get("augreg").format == "vit_npz"
  with np.load(path) as saved:
    exported = layouts.get("augreg").export(loaded, spec)
    assert set(exported) == set(saved.files)
    for name, value in exported.items():
      np.testing.assert_array_equal(value, saved[name])


def test_backbone_only_for_a_new_mp_head(linear_vit, tmp_path):
  _, variables, _ = linear_vit
  arrays = vit.export_variables(variables, "augreg")
  arrays["head/kernel"] = np.zeros((32, 21843), np.float32)  # an ImageNet-21k classifier
  arrays["head/bias"] = np.zeros((21843,), np.float32)
  arrays["pre_logits/kernel"] = np.zeros((32, 32), np.float32)
  mp = create_model("vit_test", head="mp_plus", num_classes=5, proj_dim=32)
  init = mp.init(jax.random.key(3), IMAGES)
  loaded = vit.import_variables(arrays, init, "augreg", load_head=False)
  assert set(loaded["params"]) == {"embedding", "cls", "Transformer"}
  assert "psrp" not in loaded["params"]["Transformer"]["encoderblock_0"]
  merged, kept = checkpoint.merge_pretrained(init, loaded, dont_load="^params/head/|/psrp/")
  assert any("/psrp/" in k for k in kept) and any(k.startswith("params/head/") for k in kept)
  np.testing.assert_array_equal(merged["params"]["cls"], variables["params"]["cls"])
  with pytest.raises(ConversionError, match=r"(?s)missing \(10\):\n    head/.*"
                                           r"unexpected \(3\):\n    head/"):
    vit.import_variables(arrays, init, "augreg", load_head=True)
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
    vit.import_variables(vit.export_variables(variables, "augreg"), loaded, "augreg",
                         resample=False)


def test_mismatched_npz_is_reported_and_nothing_loads(linear_vit):
  _, variables, _ = linear_vit
  arrays = vit.export_variables(variables, "augreg")
  del arrays["Transformer/encoderblock_1/LayerNorm_0/scale"]
  arrays["Transformer/encoderblock_2/LayerNorm_0/scale"] = np.ones(32, np.float32)
  arrays["Transformer/encoder_norm/bias"] = np.ones(48, np.float32)
  with pytest.raises(ConversionError) as e:
    vit.import_variables(arrays, variables, "augreg", source="bad.npz")
  report = str(e.value)
  assert "bad.npz does not match the architecture" in report
  assert "missing (1):\n    Transformer/encoderblock_1/LayerNorm_0/scale" in report
  assert "unexpected (1):\n    Transformer/encoderblock_2/LayerNorm_0/scale" in report
  assert "Transformer/encoder_norm/bias: expected (32,), found (48,)" in report
  with pytest.raises(ConversionError, match="not one of"):
    vit.infer_spec(vit.to_ours({**arrays, "embedding/kernel": np.zeros((4, 4, 3, 32))},
                               "augreg"))


def _timm_reference(seed=0):
  ref = torch_mp.VisionTransformer(image_size=32, patch=8, dim=32, depth=2, num_heads=2,
                                   mlp_dim=64, num_classes=10)
  return torch_mp.randomize_(ref, seed=seed).eval()


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
  loaded = vit.import_variables(state, variables, "timm")
  np.testing.assert_allclose(model.apply(loaded, IMAGES), _torch_logits(ref),
                             rtol=1e-5, atol=1e-5)  # float32 both sides
  # Through the CLI path: a .pth (DeiT's {"model": ...} wrapping) reads as a timm ViT.
  path = str(tmp_path / "deit.pth")
  torch.save({"model": state}, path)
  spec, converted = convert(path)
  assert spec["arch"] == "vit_test" and spec["num_classes"] == 10
  np.testing.assert_allclose(create_model(**spec).apply(converted, IMAGES), _torch_logits(ref),
                             rtol=1e-5, atol=1e-5)


def test_mismatched_timm_state_dict_is_reported_in_its_names(linear_vit):
  _, variables, _ = linear_vit
  state = {k: v.numpy() for k, v in _timm_reference().state_dict().items()}
  state["dist_token"] = np.zeros((1, 1, 32), np.float32)  # a distilled DeiT
  del state["blocks.1.mlp.fc1.bias"]
  state["blocks.0.attn.qkv.weight"] = state["blocks.0.attn.qkv.weight"][:64]
  with pytest.raises(ConversionError) as e:
    vit.import_variables(state, variables, "timm")
  report = str(e.value)
  assert "missing (1):\n    blocks.1.mlp.fc1.bias" in report
  assert "unexpected (1):\n    dist_token" in report
  assert "blocks.0.attn.qkv.weight: expected (96, 32), found (64, 32)" in report


def test_real_timm_vit_loads_and_logits_agree(linear_vit):
  timm = pytest.importorskip(
      "timm", reason="timm is not installed: its pip wheel pulls torchvision (a 5.5 GB CUDA "
      "build here); the timm layout is tested with a port of timm's ViT")
  from timm.models.vision_transformer import VisionTransformer
  model, variables, _ = linear_vit
  torch.manual_seed(0)
  ref = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                          mlp_ratio=2.0, num_classes=10).eval()
  with torch.no_grad():
    for p in ref.parameters():
      p.add_(0.1 * torch.randn(p.shape))
  loaded = vit.import_variables(ref.state_dict(), variables, "timm")
  np.testing.assert_allclose(model.apply(loaded, IMAGES), _torch_logits(ref),
                             rtol=1e-4, atol=1e-4)
  del timm


# --- The releases' own files --------------------------------------------------------------

# name -> (the port, vit_test-sized; args.model of the release's run; its layout; the spec
# the converter reads off the file)
RELEASES = {
    "mp": (lambda: torch_mp.VisionTransformer(32, 8, 32, 2, 2, 64, 5, probing_mode="mp",
                                              mp_hidden_dim=64),
           "vit_base_patch16_224_in21k", "moment_probing",
           {"arch": "vit_test", "head": "mp", "num_classes": 5, "proj_dim": 64,
            "num_groups": 4}),
    "mp_plus": (lambda: torch_mp.VisionTransformer(32, 8, 32, 2, 2, 64, 5, probing_mode="mp",
                                                   tuning_mode="psrp", mp_hidden_dim=64),
                "vit_base_patch16_224_in21k", "moment_probing",
                {"arch": "vit_test", "head": "mp_plus", "num_classes": 5, "proj_dim": 64,
                 "num_groups": 4, "psrp_rank": 16}),
    "linear_probe": (lambda: torch_mp.VisionTransformer(32, 8, 32, 2, 2, 64, 5),
                     "vit_base_patch16_224_in21k", "timm",
                     {"arch": "vit_test", "head": "linear", "num_classes": 5}),
    "dropcov_deit": (lambda: torch_dropcov_vit.DeitDrop(32, 2, 2, 64, num_classes=5,
                                                        cov_heads=2, wr_dim=4),
                     "Deit_drop_Small", "dropcov_deit",
                     {"arch": "vit_test", "stem": "conv", "head": "dropcov", "num_classes": 5,
                      "cov_heads": 2, "cov_head_dim": 4}),
}


def _release_file(name, path, seed=0):
  """The port's weights and a different EMA, saved as the release's train.py / main.py
  does (timm's CheckpointSaver). Returns (trained, EMA) ports."""
  build = RELEASES[name][0]
  model = torch_mp.randomize_(build(), seed=seed).eval()
  ema = torch_mp.randomize_(build(), seed=seed + 1).eval()
  torch.save(torch_resnet.timm_checkpoint(model, ema, RELEASES[name][1]), path)
  return model, ema


@pytest.mark.parametrize("name", list(RELEASES))
def test_release_file_converts_its_ema_and_exports_back_strictly(name, tmp_path, our_logits):
  _, model_name, layout, want_spec = RELEASES[name]
  path = str(tmp_path / "model_best.pth.tar")
  model, ema = _release_file(name, path)
  assert vit.detect_layout("pytorch", ema.state_dict()) == layout
  spec, variables = convert(path)  # the EMA: what the release evaluates and selects by
  assert spec == {"dtype": "float32", **want_spec}
  assert max_rel_diff(our_logits(spec, variables, IMAGES), _torch_logits(ema)) < 1e-5
  _, trained = convert(path, weights="state_dict")
  assert max_rel_diff(our_logits(spec, trained, IMAGES), _torch_logits(model)) < 1e-5

  # Export: the release's names and layout, loaded strictly into a fresh port, bit-exact.
  release = layouts.get(layout)
  assert release.fits(spec) == ""
  out = str(tmp_path / "export.pth")
  pytorch.write(out, release.export(variables, spec))
  fresh = RELEASES[name][0]()
  fresh.load_state_dict(torch.load(out, weights_only=True), strict=True)
  for key, value in ema.state_dict().items():
    assert torch.equal(fresh.state_dict()[key], value), key


def test_explicit_options_convert_as_detected_and_a_foreign_position_table_is_refused(
    tmp_path):
  """The issue's commands: `--head mp --option num_classes=...` for an MP file, and
  `--arch ... --head dropcov --option stem=conv` for the DropCov DeiT (which stopped at the
  CNN guess), give what detection gives. A DropCov file whose pos_embed is not the
  release's sinusoidal table is refused."""
  for name, options in (("mp", dict(head="mp", num_classes=5)),
                        ("dropcov_deit", dict(arch="vit_test", head="dropcov", stem="conv"))):
    path = str(tmp_path / f"{name}.pth.tar")
    _, ema = _release_file(name, path, seed=3)
    spec, variables = convert(path, **options)
    assert spec == {"dtype": "float32", **RELEASES[name][3]}
    jax.tree.map(np.testing.assert_array_equal, variables, convert(path)[1])
  state = ema.state_dict()
  state["pos_embed"] = state["pos_embed"] + 0.01
  torch.save(state, tmp_path / "other.pth")
  with pytest.raises(ConversionError, match="pos_embed is not the fixed table"):
    convert(str(tmp_path / "other.pth"))


def test_export_refuses_a_layout_whose_release_has_no_such_network(tmp_path):
  mp = create_model("vit_test", head="mp", num_classes=5, proj_dim=64)
  variables = jax.eval_shape(mp.init, jax.random.key(0), IMAGES)
  with pytest.raises(ConversionError, match=r"timm layout has no name for 10 variable\(s\).*"
                     r"head/.*Layouts that hold this model: augreg, moment_probing"):
    vit.export_variables(variables, "timm")
  spec = {"arch": "vit_test", "head": "mp", "num_classes": 5, "proj_dim": 64}
  assert layouts.get("moment_probing").fits(spec) == ""
  assert "mean_removal='channel', not 'scalar'" in layouts.get("moment_probing").fits(
      {**spec, "mean_removal": "channel"})
  assert "approximate_gelu=True, not False" in layouts.get("moment_probing").fits(
      {**spec, "approximate_gelu": True})
  assert "the mp head, not linear" in layouts.get("timm").fits(spec)
  assert "the patch stem, not conv" in layouts.get("dropcov_deit").fits(spec)


@pytest.mark.parametrize("name, arch, options, build, count", [
    ("mp", "vit_b16", {"head": "mp"},
     lambda: torch_mp.VisionTransformer(probing_mode="mp"), 89_845_802),
    ("mp_plus", "vit_b16", {"head": "mp_plus"},
     lambda: torch_mp.VisionTransformer(probing_mode="mp", tuning_mode="psrp"), 90_288_170),
    ("dropcov_deit", "deit_s16", {"head": "dropcov", "stem": "conv"},
     torch_dropcov_vit.DeitDrop, 25_586_576),
    # The release's other constructors: one network class, read by the same layout.
    ("dropcov_deit", "dropcov_deit_t",
     {"head": "dropcov", "stem": "conv", "cov_heads": 6, "cov_head_dim": 14},
     lambda: torch_dropcov_vit.DeitDrop(**torch_dropcov_vit.RELEASES["Deit_drop_Tiny"]),
     8_003_696),
    ("dropcov_deit", "deit_b16", {"head": "dropcov", "stem": "conv", "cov_heads": 12},
     lambda: torch_dropcov_vit.DeitDrop(**torch_dropcov_vit.RELEASES["Deit_drop_Base"]),
     93_722_000),
    # The README's 24.9 M for T2T-ViT-14-S+DropCov is this count cut, not rounded.
    ("dropcov_deit", "dropcov_t2t_vit_14", {"head": "dropcov", "stem": "conv"},
     lambda: torch_dropcov_vit.DeitDrop(**torch_dropcov_vit.RELEASES["T2T_ViT_14"]),
     24_999_056),
], ids=["mp", "mp_plus", "dropcov_deit_s", "dropcov_deit_t", "dropcov_deit_b",
        "dropcov_t2t_vit_14"])
def test_full_size_layouts_equal_the_releases_state_dicts(name, arch, options, build, count):
  """At the releases' sizes (1000 classes, 224 px): the names and shapes export writes and
  strict import expects are exactly the release network's state_dict, and the parameter
  counts agree (DropCov's fixed pos_embed aside, a buffer-like Parameter we compute)."""
  model = create_model(arch, num_classes=1000, **options)
  target = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  with torch.device("meta"):
    release = build()
  want = {k: tuple(v.shape) for k, v in release.state_dict().items()
          if not k.endswith("num_batches_tracked")}
  assert vit.release_shapes(target, RELEASES[name][2]) == want
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(target["params"])) == count
  assert count == sum(p.numel() for p in release.parameters() if p.requires_grad)
  # Import reads the architecture back off the names and shapes (zero-stride arrays).
  arrays = {n: np.broadcast_to(np.float32(0), shape) for n, shape in want.items()}
  spec = vit.infer_spec(vit.to_ours(arrays, RELEASES[name][2]))
  assert spec["arch"] == arch and options.items() <= spec.items()
