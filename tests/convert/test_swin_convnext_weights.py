"""Swin-B and ConvNeXt-B weights in the layouts of `gcp.convert.hierarchical`: the Moment
Probing release's files, written by PyTorch ports of its networks (tests/references) the
way its timm train.py saves them, converted (layout, spec, logits) and exported back into
the port with `load_state_dict(strict=True)`; the official ImageNet-21k files (Microsoft's
Swin, FB's ConvNeXt) into a fresh MP head; timm >= 0.9's (the Hugging Face hub's) names
against the release's, by array; full-size names and shapes on PyTorch's meta device;
errors. Reduced networks run the same block code; two model compiles in all."""
import re

import jax
import numpy as np
import pytest
import torch

import gcp.convert
from gcp.convert import ConversionError, convert, hierarchical, layouts, vit
from gcp.models import create_model

from references import torch_convnext, torch_mp, torch_resnet, torch_swin
from references.numerics import max_rel_diff

SWIN = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))  # window 7, 224 px
CONVNEXT = dict(depths=(1, 1, 2, 1), dims=(16, 32, 64, 128))
MP = dict(proj_dim=64, num_groups=4)
MODES = {"linear": ("linear", None), "mp": ("mp", None), "mp_plus": ("mp", "psrp")}
SWIN_IMAGES = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
CONVNEXT_IMAGES = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)


def swin_port(head: str, num_classes: int = 5, seed: int | None = 0, **sizes):
  probing, tuning = MODES[head]
  mp = dict(mp_hidden_dim=MP["proj_dim"], mp_heads=MP["num_groups"]) if sizes else {}
  port = torch_swin.SwinTransformer(num_classes=num_classes, probing_mode=probing,
                                    tuning_mode=tuning, **mp, **sizes)
  return port if seed is None else torch_mp.randomize_(port, seed=seed).eval()


def convnext_port(head: str, num_classes: int = 5, seed: int | None = 0, **sizes):
  probing, tuning = MODES[head]
  mp = dict(mp_hidden_dim=MP["proj_dim"], mp_heads=MP["num_groups"]) if sizes else {}
  port = torch_convnext.ConvNeXt(num_classes=num_classes, probing_mode=probing,
                                 tuning_mode=tuning, **mp, **sizes)
  return port if seed is None else torch_convnext.randomize_(port, seed=seed)


# arch -> (reduced port, its sizes as our spec has them, layout, images)
ARCHS = {"swin_b": (swin_port, SWIN, "moment_probing_swin", SWIN_IMAGES),
         "convnext_b": (convnext_port, CONVNEXT, "moment_probing_convnext", CONVNEXT_IMAGES)}


def _spec(arch: str, head: str, num_classes: int = 5) -> dict:
  return {"dtype": "float32", "arch": arch, **ARCHS[arch][1], "head": head,
          "num_classes": num_classes, **(MP if head != "linear" else {}),
          **({"psrp_rank": 16} if head == "mp_plus" else {})}


def _save_release(arch: str, head: str, path: str):
  """The port's weights and a different EMA, as the release's train.py saves them."""
  build, sizes = ARCHS[arch][:2]
  model, ema = build(head, seed=1, **sizes), build(head, seed=2, **sizes)
  torch.save(torch_resnet.timm_checkpoint(model, ema, arch), path)
  return ema


@pytest.mark.parametrize("arch", list(ARCHS))
def test_release_file_converts_with_the_ports_logits_and_exports_back(
    arch, tmp_path, release_logits, our_logits, exports_back):
  """MP+ (the MP head and the PSRP adapters): detected, spec inferred, the EMA's logits
  (the port in float64), and the round trip of `exports_back` (strict load, every tensor
  and buffer equal; perturbed weights give the port our logits)."""
  layout, images = ARCHS[arch][2:]
  path = str(tmp_path / "model_best.pth.tar")
  ema = _save_release(arch, "mp_plus", path)
  assert vit.detect_layout("pytorch", ema.state_dict()) == layout
  converted = gcp.convert.convert_to_checkpoint(path, str(tmp_path / "converted"))
  assert converted.layout == layout and converted.weights == "ema"
  assert converted.spec == _spec(arch, "mp_plus")
  diff = max_rel_diff(our_logits(converted.spec, converted.variables, images),
                      release_logits(ema, images))
  assert diff < 1e-5, diff
  exports_back(ema, converted, str(tmp_path / "converted"), images, tmp_path)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("head", ["linear", "mp"])
