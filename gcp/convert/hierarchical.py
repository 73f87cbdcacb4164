"""Swin-B and ConvNeXt-B weights in the releases' layouts, on `gcp.convert.vit`'s rules.

Layouts (added to `gcp.convert.vit.NAME_TABLES`, registered in `gcp.convert.layouts.LAYOUTS`;
told apart by their names):
  moment_probing_swin      the Moment Probing release's SwinTransformer
                           (models/swin_transformer.py, timm 0.6's names): `patch_embed.{proj,
                           norm}`, `layers.{i}.blocks.{j}.{norm1, attn.{qkv, proj,
                           relative_position_bias_table}, norm2, mlp.{fc1, fc2}, psrp.{down,
                           up_weight, up_bias}}`, `layers.{i}.downsample.{norm, reduction}`,
                           `norm`, `head` (linear) or the MP head `head.{proj, ln,
                           downblocks.0.0, downblocks.0.2, classifier1, classifier2}`; and the
                           buffers `layers.{i}.blocks.{j}.attn.relative_position_index` and
                           `layers.{i}.blocks.{j}.attn_mask` (shifted blocks). Microsoft's
                           official files (`swin_base_patch4_window7_224_22k.pth`, {"model":
                           ...}, a 21841-class `head`) have the same names and read as this
                           layout.
  moment_probing_convnext  the release's ConvNeXt (models/convnext.py, timm 0.5's names):
                           `stem.{proj, norm}`, `stages.{i}.downsample.{norm, proj}`,
                           `stages.{i}.blocks.{j}.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma,
                           psrp.*}`, `head.{norm, fc}` (linear) or `head.{cls_head.norm,
                           cls_head.fc, proj, ln, downblocks.0.0, downblocks.0.2, classifier2}`
                           (MP).
  convnext_fb              FB's official ConvNeXt (facebookresearch/ConvNeXt, e.g.
                           `convnext_base_22k_224.pth`, {"model": ...}): `downsample_layers.0.{0,
                           1}` (stem conv, LayerNorm), `downsample_layers.{i}.{0, 1}` (LayerNorm,
                           conv 2x2), `stages.{i}.{j}.{dwconv, norm, pwconv1, pwconv2, gamma}`,
                           `norm`, `head`. FB's network has the biased downsample LayerNorms
                           (`unbiased_downsample_norm=False`) and only the linear head, whose
                           final LayerNorm is FB's `norm`.
  timm_swin                timm >= 0.9's SwinTransformer (`SwinTransformerStage`; the hub's
                           `swin_base_patch4_window7_224.ms_in22k` ..., a flat state_dict): the
                           release's names, but stage i's patch merging opens stage i + 1
                           (`layers.{i+1}.downsample.{norm, reduction}`), the linear head is
                           `head.fc`, and the buffers are non-persistent (not in the files).
                           The reduction's input channels keep the release's order (timm's
                           `reshape(B, H/2, 2, W/2, 2, C).permute(0, 1, 3, 4, 2, 5)` is its
                           `cat([x0, x1, x2, x3])`; `checkpoint_filter_fn` only renames).
  timm_convnext            timm >= 0.9's ConvNeXt (`convnext_base.fb_in22k` ...): `stem.{0, 1}`
                           (conv, LayerNorm2d), `stages.{i}.downsample.{0, 1}` (LayerNorm2d,
                           conv 2x2), the release's block names, `head.{norm, fc}`
                           (`NormMlpClassifierHead`). FB's network renamed by timm's
                           `checkpoint_filter_fn`: biased downsample norms, a linear head whose
                           `head.norm` is FB's `norm` (read as `convnext_fb`'s, below).

Import is `gcp.convert.vit.import_variables` (strict, `load_head`, PSRP only if the file has
it) plus the Swin buffers: they are not variables here (`gcp.models.swin` computes them), so a
file's are checked against what the model computes and dropped, and a file without them (a
filtered one, timm >= 0.9's) is read too; export writes them for 224 px images, the size the
release's network is built for (`img_size=224`), except in timm_swin, whose network has none.
With `load_head=False` and FB's network (`convnext_fb`, `timm_convnext`), its final norm
still goes to a linear head's `head/norm`, as the release's `checkpoint_filter_fn` (it
renames FB's `norm` to `head.norm`) and non-strict load do; under MP it is dropped and
`head/cls_norm` stays fresh, the release's quirk (`gcp.models.convnext`).
"""
import dataclasses
import functools
import re
from typing import Any

