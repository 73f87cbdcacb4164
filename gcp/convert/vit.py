"""ViT weights in the releases' layouts, read and written from one name table per layout.

Layouts (`NAME_TABLES`, registered in `gcp.convert.layouts.LAYOUTS` with the release
networks that hold them; `detect_layout` tells them from a file's names):
  augreg          big_vision / AugReg `.npz` (google-research/vision_transformer, read by
                  big_vision's `vit.load`): our parameter paths themselves,
                  `embedding/kernel`, `cls`, `Transformer/posembed_input/pos_embedding`,
                  `Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/query/kernel`
                  `[D, H, D/H]`, ..., `head/*` (`pre_logits/*` in some ImageNet-21k files).
  timm            timm's `VisionTransformer` (names unchanged from timm 0.4 through 1.0; DeiT's
                  files hold them under "model"): `patch_embed.proj`, `cls_token`,
                  `pos_embed`, `blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
                  mlp.fc2}`, `norm`, `head`. qkv is fused `[3 D, D]`, rows (q|k|v, head, dim).
  moment_probing  the Moment Probing release (timm 0.6's ViT with its own head and blocks):
                  timm's names, the MP head `head.{proj, ln, downblocks.0.0, downblocks.0.2,
                  classifier1, classifier2}` and MP+'s `blocks.{i}.psrp.{down, up_weight,
                  up_bias}`.
  dropcov_deit    the DropCov release's DeiTs (`Deit_drop_Tiny` / `_Small` / `_Base`,
                  `T2T_ViT_14`; one network class at four sizes): the conv token stem
                  `visual_tokens.tokens.{stem.0, stage.{k}..., transition}`, `cls_token`,
                  `pos_embed` (its fixed sinusoidal table), timm's block names (qkv without
                  bias), `norm`, `classifier.{representation.wr, cls_fc, visual_fc}`.
Dense weights are `[out, in]` and convs OIHW in the PyTorch layouts. `gcp.convert.hierarchical`
adds the Swin and ConvNeXt layouts to `NAME_TABLES` with these rules.

A layout is a list of `Rule`s, each pairing a template of our variable paths
("params/Transformer/encoderblock_{i}/LayerNorm_0/scale") with one of the release's names
("blocks.{i}.norm1.weight") and a codec (how the array is laid out there). Export
(`export_variables`) and import (`import_variables`, and `to_ours` for reading a file
without a model) run the same rules in opposite directions, so they cannot drift.

Import is strict: every variable of the target must be matched one-to-one, and anything
missing, unexpected or mis-shaped raises `ConversionError` with a report in the file's
own names. Two exceptions, both by request or by construction:
- `load_head=False`: the file's classifier (the layout's `classifier` names) is ignored
  and the target's head is not loaded (an ImageNet-21k backbone for a new MP head);
- PSRP adapters (`.../psrp/...`, MP+) load only if the file has them; otherwise they are
  left out.
Left-out parts are absent from the returned tree: fill them from a fresh `init` with
`gcp.checkpoint.merge_pretrained(init, loaded, dont_load="^params/head/|/psrp/")`.
A position embedding for another grid is resampled (`gcp.models.vit.resample_posemb`).
"""
import dataclasses
import functools
import re
import string
import zipfile
from typing import Any, Callable

import flax.traverse_util
import numpy as np

from gcp.checkpoint import describe_mismatch
from gcp.convert import layouts
from gcp.convert.torch_layout import ConversionError
from gcp.models import create_model
from gcp.models.vit import VIT_SIZES, resample_posemb, sinusoid_posemb

POSEMB = "params/Transformer/posembed_input/pos_embedding"
_HEAD = re.compile(r"^params/head/")
_PSRP = re.compile(r"/psrp/")

# codec -> (ours -> the release's array, the release's array -> ours up to a reshape to the
# target's shape). Kernels come back as [in, out] matrices and biases flat, which is all
# `to_ours` can do without a model (the number of attention heads is not in timm's names).
_CODECS: dict[str, tuple[Callable, Callable]] = {
    "same": (lambda x: x, lambda t: t),
    "flat": (lambda x: x.reshape(-1), lambda t: t),
    # Dense / DenseGeneral kernel [in, *out] <-> Linear weight [out, in]
    "kernel": (lambda x: x.reshape(x.shape[0], -1).T, lambda t: t.T),
    # DenseGeneral kernel over several input axes [*in, out] <-> [out, in] (attention out)
    "out_kernel": (lambda x: x.reshape(-1, x.shape[-1]).T, lambda t: t.T),
    "conv": (lambda x: x.transpose(3, 2, 0, 1), lambda t: t.transpose(2, 3, 1, 0)),
}