def test_other_heads_convert_and_export_strictly(arch, head, tmp_path):
  """The linear probe and MP (no model compiled): spec, and export back bit-exact."""
  layout = ARCHS[arch][2]
  path = str(tmp_path / "release.pth.tar")
  ema = _save_release(arch, head, path)
  spec, variables = convert(path)
  assert spec == _spec(arch, head)
  release = layouts.get(layout)
  assert release.fits(spec) == "" and layouts.default_layout(spec).name == layout
  out = str(tmp_path / "export.pth")
  gcp.convert.pytorch.write(out, release.export(variables, spec))
  fresh = ARCHS[arch][0](head, seed=5, **ARCHS[arch][1])
  fresh.load_state_dict(torch.load(out, weights_only=True), strict=True)
  for name, value in ema.state_dict().items():
    assert torch.equal(fresh.state_dict()[name], value), name


# --- the official ImageNet-21k files --------------------------------------------------------

_FB_NAMES = ((r"stem\.proj\.", "downsample_layers.0.0."),
             (r"stem\.norm\.", "downsample_layers.0.1."),
             (r"stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.0."),
             (r"stages\.(\d+)\.downsample\.proj\.", r"downsample_layers.\1.1."),
             (r"stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.", r"stages.\1.\2.dwconv."),
             (r"stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc(\d+)\.", r"stages.\1.\2.pwconv\3."),
             (r"stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2."),
             (r"head\.norm\.", "norm."), (r"head\.fc\.", "head."))


def fb_names(state_dict) -> dict:
  """The port's linear ConvNeXt state_dict under FB's names (facebookresearch/ConvNeXt)."""
  def rename(name):
    for pattern, new in _FB_NAMES:
      if re.match(pattern, name):
        return re.sub(pattern, new, name, count=1)
    raise KeyError(name)
  return {rename(k): v for k, v in state_dict.items()}


def timm_swin_names(state_dict) -> dict:
  """The port's linear Swin state_dict under timm >= 0.9's names: stage i's patch merging
  opens stage i + 1, `head.fc`, no buffers (non-persistent there)."""
  def rename(name):
    match = re.fullmatch(r"layers\.(\d+)\.downsample\.(.+)", name)
    if match:
      return f"layers.{int(match.group(1)) + 1}.downsample.{match.group(2)}"
    return re.sub(r"^head\.", "head.fc.", name)
  return {rename(k): v for k, v in state_dict.items() if not hierarchical._BUFFER.fullmatch(k)}


_TIMM_CONVNEXT_NAMES = ((r"stem\.proj\.", "stem.0."), (r"stem\.norm\.", "stem.1."),
                        (r"stages\.(\d+)\.downsample\.norm\.", r"stages.\1.downsample.0."),
                        (r"stages\.(\d+)\.downsample\.proj\.", r"stages.\1.downsample.1."))


def timm_convnext_names(state_dict) -> dict:
  """The port's linear ConvNeXt state_dict under timm >= 0.9's names (`stem.{0,1}`,
  `stages.{i}.downsample.{0,1}`; blocks and `head.{norm, fc}` as the release's)."""
  def rename(name):
    for pattern, new in _TIMM_CONVNEXT_NAMES:
      name = re.sub("^" + pattern, new, name)
    return name
  return {rename(k): v for k, v in state_dict.items()}


# arch -> (the port's linear state_dict -> timm's names, timm's layout)
TIMM = {"swin_b": (timm_swin_names, "timm_swin"),
        "convnext_b": (timm_convnext_names, "timm_convnext")}


def _ours(variables, path: str) -> np.ndarray:
  return np.asarray(vit._flatten(variables)[path])