import flax.traverse_util
import numpy as np

from gcp.convert import layouts, vit
from gcp.convert.torch_layout import ConversionError
from gcp.convert.vit import _MP_HEAD, NameTable, Rule, _dense, _norm
from gcp.models import create_model
from gcp.models.convnext import ConvNeXt
from gcp.models.swin import SwinTransformer, relative_position_index, shifted_window_mask

SWIN_IMAGE_SIZE = 224  # the release's `img_size`: the attention masks export writes
_PATCH = 4
_TABLE = "attn_relative_position_bias_table"
_TABLE_PATH = re.compile(rf"params/layers_(\d+)/blocks_(\d+)/{_TABLE}")
_BUFFER = re.compile(r"layers\.(\d+)\.blocks\.(\d+)\.(attn\.relative_position_index|attn_mask)")


def _only(rules: list[Rule], path: str) -> list[Rule]:
  return [dataclasses.replace(r, only_with=path) for r in rules]


def _psrp(ours: str, theirs: str) -> list[Rule]:
  return [Rule(f"params/{ours}/psrp/{o}/kernel", f"{theirs}.psrp.{t}.weight", "kernel")
          for o, t in (("down", "down"), ("scale", "up_weight"), ("shift", "up_bias"))]


def _next_stage(rules: list[Rule]) -> list[Rule]:
  """Rules whose release names are one stage on from our paths."""
  return [dataclasses.replace(r, stage_offset=1) for r in rules]


_SB, _SR = "layers_{i}/blocks_{j}/", "layers.{i}.blocks.{j}."
_SWIN_STEM = [*_dense("patch_embed_proj", "patch_embed.proj", "conv"),
              *_norm("patch_embed_norm", "patch_embed.norm")]
_SWIN_BLOCKS = [
    *_norm(_SB + "norm1", _SR + "norm1"),
    *_dense(_SB + "attn_qkv", _SR + "attn.qkv"),
    Rule(f"params/{_SB}{_TABLE}", _SR + "attn.relative_position_bias_table"),
    *_dense(_SB + "attn_proj", _SR + "attn.proj"),
    *_norm(_SB + "norm2", _SR + "norm2"),
    *_dense(_SB + "mlp_fc1", _SR + "mlp.fc1"),
    *_dense(_SB + "mlp_fc2", _SR + "mlp.fc2"),
]
_MERGING = [*_norm("layers_{i}/downsample_norm", "layers.{i}.downsample.norm"),
            *_dense("layers_{i}/downsample_reduction", "layers.{i}.downsample.reduction")]
_SWIN = [
    *_SWIN_STEM, *_SWIN_BLOCKS, *_psrp(_SB[:-1], _SR[:-1]), *_MERGING,
    *_norm("norm", "norm"),
    *_dense("head", "head"),
    *_MP_HEAD,
]
_TIMM_SWIN = [*_SWIN_STEM, *_SWIN_BLOCKS, *_next_stage(_MERGING), *_norm("norm", "norm"),
              *_dense("head", "head.fc")]
_CB, _CR = "stages_{i}/blocks_{j}/", "stages.{i}.blocks.{j}."
_LINEAR, _MP = "params/head/fc/kernel", "params/head/proj/kernel"  # which head a model has
_CONVNEXT_BLOCKS = [
    *_dense(_CB + "conv_dw", _CR + "conv_dw", "conv"),
    *_norm(_CB + "norm", _CR + "norm"),
    *_dense(_CB + "mlp_fc1", _CR + "mlp.fc1"),
    *_dense(_CB + "mlp_fc2", _CR + "mlp.fc2"),
    Rule(f"params/{_CB}gamma", _CR + "gamma"),
]
_CONVNEXT_LINEAR = [*_only(_norm("head/norm", "head.norm"), _LINEAR),
                    *_dense("head/fc", "head.fc")]
