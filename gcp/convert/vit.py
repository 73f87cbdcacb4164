"""ViT weights from the big_vision / AugReg `.npz` layout and from timm state_dicts.

AugReg `.npz` (google-research/vision_transformer, read by big_vision's `vit.load`): a flat
dict of "/"-joined names, `embedding/kernel` `[p, p, 3, D]`, `cls` `[1, 1, D]`,
`Transformer/posembed_input/pos_embedding` `[1, 1 + N, D]`,
`Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/query/kernel` `[D, H, D/H]`,
..., `Transformer/encoder_norm/{scale,bias}`, `head/{kernel,bias}` (and `pre_logits/*` in
some ImageNet-21k files). `gcp.models.vit.ViT` has exactly these names, so our parameters
are the file's names split at "/".

timm (`timm.models.vision_transformer.VisionTransformer`, names unchanged from timm 0.4
through 1.0): `patch_embed.proj.{weight,bias}`, `cls_token`, `pos_embed`,
`blocks.{i}.norm1`, `blocks.{i}.attn.qkv` (`[3 D, D]`, rows ordered (q|k|v, head, dim)),
`blocks.{i}.attn.proj`, `blocks.{i}.norm2`, `blocks.{i}.mlp.fc1`, `blocks.{i}.mlp.fc2`,
`norm`, `head`; dense weights `[out, in]`, conv OIHW. DeiT's released checkpoints use
the same names under "model".

Both loaders are strict: every target name must be matched one-to-one, and anything
missing, unexpected or mis-shaped raises `ConversionError` with a report (timm tensors are
reported under the AugReg names they map to, qkv split into query / key / value). Two
exceptions, both by request or by construction:
- `load_head=False`: the file's classifier (`head/*`, `pre_logits/*`) is ignored and the
  target's head is not loaded (an ImageNet-21k backbone for a new MP head);
- PSRP adapters (`.../psrp/...`, MP+) load only if the file has them (foreign files never
  do); otherwise they are left out.
Left-out parts are absent from the returned tree: fill them from a fresh `init` with
`gcp.checkpoint.merge_pretrained(init, loaded, dont_load="^params/head/|/psrp/")`.
A position embedding for another grid is resampled (`gcp.models.vit.resample_posemb`).
"""
import re
import zipfile
from typing import Any

import flax.traverse_util
import numpy as np

from gcp.checkpoint import describe_mismatch
from gcp.convert.torch_layout import ConversionError
from gcp.models.vit import VIT_SIZES, resample_posemb

POSEMB = "Transformer/posembed_input/pos_embedding"
_HEAD = re.compile(r"^(head|pre_logits)/")
_PSRP = re.compile(r"/psrp/")


def to_arrays(variables) -> dict[str, np.ndarray]:
  """Our ViT variables -> `{AugReg name: array}` (what `np.savez` writes)."""
  flat = flax.traverse_util.flatten_dict(dict(variables["params"]))
  return {"/".join(path): np.asarray(value) for path, value in flat.items()}


def write_npz(path: str, variables) -> None:
  """Saves our ViT variables as an AugReg-layout `.npz`."""
  np.savez(path, **to_arrays(variables))