def test_microsoft_swin_21k_file_into_a_fresh_mp_head(tmp_path):
  """Microsoft's `{"model": ...}` with its buffers and a big classifier reads as the
  release's layout; with an MP head the backbone loads and the head starts afresh."""
  ref = swin_port("linear", num_classes=40, seed=3, **SWIN)
  state = ref.state_dict()
  assert "layers.2.blocks.1.attn_mask" in state
  assert "layers.0.blocks.0.attn.relative_position_index" in state
  torch.save({"model": state}, tmp_path / "swin_22k.pth")
  path = str(tmp_path / "swin_22k.pth")
  spec, full = convert(path)
  assert spec == _spec("swin_b", "linear", 40)
  spec, variables = convert(path, head="mp", num_classes=1000, **MP)
  assert spec == _spec("swin_b", "mp", 1000)
  flat = vit._flatten(variables)
  assert not any("psrp" in p for p in flat) and flat["params/head/fc_cls/kernel"].shape == (
      128, 1000)
  pairs = {"params/patch_embed_proj/kernel":
               state["patch_embed.proj.weight"].permute(2, 3, 1, 0),
           "params/layers_2/blocks_1/attn_qkv/kernel":
               state["layers.2.blocks.1.attn.qkv.weight"].T,
           f"params/layers_3/blocks_0/{hierarchical._TABLE}":
               state["layers.3.blocks.0.attn.relative_position_bias_table"],
           "params/layers_1/downsample_reduction/kernel":
               state["layers.1.downsample.reduction.weight"].T,
           "params/norm/scale": state["norm.weight"]}
  for ours, theirs in pairs.items():
    np.testing.assert_array_equal(flat[ours], theirs.numpy(), err_msg=ours)
  backbone = {p for p in vit._flatten(full) if not p.startswith("params/head/")}
  for p in backbone:
    np.testing.assert_array_equal(flat[p], _ours(full, p), err_msg=p)


def test_fb_convnext_21k_file_loads_whole_or_into_new_heads(tmp_path):
  """FB's file: the whole network (biased downsample norms, its `norm` the head's) and back
  in FB's names; into MP+ for 1000 classes the release's network, FB's `norm` dropped (the
  release's quirk: `head/cls_norm` fresh); into a new linear head FB's `norm` is kept."""
  ref = convnext_port("linear", num_classes=40, seed=4, **CONVNEXT)
  state = fb_names(ref.state_dict())
  assert {"downsample_layers.0.0.weight", "downsample_layers.3.1.bias",
          "stages.2.1.dwconv.weight", "stages.0.0.pwconv2.bias", "stages.3.0.gamma",
          "norm.weight", "head.weight"} <= set(state)
  path = str(tmp_path / "convnext_base_22k_224.pth")
  torch.save({"model": state}, path)
  spec, full = convert(path)
  assert spec == {**_spec("convnext_b", "linear", 40), "unbiased_downsample_norm": False}
  assert layouts.default_layout(spec).name == "convnext_fb"
  exported = layouts.get("convnext_fb").export(full, spec)
  assert set(exported) == set(state)
  for name, value in state.items():
    np.testing.assert_array_equal(exported[name], value.numpy(), err_msg=name)

  spec, mp = convert(path, head="mp_plus", num_classes=1000, **MP)
  # the release's (unbiased) network; fresh PSRP adapters of the default rank
  assert spec == {k: v for k, v in _spec("convnext_b", "mp_plus", 1000).items()
                  if k != "psrp_rank"}
  flat = vit._flatten(mp)
  for p in vit._flatten(full):
    if not p.startswith("params/head/"):
      np.testing.assert_array_equal(flat[p], _ours(full, p), err_msg=p)
  np.testing.assert_array_equal(flat["params/head/cls_norm/scale"], np.ones(128))
  assert "params/stages_2/blocks_1/psrp/down/kernel" in flat

  spec, linear = convert(path, head="linear", num_classes=1000)
  assert "unbiased_downsample_norm" not in spec
  np.testing.assert_array_equal(_ours(linear, "params/head/norm/scale"), state["norm.weight"])
  np.testing.assert_array_equal(_ours(linear, "params/head/norm/bias"), state["norm.bias"])
  assert _ours(linear, "params/head/fc/kernel").shape == (128, 1000)


# --- timm >= 0.9's files (the Hugging Face hub's) ------------------------------------------