@dataclasses.dataclass(frozen=True)
class Rule:
  """One of our variable paths <-> one of the release's names.

  Templates take `{field}`s: digits (block, layer indices) shared by both sides, `{path}`
  (anything; the AugReg identity), and `{part}` on our side only: our `parts` variables
  fused into one release tensor, concatenated along its first axis in this order (timm's
  qkv). `only_with`: one of our variable paths the model must have for the rule to apply
  (where two heads name one of our paths differently, e.g. ConvNeXt's `head/norm`).
  `stage_offset`: the release's `{i}` is ours plus this (timm >= 0.9's Swin opens stage
  i + 1 with stage i's patch merging).
  """
  ours: str
  theirs: str
  codec: str = "same"
  parts: tuple[str, ...] = ()
  only_with: str = ""
  stage_offset: int = 0

  def _shifted(self, fields: dict, sign: int) -> dict:
    if not self.stage_offset:
      return fields
    return {**fields, "i": int(fields["i"]) + sign * self.stage_offset}

  def their_name(self, fields: dict) -> str:
    """The release's name for our path's `fields`."""
    return self.theirs.format(**self._shifted(fields, 1))

  def our_path(self, fields: dict, part: str | None = None) -> str:
    """Our path (of fused `part`) for the release name's `fields`."""
    return self.ours.format(**self._shifted(fields, -1), **({"part": part} if part else {}))


@functools.lru_cache(maxsize=None)
def _pattern(template: str, parts: tuple[str, ...]) -> re.Pattern:
  regex = []
  for literal, field, _, _ in string.Formatter().parse(template):
    regex.append(re.escape(literal))
    if field is not None:
      value = {"part": "|".join(map(re.escape, parts)), "path": ".+"}.get(field, r"\d+")
      regex.append(f"(?P<{field}>{value})")
  return re.compile("".join(regex))


def _dense(ours: str, theirs: str, codec: str = "kernel") -> list[Rule]:
  """A Dense / Conv (`kernel`, `bias`) <-> a Linear / Conv2d (`weight`, `bias`). A rule
  whose variable a model lacks (a layer without bias) is simply never used."""
  return [Rule(f"params/{ours}/kernel", f"{theirs}.weight", codec),
          Rule(f"params/{ours}/bias", f"{theirs}.bias")]


def _norm(ours: str, theirs: str) -> list[Rule]:
  """A LayerNorm / BatchNorm's scale and bias <-> weight and bias (and BatchNorm's
  statistics <-> running_mean / running_var)."""
  return [Rule(f"params/{ours}/scale", f"{theirs}.weight"),
          Rule(f"params/{ours}/bias", f"{theirs}.bias"),
          Rule(f"batch_stats/{ours}/mean", f"{theirs}.running_mean"),
          Rule(f"batch_stats/{ours}/var", f"{theirs}.running_var")]


_BLOCK, _ATTN = "Transformer/encoderblock_{i}/", "MultiHeadDotProductAttention_1"
_QKV = ("query", "key", "value")
_TIMM_BLOCKS = [
    Rule("params/cls", "cls_token"),
    *_norm(_BLOCK + "LayerNorm_0", "blocks.{i}.norm1"),
    Rule(f"params/{_BLOCK}{_ATTN}/{{part}}/kernel", "blocks.{i}.attn.qkv.weight", "kernel",
         _QKV),
    Rule(f"params/{_BLOCK}{_ATTN}/{{part}}/bias", "blocks.{i}.attn.qkv.bias", "flat", _QKV),
    *_dense(f"{_BLOCK}{_ATTN}/out", "blocks.{i}.attn.proj", "out_kernel"),
    *_norm(_BLOCK + "LayerNorm_2", "blocks.{i}.norm2"),
    *_dense(_BLOCK + "MlpBlock_3/Dense_0", "blocks.{i}.mlp.fc1"),
    *_dense(_BLOCK + "MlpBlock_3/Dense_1", "blocks.{i}.mlp.fc2"),
    *_norm("Transformer/encoder_norm", "norm"),
]
_TIMM_PATCH = [*_dense("embedding", "patch_embed.proj", "conv"), Rule(POSEMB, "pos_embed")]
_MP_HEAD = [*_dense("head/proj", "head.proj"), *_norm("head/norm", "head.ln"),
            *_dense("head/conv_0", "head.downblocks.0.0", "conv"),
            *_dense("head/conv_1", "head.downblocks.0.2", "conv"),
            *_dense("head/fc_cls", "head.classifier1"),
            *_dense("head/fc_cov", "head.classifier2")]