_CONVNEXT = [
    *_dense("stem_proj", "stem.proj", "conv"),
    *_norm("stem_norm", "stem.norm"),
    *_norm("stages_{i}/downsample_norm", "stages.{i}.downsample.norm"),
    *_dense("stages_{i}/downsample_proj", "stages.{i}.downsample.proj", "conv"),
    *_CONVNEXT_BLOCKS,
    *_psrp(_CB[:-1], _CR[:-1]),
    *_CONVNEXT_LINEAR,
    *_norm("head/cls_norm", "head.cls_head.norm"),
    *_dense("head/fc_cls", "head.cls_head.fc"),
    *_dense("head/proj", "head.proj", "conv"),
    *_only(_norm("head/norm", "head.ln"), _MP),
    *_dense("head/conv_0", "head.downblocks.0.0", "conv"),
    *_dense("head/conv_1", "head.downblocks.0.2", "conv"),
    *_dense("head/fc_cov", "head.classifier2"),
]
_FB = [  # the stem first: its names also fit the downsample templates (i = 0)
    *_dense("stem_proj", "downsample_layers.0.0", "conv"),
    *_norm("stem_norm", "downsample_layers.0.1"),
    *_norm("stages_{i}/downsample_norm", "downsample_layers.{i}.0"),
    *_dense("stages_{i}/downsample_proj", "downsample_layers.{i}.1", "conv"),
    *_dense(_CB + "conv_dw", "stages.{i}.{j}.dwconv", "conv"),
    *_norm(_CB + "norm", "stages.{i}.{j}.norm"),
    *_dense(_CB + "mlp_fc1", "stages.{i}.{j}.pwconv1"),
    *_dense(_CB + "mlp_fc2", "stages.{i}.{j}.pwconv2"),
    Rule(f"params/{_CB}gamma", "stages.{i}.{j}.gamma"),
    *_only(_norm("head/norm", "norm"), _LINEAR),
    *_dense("head/fc", "head"),
]
_TIMM_CONVNEXT = [
    *_dense("stem_proj", "stem.0", "conv"),
    *_norm("stem_norm", "stem.1"),
    *_norm("stages_{i}/downsample_norm", "stages.{i}.downsample.0"),
    *_dense("stages_{i}/downsample_proj", "stages.{i}.downsample.1", "conv"),
    *_CONVNEXT_BLOCKS,
    *_CONVNEXT_LINEAR,
]
NAME_TABLES: dict[str, NameTable] = {
    "moment_probing_swin": NameTable(tuple(_SWIN), r"^head\."),
    "moment_probing_convnext": NameTable(tuple(_CONVNEXT), r"^head\."),
    "convnext_fb": NameTable(tuple(_FB), r"^(head|norm)\."),
    "timm_swin": NameTable(tuple(_TIMM_SWIN), r"^head\."),
    "timm_convnext": NameTable(tuple(_TIMM_CONVNEXT), r"^head\."),
}
vit.NAME_TABLES.update(NAME_TABLES)  # vit's machinery reads every layout from there
# layout -> the arch its network is
ARCHS = {"moment_probing_swin": "swin_b", "moment_probing_convnext": "convnext_b",
         "convnext_fb": "convnext_b", "timm_swin": "swin_b", "timm_convnext": "convnext_b"}
# the layouts of FB's ConvNeXt -> the name of its final LayerNorm (a linear head's head/norm)
_FB_NORM = {"convnext_fb": "norm", "timm_convnext": "head.norm"}
_SWIN_BUFFERS = ("moment_probing_swin",)  # the layouts whose files hold the Swin buffers


# ------------------------------------------------------------------ the Swin buffers