def _assert_equal(got: dict, want: dict) -> None:
  assert set(got) == set(want)
  for name, value in want.items():
    np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(value), err_msg=name)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_timm_files_read_as_the_release_and_export_back(arch, tmp_path):
  """A flat `pytorch_model.bin` in timm's names: detected (the release's and FB's names
  still as theirs), the spec of timm's network (ConvNeXt: FB's, as `convnext_fb` reads
  it), the variables the release's names give for the same weights, and the converted
  checkpoint exported back to the same names and arrays; into a new MP head (no model
  compiled: `import_variables` on the model's shapes) the backbone, and for ConvNeXt's new
  linear head FB's final norm."""
  build, sizes, release_layout, images = ARCHS[arch]
  rename, layout = TIMM[arch]
  release = build("linear", num_classes=40, seed=7, **sizes).state_dict()
  state = rename(release)
  files = {layout: state, release_layout: release}
  if arch == "convnext_b":
    files["convnext_fb"] = fb_names(release)
  else:  # the harder case: the release's names without the buffers (a filtered file)
    files[release_layout] = {k: v for k, v in release.items()
                             if not hierarchical._BUFFER.fullmatch(k)}
  for want_layout, names in files.items():
    assert vit.detect_layout("pytorch", names) == want_layout
  torch.save(state, tmp_path / "pytorch_model.bin")
  torch.save(release, tmp_path / "release.pth")
  out = str(tmp_path / "converted")
  converted = gcp.convert.convert_to_checkpoint(str(tmp_path / "pytorch_model.bin"), out)
  spec, variables = converted.spec, converted.variables
  release_spec, want = convert(str(tmp_path / "release.pth"))
  fb = {"unbiased_downsample_norm": False} if arch == "convnext_b" else {}
  assert converted.layout == layout
  assert spec == {**_spec(arch, "linear", 40), **fb} == {**release_spec, **fb}
  _assert_equal(vit._flatten(variables), vit._flatten(want))
  written, _ = gcp.convert.export(out, str(tmp_path / "exported.pth"))
  assert written.name == layout  # the recorded layout, though the release's holds it too
  exported = torch.load(tmp_path / "exported.pth", weights_only=True)
  _assert_equal({k: v.numpy() for k, v in exported.items()},
                {k: v.numpy() for k, v in state.items()})

  model = create_model(arch, head="mp", num_classes=1000, **sizes, **MP)
  target = jax.eval_shape(model.init, jax.random.key(0), images[:1])
  mp = vit._flatten(hierarchical.import_variables(state, target, layout, load_head=False))
  backbone = {p: v for p, v in vit._flatten(want).items() if not p.startswith("params/head/")}
  _assert_equal(mp, backbone)
  if arch == "convnext_b":
    model = create_model(arch, head="linear", num_classes=1000, **sizes, **fb)
    target = jax.eval_shape(model.init, jax.random.key(0), images[:1])
    linear = vit._flatten(hierarchical.import_variables(state, target, layout,
                                                        load_head=False))
    for leaf, name in (("scale", "head.norm.weight"), ("bias", "head.norm.bias")):
      np.testing.assert_array_equal(linear.pop(f"params/head/norm/{leaf}"), state[name])
    _assert_equal(linear, backbone)

  del state["layers.3.downsample.norm.bias" if arch == "swin_b" else "stem.1.bias"]
  with pytest.raises(ConversionError, match=rf"(?s)names of the {layout} layout.*missing "
                     r"\(1\):\n    (layers\.3\.downsample\.norm|stem\.1)\.bias"):
    hierarchical.import_variables(state, jax.eval_shape(lambda: variables), layout)


def test_timm_patch_merging_keeps_the_release_channel_order():
  """timm >= 0.9's PatchMerging gathers the 2 x 2 neighbours by a reshape and permute (its
  forward's, below) where the release concatenates x0, x1, x2, x3: the same channel order,
  so the reduction's weight is read unchanged (timm's `checkpoint_filter_fn` only renames)."""
  torch.manual_seed(0)
  b, h, w, c = 2, 4, 6, 3
  merging, x = torch_swin.PatchMerging((h, w), c), torch.randn(b, h * w, c)
  timm = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
  with torch.no_grad():
    assert torch.equal(merging(x), merging.reduction(merging.norm(timm)).reshape(b, -1, 2 * c))