_PSRP_RULES = [Rule(f"params/{_BLOCK}psrp/{ours}/kernel", f"blocks.{{i}}.psrp.{theirs}.weight",
                    "kernel")
               for ours, theirs in (("down", "down"), ("scale", "up_weight"),
                                    ("shift", "up_bias"))]
_STEM = "visual_tokens.tokens"
_CONV_STEM = [*_dense("conv_stem/conv", f"{_STEM}.stem.0", "conv"),
              *_dense("conv_stem/stage_{k}/denselayer{j}/conv{n}",
                      _STEM + ".stage.{k}.denselayer{j}.conv{n}", "conv"),
              *_norm("conv_stem/stage_{k}/norm", _STEM + ".stage.{k}.norm"),
              *_dense("conv_stem/stage_{k}/conv", _STEM + ".stage.{k}.conv", "conv"),
              *_dense("conv_stem/proj", f"{_STEM}.transition", "conv")]
_DROPCOV_HEAD = [*_dense("head/qkv", "classifier.representation.wr"),
                 *_dense("head/fc_cls", "classifier.cls_fc"),
                 *_dense("head/fc_cov", "classifier.visual_fc")]
# The DropCov release's pos_embed: a Parameter (requires_grad=False) holding its sinusoidal
# table for 1 + 14 x 14 tokens at any image size (`visualTokens.num_patches`).
DROPCOV_POSEMB_TOKENS = 1 + 14 * 14


def _dropcov_posemb(cls_shape: tuple[int, ...]) -> np.ndarray:
  return sinusoid_posemb(DROPCOV_POSEMB_TOKENS, cls_shape[-1])


@dataclasses.dataclass(frozen=True)
class NameTable:
  """A release's names: `rules`, `classifier` (a regex of its classifier's names, skipped
  with load_head=False) and `tables`: (release name, our variable path, the release's
  fixed array as a function of that variable's shape), a position table the model does not
  store; present whenever that variable is."""
  rules: tuple[Rule, ...]
  classifier: str
  tables: tuple[tuple[str, str, Callable[[tuple], np.ndarray]], ...] = ()


NAME_TABLES: dict[str, NameTable] = {
    "augreg": NameTable((Rule("params/{path}", "{path}"),), r"^(head|pre_logits)/"),
    "timm": NameTable((*_TIMM_PATCH, *_TIMM_BLOCKS, *_dense("head", "head")),
                      r"^(head|pre_logits)\."),
    "moment_probing": NameTable(
        (*_TIMM_PATCH, *_TIMM_BLOCKS, *_dense("head", "head"), *_MP_HEAD, *_PSRP_RULES),
        r"^head\."),
    "dropcov_deit": NameTable((*_CONV_STEM, *_TIMM_BLOCKS, *_DROPCOV_HEAD), r"^classifier\.",
                              (("pos_embed", "params/cls", _dropcov_posemb),)),
}


def _layout(name: str) -> NameTable:
  if name not in NAME_TABLES:
    raise ConversionError(f"unknown ViT layout {name!r}; valid: {', '.join(NAME_TABLES)}")
  return NAME_TABLES[name]


def detect_layout(format: str, names) -> str | None:
  """The ViT layout of a file: 'augreg' for every `.npz`, else the one its names tell
  (`gcp.convert.layouts.detect`), or None."""
  if format == "vit_npz":
    return "augreg"
  layout = layouts.detect(format, names)
  return layout.name if layout and layout.name in NAME_TABLES else None


def _flatten(variables) -> dict[str, Any]:
  return {"/".join(p): v for p, v in flax.traverse_util.flatten_dict(dict(variables)).items()}