def _window(table_shape: tuple) -> int:
  """A relative position table `[(2w - 1)^2, heads]` -> w."""
  return (int(round(np.sqrt(table_shape[0]))) + 1) // 2


def swin_buffers(flat: dict, image_size: int = SWIN_IMAGE_SIZE) -> dict[str, np.ndarray]:
  """`{release buffer name: array}` of a Swin whose `{variable path: array or shape
  struct}` is `flat`, at `image_size` px: each block's `relative_position_index` (int64)
  and, in the shifted blocks (odd, window below the stage's resolution), `attn_mask`."""
  out = {}
  for path, value in flat.items():
    match = _TABLE_PATH.fullmatch(path)
    if not match:
      continue
    i, j = map(int, match.groups())
    window, side = _window(value.shape), image_size // _PATCH // 2 ** i
    prefix = f"layers.{i}.blocks.{j}."
    out[prefix + "attn.relative_position_index"] = relative_position_index(window).astype(
        np.int64)
    if j % 2 and window < side:
      out[prefix + "attn_mask"] = shifted_window_mask(side, side, window, window // 2)
  return out


def _buffer_size(tensors: dict) -> int:
  """The image size a Swin file's attention masks were computed for (224 without them):
  stage i's mask `[nW, w^2, w^2]` has nW windows of w x w tokens of side 224 / 4 / 2^i."""
  for name, mask in tensors.items():
    match = _BUFFER.fullmatch(name)
    if match and match.group(3) == "attn_mask":
      window = int(round(np.sqrt(np.shape(mask)[1])))
      side = window * int(round(np.sqrt(np.shape(mask)[0])))
      return side * _PATCH * 2 ** int(match.group(1))
  return SWIN_IMAGE_SIZE


def _check_buffers(tensors: dict, source: str) -> dict:
  """A file's tensors without its Swin buffers, after checking them against the ones the
  model computes (at the size the masks tell)."""
  buffers = {n: v for n, v in tensors.items() if _BUFFER.fullmatch(n)}
  tables = {}  # the file's relative position tables of the blocks with buffers
  for name in buffers:
    i, j, _ = _BUFFER.fullmatch(name).groups()
    table = f"layers.{i}.blocks.{j}.attn.relative_position_bias_table"
    if table in tensors:
      tables[f"params/layers_{i}/blocks_{j}/{_TABLE}"] = np.empty(np.shape(tensors[table]))
  want = swin_buffers(tables, _buffer_size(tensors))
  for name, value in buffers.items():
    i, j, _ = _BUFFER.fullmatch(name).groups()
    if f"params/layers_{i}/blocks_{j}/{_TABLE}" not in tables:
      continue  # a block without its table: the strict import reports the table
    if name not in want or np.shape(value) != want[name].shape or not np.allclose(
        vit._numpy(value), want[name]):
      raise ConversionError(f"{source}: {name} is not the buffer the release's Swin computes "
                            "(its windows, shifts or resolution differ)")
  return {n: v for n, v in tensors.items() if n not in buffers}


# ------------------------------------------------------------------ import and export

def export_variables(variables, layout: str) -> dict[str, np.ndarray]:
  """Our Swin / ConvNeXt variables -> `{release name: array}` (the Swin's buffers
  included where the layout's files hold them: `swin_buffers`)."""
  out = vit.export_variables(variables, layout)
  if layout in _SWIN_BUFFERS:
    out.update(swin_buffers(vit._flatten(variables)))
  return out


def release_shapes(target, layout: str) -> dict[str, tuple[int, ...]]:
  """`{release name: shape}` export writes for a model (variables or ShapeDtypeStructs)."""
  shapes = vit.release_shapes(target, layout)
  if layout in _SWIN_BUFFERS:
    shapes.update({n: b.shape for n, b in swin_buffers(vit._flatten(target)).items()})
  return shapes


def import_variables(tensors, target, layout: str, *, load_head: bool = True,
                     source: str = "checkpoint") -> dict:
  """A file's `{release name: array or tensor}` -> variables shaped like `target`, strictly
  (`gcp.convert.vit.import_variables`; the module docstring tells the exceptions)."""
  tensors = _check_buffers(tensors, source) if ARCHS[layout] == "swin_b" else tensors
  # Left out before the names are looked up: FB's layout has none for MP's head and PSRP.
  has_psrp = any(".psrp." in name for name in tensors)
  flat_target = {p: v for p, v in vit._flatten(target).items()
                 if not (not load_head and vit._HEAD.match(p))
                 and not (not has_psrp and vit._PSRP.search(p))}
  loaded = vit.import_variables(
      tensors, flax.traverse_util.unflatten_dict({tuple(p.split("/")): v
                                                  for p, v in flat_target.items()}),
      layout, load_head=load_head, resample=False, source=source)
  flat_target = vit._flatten(target)
  if layout in _FB_NORM and not load_head and _LINEAR in flat_target:
    flat = {tuple(p.split("/")): v for p, v in vit._flatten(loaded).items()}
    for leaf, name in (("scale", f"{_FB_NORM[layout]}.weight"),
                       ("bias", f"{_FB_NORM[layout]}.bias")):
      want = flat_target[f"params/head/norm/{leaf}"]
      if np.shape(tensors.get(name)) != want.shape:
        raise ConversionError(f"{source}: {name} expected {want.shape}, found "
                              f"{np.shape(tensors.get(name)) if name in tensors else 'none'}")
      flat["params", "head", "norm", leaf] = vit._numpy(tensors[name]).astype(want.dtype)
    loaded = flax.traverse_util.unflatten_dict(flat)
  return loaded


def _field_defaults(module) -> dict[str, Any]:
  return {f.name: f.default for f in dataclasses.fields(module)
          if f.default is not dataclasses.MISSING}


def _count(arrays, pattern: str) -> dict[int, int]:
  """`{stage: blocks}` from paths matching `pattern` (groups: stage, block)."""
  blocks = {}
  for name in arrays:
    match = re.match(pattern, name)
    if match:
      i, j = map(int, match.groups())
      blocks[i] = max(blocks.get(i, 0), j + 1)
  return blocks


def infer_spec(tensors, layout: str) -> dict[str, Any]:
  """`create_model` arguments of a file in `layout` (arch, the sizes that differ from the
  arch's defaults, the head with its sizes, FB's biased downsample norms) and `image_size`
  (the Swin's, from its attention masks; 224 without them)."""
  try:
    arrays = vit.to_ours(tensors, layout)
  except ValueError as e:  # a tensor of another rank than the layout's
    raise ConversionError(f"not a {ARCHS[layout]} in the {layout} layout ({e})") from None
  shape = lambda path: arrays[f"params/{path}"].shape
  try:
    if ARCHS[layout] == "swin_b":
      depths = _count(arrays, r"params/layers_(\d+)/blocks_(\d+)/")
      depths = tuple(depths[i] for i in range(len(depths)))
      width = shape("patch_embed_proj/kernel")[-1]
      sizes = {"embed_dim": width, "depths": depths,
               "num_heads": tuple(shape(f"layers_{i}/blocks_0/{_TABLE}")[-1]
                                  for i in range(len(depths))),
               "window_size": _window(shape(f"layers_0/blocks_0/{_TABLE}")),
               "mlp_ratio": shape("layers_0/blocks_0/mlp_fc1/kernel")[-1] / width}
      defaults, head = _field_defaults(SwinTransformer), vit._infer_head(arrays)
    else:
      depths = _count(arrays, r"params/stages_(\d+)/blocks_(\d+)/")
      depths = tuple(depths[i] for i in range(len(depths)))
      sizes = {"depths": depths,
               "dims": tuple(shape(f"stages_{i}/blocks_0/conv_dw/kernel")[-1]
                             for i in range(len(depths)))}
      if "params/stages_0/blocks_0/gamma" not in arrays:
        sizes["ls_init_value"] = 0.0
      if layout in _FB_NORM:
        sizes["unbiased_downsample_norm"] = False
      defaults = _field_defaults(ConvNeXt)
      head = (vit._infer_head(arrays) if _MP in arrays else
              {"head": "linear", "num_classes": shape("head/fc/kernel")[-1]}
              if _LINEAR in arrays else {})
  except (KeyError, IndexError) as e:
    raise ConversionError(f"not a {ARCHS[layout]} in the {layout} layout (no {e})") from None
  sizes = {k: v for k, v in sizes.items() if v != defaults.get(k)}
  return {"arch": ARCHS[layout], **sizes, **head, "image_size": _buffer_size(tensors)}


# --------------------------------------------------- the layouts in gcp.convert.layouts

# layout -> (its release's network, the heads it has, the model attributes it fixes)
_NETWORKS = {
    "moment_probing_swin": ("the Moment Probing release's SwinTransformer "
                            "(models/swin_transformer.py: linear or probing_mode mp, "
                            "tuning_mode psrp); Microsoft's official Swin files read as it",
                            ("linear", "mp", "mp_plus"), {"mean_removal": "scalar"}),
    "moment_probing_convnext": ("the Moment Probing release's ConvNeXt (models/convnext.py: "
                                "linear or probing_mode mp, tuning_mode psrp)",
                                ("linear", "mp", "mp_plus"),
                                {"mean_removal": "scalar", "unbiased_downsample_norm": True}),
    "convnext_fb": ("FB's official ConvNeXt (facebookresearch/ConvNeXt, e.g. "
                    "convnext_base_22k_224.pth)", ("linear",),
                    {"unbiased_downsample_norm": False}),
    "timm_swin": ("timm >= 0.9's SwinTransformer (Hugging Face hub files, e.g. "
                  "swin_base_patch4_window7_224.ms_in22k)", ("linear",), {}),
    "timm_convnext": ("timm >= 0.9's ConvNeXt (Hugging Face hub files, e.g. "
                      "convnext_base.fb_in22k)", ("linear",),
                      {"unbiased_downsample_norm": False}),
}
# Names every file of a layout holds. timm_swin's extends the release's (which it shares)
# by the last stage's patch merging, which the release's 4-stage network lacks: `detect`
# takes the longer signature.
_SIGNATURES = {
    "moment_probing_swin": ("patch_embed.proj.weight", "layers.0.blocks.0.attn.qkv.weight"),
    "moment_probing_convnext": ("stem.proj.weight", "stages.0.blocks.0.conv_dw.weight"),
    "convnext_fb": ("downsample_layers.0.0.weight", "stages.0.0.dwconv.weight"),
    "timm_swin": ("patch_embed.proj.weight", "layers.0.blocks.0.attn.qkv.weight",
                  "layers.3.downsample.reduction.weight"),
    "timm_convnext": ("stem.0.weight", "stages.0.blocks.0.conv_dw.weight"),
}


def _fits(layout: str, spec: dict) -> str:
  """"" if the release network of `layout` holds `create_model(**spec)`, else why not."""
  network, heads, fixed = _NETWORKS[layout]
  if spec.get("arch") != ARCHS[layout]:
    return f"its network is a {ARCHS[layout]}; this model is a {spec.get('arch')}"
  model = create_model(**spec)
  problems = [f"the {spec['head']} head, not {' / '.join(heads)}"] if (
      spec["head"] not in heads) else []
  for attr, want in fixed.items():
    have = getattr(model, attr, getattr(model.head, attr, want))
    if have != want:
      problems.append(f"{attr}={have!r}, not {want!r}")
  return f"its network is {network}; this model has {', '.join(problems)}" if problems else ""


for _name, (_network, *_) in _NETWORKS.items():
  layouts.register(layouts.Layout(
      _name, _network, "pytorch", functools.partial(_fits, _name),
      lambda variables, spec, layout=_name: export_variables(variables, layout),
      signature=_SIGNATURES[_name]))
