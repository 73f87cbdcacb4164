"""Checkpoint conversion: the authors' MindSpore `.ckpt` and PyTorch `.pth` files, and ViT
weights (big_vision / AugReg `.npz`, timm state_dicts in `.pth` / `.bin`, see
`gcp.convert.vit`), into our checkpoints (and CNNs back to PyTorch), CLI
`python -m gcp.convert`.

Every format is read into torchvision-style names (`gcp.convert.torch_layout`), the
architecture is read off the tensors (or given), and the tensors are placed one-to-one onto
the model `create_model` builds; anything missing, unexpected or mis-shaped stops the
conversion with a report.

  spec, variables = gcp.convert.convert("mpncovresnet50-15991845.pth")
  logits = gcp.models.create_model(**spec).apply(variables, images)
"""
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gcp import checkpoint
from gcp.config import base_config
from gcp.convert import mindspore, pytorch, vit
from gcp.convert.torch_layout import ConversionError, from_torch, infer_model_spec, to_torch
from gcp.models import create_model

FORMATS = {"mindspore": (".ckpt",), "pytorch": (".pth", ".pth.tar", ".pt", ".tar", ".bin"),
           "vit_npz": (".npz",)}
# The MindSpore releases train a 1001-way classifier; class 1000 is never a target.
_MINDSPORE_EXTRA_CLASS = 1001


def detect_format(path: str) -> str:
  """'mindspore', 'pytorch' or 'vit_npz', from the file name."""
  for name, suffixes in FORMATS.items():
    if path.endswith(suffixes):
      return name
  raise ConversionError(f"cannot tell the format of {path!r} from its name: MindSpore "
                        f"files end in {FORMATS['mindspore']}, PyTorch ones in "
                        f"{FORMATS['pytorch']}, ViT npz ones in {FORMATS['vit_npz']}; "
                        "pass the format explicitly")