def _links(layout: str, paths) -> dict[str, tuple[Rule, list[str]]]:
  """Our variable paths -> `{release name: (rule, our paths in fused order)}`."""
  paths = list(paths)
  groups, unmapped, present = {}, [], set(paths)
  for path in paths:
    for rule in _layout(layout).rules:
      match = _pattern(rule.ours, rule.parts).fullmatch(path)
      if match and (not rule.only_with or rule.only_with in present):
        fields = match.groupdict()
        part = fields.pop("part", None)
        groups.setdefault(rule.their_name(fields), (rule, {}))[1][part] = path
        break
    else:
      unmapped.append(path)
  if unmapped:
    fitting = [n for n in NAME_TABLES if n != layout and _maps_all(n, paths)]
    raise ConversionError(
        f"the {layout} layout has no name for {len(unmapped)} variable(s) of this model, e.g. "
        f"{', '.join(unmapped[:4])}: the release it describes has no such network. Layouts "
        f"that hold this model: {', '.join(fitting) or 'none'}")
  return {name: (rule, [parts[p] for p in (rule.parts or (None,))])
          for name, (rule, parts) in groups.items()}


def _maps_all(layout: str, paths) -> bool:
  rules, present = _layout(layout).rules, set(paths)
  return all(any(_pattern(r.ours, r.parts).fullmatch(p)
                 and (not r.only_with or r.only_with in present) for r in rules)
             for p in present)


def _tables(layout: str, flat: dict) -> dict[str, np.ndarray]:
  return {name: table(flat[path].shape) for name, path, table in _layout(layout).tables
          if path in flat}


def _encode(rule: Rule, arrays: list) -> np.ndarray:
  encoded = [_CODECS[rule.codec][0](a) for a in arrays]
  return encoded[0] if len(encoded) == 1 else np.concatenate(encoded)


def _encoded_shape(rule: Rule, shapes: list[tuple]) -> tuple:
  # Zero-strided stand-ins: the codecs only reshape and transpose, so nothing is allocated
  # except a fused tensor's concatenation.
  return _encode(rule, [np.broadcast_to(np.float32(0), s) for s in shapes]).shape


def _decode(rule: Rule, tensor: np.ndarray) -> list[np.ndarray]:
  parts = np.split(tensor, len(rule.parts)) if rule.parts else [tensor]
  return [_CODECS[rule.codec][1](p) for p in parts]


def _numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def export_variables(variables, layout: str) -> dict[str, np.ndarray]:
  """Our ViT variables -> `{release name: float32 array in the release's layout}` (the
  file's state_dict / npz content; PyTorch BatchNorm's `num_batches_tracked` is added by
  `gcp.convert.pytorch.write`). Raises `ConversionError` naming the layouts that fit if
  this layout's release has no such network (e.g. timm for an MP head)."""
  flat = _flatten(variables)
  out = {name: _encode(rule, [np.asarray(flat[p], np.float32) for p in paths])
         for name, (rule, paths) in _links(layout, flat).items()}
  out.update(_tables(layout, flat))
  return out


def to_ours(tensors, layout: str) -> dict[str, np.ndarray]:
  """A file's `{release name: array}` -> `{our variable path: float32 array}` without a
  model: fused tensors split, kernels as `[in, out]` matrices and biases flat (reshape to
  the model's shapes on import). Names the layout does not know pass through unchanged."""
  rules = _layout(layout).rules
  out = {}
  for name, value in tensors.items():
    rule, match = next(((r, m) for r in rules for m in [_pattern(r.theirs, ()).fullmatch(name)]
                        if m), (None, None))
    if rule is None:
      out[name] = _numpy(value)
      continue
    fields = match.groupdict()
    for part, array in zip(rule.parts or (None,), _decode(rule, _numpy(value))):
      out[rule.our_path(fields, part)] = array
  return out


def _posemb_fits(source: tuple, target: tuple) -> bool:
  def grid(n):
    g = int(round(np.sqrt(n - 1)))
    return g * g + 1 == n
  return (len(source) == len(target) == 3 and source[0] == target[0] == 1
          and source[2] == target[2] and grid(source[1]) and grid(target[1]))


def release_shapes(target, layout: str) -> dict[str, tuple[int, ...]]:
  """`{release name: shape}` of a model's file in `layout`: what `export_variables` writes
  and what a strict import expects. `target`: variables or their ShapeDtypeStructs
  (`jax.eval_shape` of `init`, so that no big model is built)."""
  flat = _flatten(target)
  shapes = {name: _encoded_shape(rule, [flat[p].shape for p in paths])
            for name, (rule, paths) in _links(layout, flat).items()}
  shapes.update({name: table.shape for name, table in _tables(layout, flat).items()})
  return shapes