def read_npz(path: str) -> dict[str, np.ndarray]:
  """An AugReg / big_vision `.npz` -> `{name: float32 array}`."""
  try:
    with np.load(path, allow_pickle=False) as data:
      return {k: np.asarray(data[k], np.float32) for k in data.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
    raise ConversionError(f"{path} is not a readable .npz file: {e!r}") from e


def _posemb_fits(source: tuple, target: tuple) -> bool:
  def grid(n):
    g = int(round(np.sqrt(n - 1)))
    return g * g + 1 == n
  return (len(source) == len(target) == 3 and source[0] == target[0] == 1
          and source[2] == target[2] and grid(source[1]) and grid(target[1]))


def from_arrays(arrays: dict[str, np.ndarray], target, *, load_head: bool = True,
                resample: bool = True, source: str = "checkpoint") -> dict:
  """`{AugReg name: array}` -> `{"params": ...}` shaped like `target`'s params (arrays or
  ShapeDtypeStructs), cast to their dtypes. See the module docstring for the rules."""
  flat_target = {"/".join(p): v for p, v in
                 flax.traverse_util.flatten_dict(dict(target["params"])).items()}
  if not load_head:
    arrays = {n: a for n, a in arrays.items() if not _HEAD.match(n)}
  has_psrp = any(_PSRP.search(n) for n in arrays)
  expected = {n: v for n, v in flat_target.items()
              if (load_head or not _HEAD.match(n)) and (has_psrp or not _PSRP.search(n))}
  def fits(name, want, got):
    return tuple(want) == tuple(got) or (name == POSEMB and resample and
                                         _posemb_fits(got, want))
  report = describe_mismatch({n: v.shape for n, v in expected.items()},
                             {n: a.shape for n, a in arrays.items()}, fits)
  if report:
    raise ConversionError(f"{source} does not match the architecture:\n{report}")
  out = {}
  for n, v in expected.items():
    value = np.asarray(arrays[n])
    if n == POSEMB:
      value = resample_posemb(value, v.shape[1])
    out[("params",) + tuple(n.split("/"))] = value.astype(v.dtype)
  return flax.traverse_util.unflatten_dict(out)


_TIMM_BLOCK = {"norm1.weight": "LayerNorm_0/scale", "norm1.bias": "LayerNorm_0/bias",
               "norm2.weight": "LayerNorm_2/scale", "norm2.bias": "LayerNorm_2/bias",
               "mlp.fc1.weight": "MlpBlock_3/Dense_0/kernel",
               "mlp.fc1.bias": "MlpBlock_3/Dense_0/bias",
               "mlp.fc2.weight": "MlpBlock_3/Dense_1/kernel",
               "mlp.fc2.bias": "MlpBlock_3/Dense_1/bias",
               "attn.proj.bias": "MultiHeadDotProductAttention_1/out/bias"}
_TIMM_TOP = {"patch_embed.proj.bias": "embedding/bias", "cls_token": "cls",
             "pos_embed": POSEMB, "norm.weight": "Transformer/encoder_norm/scale",
             "norm.bias": "Transformer/encoder_norm/bias", "head.bias": "head/bias"}


def timm_to_arrays(state_dict: dict[str, Any], num_heads: int) -> dict[str, np.ndarray]:
  """A timm ViT state_dict -> `{AugReg name: array}`; names it does not know pass through
  unchanged (so that a report shows them as unexpected)."""
  out = {}
  attn = "MultiHeadDotProductAttention_1"
  for name, value in state_dict.items():
    x = np.asarray(value, np.float32)
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if name in _TIMM_TOP:
      out[_TIMM_TOP[name]] = x
    elif name == "patch_embed.proj.weight" and x.ndim == 4:
      out["embedding/kernel"] = x.transpose(2, 3, 1, 0)
    elif name == "head.weight" and x.ndim == 2:
      out["head/kernel"] = x.T
    elif match and match.group(2) in _TIMM_BLOCK:
      key = f"Transformer/encoderblock_{match.group(1)}/{_TIMM_BLOCK[match.group(2)]}"
      out[key] = x.T if x.ndim == 2 else x
    elif match and match.group(2) == "attn.proj.weight" and x.ndim == 2 and (
        x.shape[1] % num_heads == 0):
      key = f"Transformer/encoderblock_{match.group(1)}/{attn}/out/kernel"
      out[key] = x.T.reshape(num_heads, x.shape[1] // num_heads, x.shape[0])
    elif match and match.group(2) in ("attn.qkv.weight", "attn.qkv.bias") and (
        x.shape[0] % (3 * num_heads) == 0):
      prefix = f"Transformer/encoderblock_{match.group(1)}/{attn}"
      head_dim = x.shape[0] // (3 * num_heads)
      if x.ndim == 2:  # [3 D, D] -> 3 x [D, H, D/H]
        parts = x.reshape(3, num_heads, head_dim, x.shape[1]).transpose(0, 3, 1, 2)
        leaf = "kernel"
      else:
        parts, leaf = x.reshape(3, num_heads, head_dim), "bias"
      for part, proj in zip(parts, ("query", "key", "value")):
        out[f"{prefix}/{proj}/{leaf}"] = part
    else:
      out[name] = x
  return out


def _num_heads(target) -> int:
  params = target["params"]
  return int(params["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_1"]
             ["query"]["kernel"].shape[1])


def from_timm(state_dict: dict[str, Any], target, *, load_head: bool = True,
              resample: bool = True, source: str = "timm state_dict") -> dict:
  """A timm ViT state_dict (tensors or arrays) -> variables shaped like `target`."""
  state_dict = {k: (v.detach().cpu().float().numpy() if hasattr(v, "detach") else v)
                for k, v in state_dict.items()}
  return from_arrays(timm_to_arrays(state_dict, _num_heads(target)), target,
                     load_head=load_head, resample=resample,
                     source=f"{source} (names in the AugReg layout, qkv split)")


def is_timm_vit(tensors) -> bool:
  """Whether a state_dict has timm ViT names."""
  return "blocks.0.attn.qkv.weight" in tensors and "patch_embed.proj.weight" in tensors


def resample_variables(variables, num_tokens: int) -> dict:
  """Our ViT variables with the position embedding resampled to `num_tokens` (1 + grid^2),
  e.g. for images of another size: num_tokens = 1 + (image_size // patch) ** 2."""
  params = flax.traverse_util.flatten_dict(dict(variables["params"]))
  key = tuple(POSEMB.split("/"))
  params[key] = resample_posemb(params[key], num_tokens)
  return {**variables, "params": flax.traverse_util.unflatten_dict(params)}


def infer_spec(arrays: dict[str, np.ndarray], match_heads: bool = True) -> dict[str, Any]:
  """`create_model` arguments (arch, num_classes; head 'linear' when the file has a
  classifier) and the image size of the file's position embedding, from AugReg names.
  `match_heads=False` matches the arch without the number of heads (timm's fused qkv)."""
  try:
    patch, _, _, width = arrays["embedding/kernel"].shape
    depth = len({m.group(1) for n in arrays
                 for m in [re.match(r"Transformer/encoderblock_(\d+)/", n)] if m})
    block = "Transformer/encoderblock_0/"
    heads = arrays[block + "MultiHeadDotProductAttention_1/query/kernel"].shape[1]
    mlp = arrays[block + "MlpBlock_3/Dense_0/kernel"].shape[1]
    grid = int(round(np.sqrt(arrays[POSEMB].shape[1] - 1)))
  except (KeyError, ValueError, IndexError) as e:
    raise ConversionError(f"not a ViT in the AugReg layout (no {e})") from None
  shape = (patch, width, depth, heads, mlp)
  arch = [a for a, s in VIT_SIZES.items()
          if s == shape or (not match_heads and s[:3] + s[4:] == shape[:3] + shape[4:])]
  if not arch:
    raise ConversionError(f"a ViT with patch {patch}, width {width}, depth {depth}, "
                          f"{heads if match_heads else '?'} heads and MLP {mlp} is not one "
                          f"of {', '.join(VIT_SIZES)}")
  spec = {"arch": arch[0], "image_size": grid * patch}
  if "head/kernel" in arrays:
    spec.update(head="linear", num_classes=int(arrays["head/kernel"].shape[1]))
  return spec