def read_tensors(path: str, format: str | None = None) -> tuple[str, dict[str, np.ndarray]]:
  """(format, `{name: float32 array}`) of a foreign checkpoint: torchvision-style names
  (MindSpore, PyTorch; timm names for a timm ViT), AugReg names for 'vit_npz'."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no checkpoint file at {path!r}")
  format = format or detect_format(path)
  if format == "mindspore":
    return format, mindspore.canonical(mindspore.read(path))
  if format == "pytorch":
    return format, pytorch.read(path)
  if format == "vit_npz":
    return format, vit.read_npz(path)
  raise ConversionError(f"unknown format {format!r}; valid: {', '.join(FORMATS)}")


def _drop_extra_class(tensors: dict[str, np.ndarray]) -> None:
  for name in ("fc.weight", "fc.bias"):
    tensors[name] = tensors[name][:_MINDSPORE_EXTRA_CLASS - 1]


def convert(path: str, *, format: str | None = None, arch: str | None = None,
            head: str | None = None, keep_extra_class: bool = False,
            **options) -> tuple[dict[str, Any], dict]:
  """A foreign checkpoint -> (`create_model` arguments, variables as numpy arrays).

  Args:
    path: a MindSpore `.ckpt`, PyTorch `.pth` / `.pth.tar` file (a CNN release or a timm
      ViT) or an AugReg / big_vision ViT `.npz`.
    format: 'mindspore', 'pytorch' or 'vit_npz' (default: from the file name).
    arch, head: override what is read off the tensors (the head must be given for
      `cov` or `eig` models, whose parameters equal an `isqrt` model's).
    keep_extra_class: keep the MindSpore releases' 1001st (never used) class; by default
      the classifier is cut to the 1000 ImageNet classes.
    **options: further `create_model` arguments (e.g. `num_iters`, `width_mult`); for
      ViTs also `image_size` (resample the position embedding) and `seed` (for a fresh
      head), see `_convert_vit`.

  MindSpore checkpoints become the `variant='mindspore'` ResNet (TF SAME padding, their
  BatchNorm eps), so the logits equal the original network's.
  """
  format, tensors = read_tensors(path, format)
  if format == "vit_npz" or (format == "pytorch" and vit.is_timm_vit(tensors)):
    return _convert_vit(path, format, tensors, arch=arch, head=head, **options)
  if (format == "mindspore" and not keep_extra_class and "fc.weight" in tensors
      and tensors["fc.weight"].shape[0] == _MINDSPORE_EXTRA_CLASS):
    _drop_extra_class(tensors)
  inferred = infer_model_spec(tensors)
  spec = {**base_config().model.to_dict(), **inferred, **options}
  spec.update({k: v for k, v in (("arch", arch), ("head", head)) if v})
  if format == "mindspore":
    spec["variant"] = "mindspore"
  model = create_model(**spec)
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
  try:
    variables = from_torch(tensors, dict(target), source=path)
  except ConversionError as e:
    guess = f"{inferred['arch']} + {inferred['head']} head"
    raise ConversionError(f"{e}\nThe tensors look like {guess}; the model built was "
                          f"{spec['arch']} + {spec['head']} head.") from None
  return spec, variables


def _convert_vit(path: str, format: str, tensors: dict[str, np.ndarray], *,
                 arch: str | None, head: str | None, image_size: int | None = None,
                 num_classes: int | None = None, seed: int = 0,
                 **options) -> tuple[dict[str, Any], dict]:
  """A ViT file -> (spec, variables). The file's classifier loads into the 'linear' head
  when it fits (same head, same classes); otherwise the head (and MP+'s PSRP adapters,
  which no foreign file has) are initialised afresh from `seed`. `image_size`: resample
  the position embedding for this resolution (default: the file's)."""
  is_timm = format == "pytorch"
  # timm's fused qkv does not tell the number of heads: the arch (matched without it) does.
  arrays = vit.timm_to_arrays(tensors, 1) if is_timm else tensors
  inferred = vit.infer_spec(arrays, match_heads=not is_timm)
  file_size = inferred.pop("image_size")
  spec = {"dtype": "float32", "head": "linear", **inferred, **options}
  spec.update({k: v for k, v in (("arch", arch), ("head", head),
                                 ("num_classes", num_classes)) if v})
  if not spec.get("num_classes"):
    raise ConversionError(f"{path} has no classifier: pass num_classes (and a head)")
  model = create_model(**spec)
  size = image_size or file_size
  init = lambda: model.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
  target = jax.eval_shape(init)
  load_head = (spec["head"] == "linear" and "head/kernel" in arrays
               and arrays["head/kernel"].shape[1] == spec["num_classes"])
  if is_timm:
    loaded = vit.from_timm(tensors, target, load_head=load_head, source=path)
  else:
    loaded = vit.from_arrays(arrays, target, load_head=load_head, source=path)
  if jax.tree.structure(loaded) != jax.tree.structure(target):
    loaded, _ = checkpoint.merge_pretrained(jax.device_get(init()), loaded,
                                            dont_load="^params/head/|/psrp/")
  return spec, loaded


def convert_to_checkpoint(path: str, out_dir: str, **kwargs) -> dict[str, Any]:
  """`convert()` and save the result as a checkpoint that `config.init_from`,
  `python main.py --mode=eval` and `gcp.checkpoint.load_variables` read. Returns the spec."""
  spec, variables = convert(path, **kwargs)
  checkpoint.save_variables(out_dir, variables, spec)
  return spec


def export_pytorch(checkpoint_dir: str, out_path: str, step: int | None = None) -> int:
  """Our checkpoint -> a PyTorch state_dict in the fast-MPN-COV / torchvision naming
  (`load_state_dict(strict=True)` on the release's model accepts it). Returns the number
  of tensors written."""
  tensors = to_torch(checkpoint.load_variables(checkpoint_dir, step))
  pytorch.write(out_path, tensors)
  return len(tensors)