def import_variables(tensors, target, layout: str, *, load_head: bool = True,
                     resample: bool = True, source: str = "checkpoint") -> dict:
  """A file's `{release name: array or torch tensor}` -> variables shaped like `target`
  (arrays or ShapeDtypeStructs: `{"params": ..., "batch_stats": ...}`), cast to their
  dtypes. See the module docstring for the rules."""
  classifier = _layout(layout).classifier
  flat_target = _flatten(target)
  links = _links(layout, flat_target)
  has_psrp = any(_PSRP.search(paths[0]) and name in tensors
                 for name, (_, paths) in links.items())
  left_out = {name for name, (_, paths) in links.items()
              if (not load_head and _HEAD.match(paths[0]))
              or (not has_psrp and _PSRP.search(paths[0]))}
  expected = {name: shape for name, shape in release_shapes(target, layout).items()
              if name not in left_out}
  found = {name: np.shape(value) for name, value in tensors.items()
           if load_head or not re.search(classifier, name)}

  def fits(name, want, got):
    return tuple(want) == tuple(got) or (resample and name in links and
                                         links[name][1] == [POSEMB] and _posemb_fits(got, want))
  report = describe_mismatch(expected, found, fits)
  if report:
    raise ConversionError(f"{source} does not match the architecture (names of the {layout} "
                          f"layout):\n{report}")
  for name, fixed in _tables(layout, flat_target).items():
    if not np.allclose(_numpy(tensors[name]), fixed, rtol=0, atol=1e-5):
      raise ConversionError(f"{source}: {name} is not the fixed table the model computes "
                            f"(the release's sinusoidal position embedding); the file is "
                            "not from this release's network")
  out = {}
  for name, (rule, paths) in links.items():
    if name in left_out:
      continue
    for path, value in zip(paths, _decode(rule, _numpy(tensors[name]))):
      want = flat_target[path]
      if path == POSEMB:
        value = resample_posemb(value, want.shape[1])
      out[tuple(path.split("/"))] = value.reshape(want.shape).astype(want.dtype)
  return flax.traverse_util.unflatten_dict(out)


def write_npz(path: str, variables) -> None:
  """Saves our ViT variables as an AugReg-layout `.npz`."""
  np.savez(path, **export_variables(variables, "augreg"))