# --- full size ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch, head", [(a, h) for a in ARCHS for h in MODES])
def test_full_size_layouts_equal_the_releases_state_dicts(arch, head):
  """Swin-B / ConvNeXt-B, 1000 classes, 224 px: the names and shapes export writes (and
  strict import expects) are the release network's state_dict, buffers included; the
  spec reads back off them. FB's names for ConvNeXt-B's linear network too."""
  build, _, layout, _ = ARCHS[arch]
  model = create_model(arch, head=head, num_classes=1000)
  images = np.zeros((1, 224, 224, 3), np.float32)
  target = jax.eval_shape(model.init, jax.random.key(0), images)
  with torch.device("meta"):
    release = build(head, num_classes=1000, seed=None)
  want = {k: tuple(v.shape) for k, v in release.state_dict().items()}
  assert hierarchical.release_shapes(target, layout) == want
  arrays = {n: np.broadcast_to(np.float32(0), s) for n, s in want.items()}
  spec = hierarchical.infer_spec(arrays, layout)
  assert spec == {"arch": arch, "head": head, "num_classes": 1000, "image_size": 224,
                  **({"proj_dim": 512, "num_groups": 4} if head != "linear" else {}),
                  **({"psrp_rank": 16} if head == "mp_plus" else {})}
  assert layouts.detect("pytorch", want).name == layout
  if head == "linear":  # timm's names (and FB's), told by their names too
    renamed = {TIMM[arch][1]: TIMM[arch][0](release.state_dict())}
    if arch == "convnext_b":
      renamed["convnext_fb"] = fb_names(release.state_dict())
    for other, names in renamed.items():
      shapes = {n: tuple(v.shape) for n, v in names.items()}
      assert hierarchical.release_shapes(target, other) == shapes
      assert layouts.detect("pytorch", shapes).name == other
      arrays = {n: np.broadcast_to(np.float32(0), s) for n, s in shapes.items()}
      assert hierarchical.infer_spec(arrays, other) == {
          **spec, **({"unbiased_downsample_norm": False} if arch == "convnext_b" else {})}


# --- errors -------------------------------------------------------------------------------

def test_errors_name_the_problem(tmp_path):
  swin = {k: v.numpy() for k, v in swin_port("mp", seed=6, **SWIN).state_dict().items()}
  convnext = create_model("convnext_b", head="mp", num_classes=5, **CONVNEXT, **MP)
  target = jax.eval_shape(convnext.init, jax.random.key(0), CONVNEXT_IMAGES)
  with pytest.raises(ConversionError, match=r"(?s)names of the moment_probing_convnext layout"
                     r".*missing \(65\):\n    head\.cls_head.*unexpected \(88\):\n"
                     r"    patch_embed\.proj\.weight"):
    hierarchical.import_variables(swin, target, "moment_probing_convnext", source="swin.pth")
  with pytest.raises(ConversionError, match="not a convnext_b in the moment_probing_convnext "
                     "layout"):
    hierarchical.infer_spec(swin, "moment_probing_convnext")

  del swin["layers.1.blocks.0.mlp.fc1.bias"]
  torch.save({k: torch.from_numpy(v) for k, v in swin.items()}, tmp_path / "swin.pth")
  with pytest.raises(ConversionError, match=r"swin.pth does not match the architecture "
                     r"\(names of the moment_probing_swin layout\):\n.*missing \(1\):\n"
                     r"    layers\.1\.blocks\.0\.mlp\.fc1\.bias"):
    convert(str(tmp_path / "swin.pth"))
  swin["layers.1.blocks.0.mlp.fc1.bias"] = np.zeros(64, np.float32)
  swin["layers.2.blocks.1.attn_mask"] = swin["layers.2.blocks.1.attn_mask"][::-1].copy()
  torch.save({k: torch.from_numpy(v) for k, v in swin.items()}, tmp_path / "mask.pth")
  with pytest.raises(ConversionError, match="layers.2.blocks.1.attn_mask is not the buffer"):
    convert(str(tmp_path / "mask.pth"))

  spec = _spec("convnext_b", "mp")
  with pytest.raises(ConversionError, match=r"convnext_fb layout .* cannot hold this model: "
                     r".*the mp head, not linear.*Layouts that can: moment_probing_convnext"):
    layouts.check(layouts.get("convnext_fb"), spec)
  assert "unbiased_downsample_norm=False, not True" in layouts.get(
      "moment_probing_convnext").fits({**spec, "unbiased_downsample_norm": False})
  assert "its network is a swin_b" in layouts.get("moment_probing_swin").fits(spec)