def read_npz(path: str) -> dict[str, np.ndarray]:
  """An AugReg / big_vision `.npz` -> `{name: float32 array}`."""
  try:
    with np.load(path, allow_pickle=False) as data:
      return {k: np.asarray(data[k], np.float32) for k in data.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ConversionError(f"{path} is not a readable .npz file: {e!r}") from e


def resample_variables(variables, num_tokens: int) -> dict:
  """Our ViT variables with the position embedding resampled to `num_tokens` (1 + grid^2),
  e.g. for images of another size: num_tokens = 1 + (image_size // patch) ** 2."""
  params = flax.traverse_util.flatten_dict(dict(variables["params"]))
  key = tuple(POSEMB.split("/")[1:])
  params[key] = resample_posemb(params[key], num_tokens)
  return {**variables, "params": flax.traverse_util.unflatten_dict(params)}


def _infer_head(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
  """The token head's `create_model` arguments from `to_ours` arrays ({} if none)."""
  shape = lambda name: arrays[f"params/head/{name}"].shape
  if "params/head/proj/kernel" in arrays:  # Moment Probing
    psrp = [a.shape[-1] for p, a in arrays.items() if p.endswith("/psrp/down/kernel")]
    return {"head": "mp_plus" if psrp else "mp", "num_classes": shape("fc_cls/kernel")[-1],
            "proj_dim": shape("proj/kernel")[-1],
            "num_groups": shape("conv_0/kernel")[2] + 1,  # cross-covariances = groups - 1
            **({"psrp_rank": psrp[0]} if psrp else {})}
  if "params/head/qkv/kernel" in arrays:  # DropCov: qkv D -> 3 G c, fc_cov G c^2 -> K
    qk, flat = shape("qkv/kernel")[-1] // 3, shape("fc_cov/kernel")[0]
    return {"head": "dropcov", "num_classes": shape("fc_cls/kernel")[-1],
            "cov_heads": qk * qk // flat, "cov_head_dim": flat // qk}
  if "params/head/kernel" in arrays:
    return {"head": "linear", "num_classes": shape("kernel")[-1]}
  return {}


def infer_spec(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
  """`create_model` arguments (arch, stem, the head and its sizes when the file has one)
  and the image size of the file's position embedding, from `to_ours` arrays. The number of
  attention heads is matched only where the file tells it (AugReg's `[D, H, D/H]` query)."""
  block = "params/Transformer/encoderblock_0/"
  conv_stem = "params/conv_stem/proj/kernel" in arrays
  try:
    depth = len({m.group(1) for n in arrays
                 for m in [re.match(r"params/Transformer/encoderblock_(\d+)/", n)] if m})
    query = arrays[block + f"{_ATTN}/query/kernel"].shape
    mlp = arrays[block + "MlpBlock_3/Dense_0/kernel"].shape[-1]
    if conv_stem:  # no patch size (the arch's is unused); stride 16, 14 x 14 tokens
      patch, width, grid = None, arrays["params/conv_stem/proj/kernel"].shape[-1], 14
    else:
      patch, _, _, width = arrays["params/embedding/kernel"].shape
      grid = int(round(np.sqrt(arrays[POSEMB].shape[1] - 1)))
  except (KeyError, ValueError, IndexError) as e:
    raise ConversionError(f"not a ViT of a known layout (no {e})") from None
  heads = query[1] if len(query) == 3 else None
  shape = (patch, width, depth, heads, mlp)
  arch = [a for a, s in VIT_SIZES.items()
          if all(want is None or want == have for want, have in zip(shape, s))]
  # ViT-S and DeiT-S (ViT-B, DeiT-B) share a shape; the conv stem exists only in the
  # DropCov release's DeiTs.
  arch.sort(key=lambda a: conv_stem and not a.startswith(("deit", "dropcov")))
  if not arch:
    raise ConversionError(f"a ViT with patch {patch or '-'}, width {width}, depth {depth}, "
                          f"{heads or '?'} heads and MLP {mlp} is not one of "
                          f"{', '.join(VIT_SIZES)}")
  return {"arch": arch[0], **({"stem": "conv"} if conv_stem else {}),
          "image_size": grid * (patch or 16), **_infer_head(arrays)}


# --------------------------------------------------- the ViT layouts in gcp.convert.layouts

# layout -> (its release's network, file format, the stem and heads that network has, the
# model attributes it fixes: `ViT` ones, and head ones where the head has them). Sizes
# (width, depth, classes, MP's projection and groups, PSRP's rank, DropCov's covariance
# heads) are the model's: the releases' constructors take them.
_NETWORKS = {
    "timm": ("timm's VisionTransformer (DeiT and AugReg in PyTorch; Moment Probing's linear "
             "probe and full fine-tuning)", "pytorch", "patch", ("linear",),
             {"approximate_gelu": False}),
    "moment_probing": ("the Moment Probing release's VisionTransformer "
                       "(models/vision_transformer.py: probing_mode mp, tuning_mode psrp)",
                       "pytorch", "patch", ("linear", "mp", "mp_plus"),
                       {"approximate_gelu": False, "mean_removal": "scalar"}),
    "dropcov_deit": ("the DropCov release's DeiTs (Transformers/src/transformer.py Vit: "
                     "Deit_drop_Tiny, Deit_drop_Small, Deit_drop_Base, T2T_ViT_14)",
                     "pytorch", "conv", ("dropcov",),
                     {"approximate_gelu": False, "mean_removal": "scalar"}),
    "augreg": ("big_vision's ViT (google-research/vision_transformer, AugReg .npz)",
               "vit_npz", "patch", ("linear",), {}),
}
_SIGNATURES = {
    "timm": ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight"),
    "moment_probing": ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight",
                       "head.proj.weight"),
    "dropcov_deit": (f"{_STEM}.stem.0.weight",),
    "augreg": (),  # told by the format: every .npz
}


def _fits(layout: str, spec: dict) -> str:
  """"" if the release network of `layout` holds `create_model(**spec)`, else why not."""
  network, _, stem, heads, fixed = _NETWORKS[layout]
  if spec.get("arch") not in VIT_SIZES:
    return f"its network is a ViT; this model is a {spec.get('arch')}"
  model = create_model(**spec)
  problems = [f"the {model.stem} stem, not {stem}"] if model.stem != stem else []
  if spec["head"] not in heads:
    problems.append(f"the {spec['head']} head, not {' / '.join(heads)}")
  for attr, want in fixed.items():
    have = getattr(model, attr, getattr(model.head, attr, want))
    if have != want:
      problems.append(f"{attr}={have!r}, not {want!r}")
  return f"its network is {network}; this model has {', '.join(problems)}" if problems else ""


for _name, (_network, _format, *_) in _NETWORKS.items():
  layouts.register(layouts.Layout(
      _name, _network, _format, functools.partial(_fits, _name),
      lambda variables, spec, layout=_name: export_variables(variables, layout),
      signature=_SIGNATURES[_name]))
