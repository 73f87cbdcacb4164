"""Checkpoint conversion: the authors' MindSpore `.ckpt` and PyTorch `.pth` files, ViT
weights (big_vision / AugReg `.npz`, timm state_dicts in `.pth` / `.bin`, see
`gcp.convert.vit`) and Swin / ConvNeXt ones (the Moment Probing release's, Microsoft's and
FB's, see `gcp.convert.hierarchical`), into our checkpoints, and ours back into any
release's layout; CLI `python -m gcp.convert`.

CNN files are read into torchvision-style names (`gcp.convert.torch_layout`) through their
release's layout (`gcp.convert.layouts`, told apart by the names), the architecture is read
off the tensors (or given), and the tensors are placed one-to-one onto the model
`create_model` builds; anything missing, unexpected or mis-shaped stops the conversion with
a report. `convert_to_checkpoint` records the layout a checkpoint came from (`SOURCE_FILE`
next to it), and `export` writes that layout back unless told another.

  spec, variables = gcp.convert.convert("mpncovresnet50-15991845.pth")
  logits = gcp.models.create_model(**spec).apply(variables, images)
  gcp.convert.export("converted/r50", "r50.pth", layout="fastmpn_resnet_finetune")
"""
import json
import os
from typing import Any, NamedTuple

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from gcp import checkpoint
from gcp.config import base_config
from gcp.convert import hierarchical, layouts, mindspore, pytorch, vit
from gcp.convert.layouts import LAYOUTS, Layout
from gcp.convert.torch_layout import ConversionError, from_torch, infer_model_spec
from gcp.data.imagenet import class_names as imagenet_class_names
from gcp.models import VIT_ARCHS, create_model
from gcp.workdir import write_atomic

FORMATS = {"mindspore": (".ckpt",), "pytorch": (".pth", ".pth.tar", ".pt", ".tar", ".bin"),
           "vit_npz": (".npz",)}
_WRITERS = {"pytorch": pytorch.write, "mindspore": mindspore.write,
            "vit_npz": lambda path, arrays: np.savez(path, **arrays)}
# The MindSpore releases train a 1001-way classifier; class 1000 is never a target.
_MINDSPORE_EXTRA_CLASS = 1001
# Written next to a converted checkpoint: the file, format, layout and weight set it came
# from (JSON), so that `export` writes the same layout back by default.
SOURCE_FILE = "source.json"


def detect_format(path: str) -> str:
  """'mindspore', 'pytorch' or 'vit_npz', from the file name."""
  for name, suffixes in FORMATS.items():
    if path.endswith(suffixes):
      return name
  raise ConversionError(f"cannot tell the format of {path!r} from its name: MindSpore "
                        f"files end in {FORMATS['mindspore']}, PyTorch ones in "
                        f"{FORMATS['pytorch']}, ViT npz ones in {FORMATS['vit_npz']}; "
                        "pass the format explicitly")


class Source(NamedTuple):
  """A foreign checkpoint as read by `read_tensors`."""
  format: str
  tensors: dict[str, np.ndarray]  # torchvision-style names for CNNs, the file's for ViTs
  layout: str | None  # the CNN layout its names told (None: canonical names, or not a CNN)
  weights: str | None  # PyTorch: the weight set read ('state_dict', 'ema'; None: bare)


def read_tensors(path: str, format: str | None = None, weights: str | None = None) -> Source:
  """A foreign checkpoint's tensors as float32 arrays: MindSpore and PyTorch CNNs under
  torchvision-style names (a PyTorch file through the release layout its names tell),
  ViTs under the file's names (timm's; AugReg's for 'vit_npz'). `weights`: see
  `gcp.convert.pytorch.read`."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no checkpoint file at {path!r}")
  format = format or detect_format(path)
  if format not in FORMATS:
    raise ConversionError(f"unknown format {format!r}; valid: {', '.join(FORMATS)}")
  if weights and format != "pytorch":
    raise ConversionError(f"weights={weights!r} chooses between the weight sets of a PyTorch "
                          f"training checkpoint; {path} is a {format} file")
  if format == "mindspore":
    return Source(format, mindspore.canonical(mindspore.read(path)), None, None)
  if format == "vit_npz":
    return Source(format, vit.read_npz(path), None, None)
  tensors, chosen = pytorch.read(path, weights)
  layout = layouts.detect(format, tensors)
  if layout and layout.renames:
    tensors = layout.renames.canonical(tensors, path)
  return Source(format, tensors, layout and layout.name, chosen)


def _drop_extra_class(tensors: dict[str, np.ndarray]) -> None:
  for name in ("fc.weight", "fc.bias"):
    tensors[name] = tensors[name][:_MINDSPORE_EXTRA_CLASS - 1]


class Converted(NamedTuple):
  """A conversion's result and where it came from."""
  spec: dict[str, Any]  # create_model arguments
  variables: dict  # numpy arrays
  format: str  # the file's: a key of FORMATS
  layout: str | None  # the release layout of the file (None: no release network fits)
  weights: str | None  # PyTorch: 'state_dict', 'ema' (None: a bare state_dict)


def convert(path: str, *, format: str | None = None, arch: str | None = None,
            head: str | None = None, keep_extra_class: bool = False,
            weights: str | None = None, **options) -> tuple[dict[str, Any], dict]:
  """A foreign checkpoint -> (`create_model` arguments, variables as numpy arrays).

  Args:
    path: a MindSpore `.ckpt`, PyTorch `.pth` / `.pth.tar` file (a CNN release, or a ViT
      of timm, the Moment Probing or the DropCov DeiT release: `gcp.convert.vit`,
      told apart by their names) or an AugReg / big_vision ViT `.npz`.
    format: 'mindspore', 'pytorch' or 'vit_npz' (default: from the file name).
    arch, head: override what is read off the tensors (the head must be given for
      `cov` or `eig` models, whose parameters equal an `isqrt` model's).
    keep_extra_class: keep the MindSpore releases' 1001st (never used) class; by default
      the classifier is cut to the 1000 ImageNet classes.
    weights: for a PyTorch training checkpoint with both weight sets (timm's `state_dict`
      and `state_dict_ema`): 'ema' (the default, with a note on the console: the set the
      releases evaluate) or 'state_dict'.
    **options: further `create_model` arguments (e.g. `num_iters`, `width_mult`); for
      ViTs also `image_size` (resample the position embedding) and `seed` (for a fresh
      head), see `_convert_tables`.

  MindSpore checkpoints become the `variant='mindspore'` ResNet (TF SAME padding, their
  BatchNorm eps), so the logits equal the original network's.
  """
  converted = _convert(path, format=format, arch=arch, head=head,
                       keep_extra_class=keep_extra_class, weights=weights, **options)
  return converted.spec, converted.variables


def _convert(path: str, *, format: str | None, arch: str | None, head: str | None,
             keep_extra_class: bool, weights: str | None, **options) -> Converted:
  """`convert()`, with the layout and weight set of the file."""
  source = read_tensors(path, format, weights)
  format, tensors = source.format, source.tensors
  layout = vit.detect_layout(format, tensors)
  if layout:
    spec, variables = _convert_tables(path, layout, tensors, arch=arch, head=head, **options)
    return Converted(spec, variables, format, layout, source.weights)
  if arch in VIT_ARCHS or arch in hierarchical.ARCHS.values():
    raise ConversionError(f"{path} holds no ViT, Swin or ConvNeXt in a layout the converter "
                          f"knows ({', '.join(vit.NAME_TABLES)}): their names are read off the "
                          "file, so --arch cannot stand in for them")
  if (format == "mindspore" and not keep_extra_class and "fc.weight" in tensors
      and tensors["fc.weight"].shape[0] == _MINDSPORE_EXTRA_CLASS):
    _drop_extra_class(tensors)
  inferred = infer_model_spec(tensors)
  spec = {**base_config().model.to_dict(), **inferred, **options}
  spec.update({k: v for k, v in (("arch", arch), ("head", head)) if v})
  if format == "mindspore":
    spec["variant"] = "mindspore"
  model = create_model(**spec)
  # A CNN's variable shapes do not depend on the image size; 224 px is one every CNN takes.
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  try:
    variables = from_torch(tensors, dict(target), source=path)
  except ConversionError as e:
    guess = f"{inferred['arch']} + {inferred['head']} head"
    raise ConversionError(f"{e}\nThe tensors look like {guess}; the model built was "
                          f"{spec['arch']} + {spec['head']} head.") from None
  # The layout the names told, else the one the release network of this model has.
  layout = source.layout or next(iter(layouts.fitting(spec)), None)
  return Converted(spec, variables, format, layout, source.weights)


# The `create_model` arguments a token / map head file tells about its head (the others
# describe the backbone).
_HEAD_KEYS = ("head", "num_classes", "proj_dim", "num_groups", "psrp_rank", "cov_heads",
              "cov_head_dim")


def _convert_tables(path: str, layout: str, tensors: dict[str, np.ndarray], *,
                    arch: str | None, head: str | None, image_size: int | None = None,
                    num_classes: int | None = None, seed: int = 0,
                    **options) -> tuple[dict[str, Any], dict]:
  """A ViT, Swin or ConvNeXt file in a name-table layout (`gcp.convert.vit.NAME_TABLES`,
  those of `gcp.convert.hierarchical` among them) -> (spec, variables). The file's
  classifier loads when the model's head is the one the file holds (same head, classes and
  sizes); otherwise the head (and MP+'s PSRP adapters, when the file has none) are
  initialised afresh from `seed`, and a ConvNeXt becomes the Moment Probing release's
  network (its unbiased downsample norms) unless `unbiased_downsample_norm` is given.
  `image_size`: the resolution to build for (a ViT's position embedding is resampled;
  default: the file's)."""
  if layout in hierarchical.NAME_TABLES:
    tables, inferred = hierarchical, hierarchical.infer_spec(tensors, layout)
  else:
    tables, inferred = vit, vit.infer_spec(vit.to_ours(tensors, layout))
  file_size = inferred.pop("image_size")
  file_head = {k: v for k, v in inferred.items() if k in _HEAD_KEYS}
  spec = {"dtype": "float32", "head": "linear", **inferred, **options}
  spec.update({k: v for k, v in (("arch", arch), ("head", head),
                                 ("num_classes", num_classes)) if v})
  if not spec.get("num_classes"):
    raise ConversionError(f"{path} has no classifier: pass num_classes (and a head)")
  load_head = bool(file_head) and all(spec.get(k) == v for k, v in file_head.items())
  if not load_head and "unbiased_downsample_norm" not in options:
    spec.pop("unbiased_downsample_norm", None)
  model = create_model(**spec)
  size = image_size or file_size
  init = lambda: model.init(jax.random.key(seed), jnp.zeros((1, size, size, 3)))
  target = jax.eval_shape(init)
  loaded = tables.import_variables(tensors, target, layout, load_head=load_head, source=path)
  if jax.tree.structure(loaded) != jax.tree.structure(target):  # fill what was left out
    have = flax.traverse_util.flatten_dict(loaded)
    fresh = flax.traverse_util.flatten_dict(jax.device_get(jax.jit(init)()))
    loaded = flax.traverse_util.unflatten_dict({k: have.get(k, v) for k, v in fresh.items()})
  return spec, loaded


def convert_to_checkpoint(path: str, out_dir: str, *, format: str | None = None,
                          arch: str | None = None, head: str | None = None,
                          keep_extra_class: bool = False, weights: str | None = None,
                          **options) -> Converted:
  """`convert()` and save the result as a checkpoint that `config.init_from`,
  `python main.py --mode=eval` and `gcp.checkpoint.load_variables` read, with the file's
  layout and weight set recorded in `out_dir/SOURCE_FILE` (for `export`). A 1000-class
  model is saved with ImageNet's class names."""
  converted = _convert(path, format=format, arch=arch, head=head,
                       keep_extra_class=keep_extra_class, weights=weights, **options)
  names = imagenet_class_names() if converted.spec["num_classes"] == 1000 else None
  checkpoint.save_variables(out_dir, converted.variables, converted.spec, names)
  write_atomic(os.path.join(out_dir, SOURCE_FILE), json.dumps(
      {"file": os.path.abspath(path), "format": converted.format,
       "layout": converted.layout, "weights": converted.weights}, indent=2))
  return converted


# The evaluation preprocessing of a model family (AugReg ViTs take inputs in [-1, 1]; the
# rest the releases' ImageNet pipeline, the library default).
_AUGREG_EVAL_PP = "resize_shorter(256)|center_crop(224)|normalize('inception')"
_FAMILY_EVAL_PP = {"vit_b16": _AUGREG_EVAL_PP, "vit_s16": _AUGREG_EVAL_PP}


def eval_preprocessing(spec: dict) -> str:
  """The evaluation preprocessing (`config.data.eval_pp`) of the family of the model of
  `spec`: what a converted checkpoint, which has no config, is evaluated with."""
  return _FAMILY_EVAL_PP.get(spec["arch"], base_config().data.eval_pp)


def source_layout(checkpoint_dir: str) -> str | None:
  """The layout a converted checkpoint came from (recorded by `convert_to_checkpoint`);
  None for other checkpoints."""
  try:
    with open(os.path.join(checkpoint_dir, SOURCE_FILE)) as f:
      return json.load(f).get("layout")
  except FileNotFoundError:
    return None


def export(checkpoint_dir: str, out_path: str, *, layout: str | None = None,
           step: int | None = None) -> tuple[Layout, int]:
  """Our checkpoint -> a file in a release's layout, which the release's own network loads
  strictly (`load_state_dict(strict=True)`; MindSpore's `load_param_into_net`).

  Args:
    checkpoint_dir: a workdir, checkpoint directory or `python -m gcp.convert` output.
    out_path: the file to write; its suffix must be the layout's format's (`.pth`, `.ckpt`).
    layout: a key of `gcp.convert.layouts.LAYOUTS`; default: the layout the checkpoint was
      converted from, if it was and that layout holds it, else the model's
      (`layouts.default_layout`).
    step: which checkpoint step (default: the latest).

  Returns:
    (the layout written, the number of tensors).

  Raises:
    ConversionError: the layout's network cannot hold the model (naming the layouts that
      can), or the output's suffix does not fit the layout's format.
  """
  spec = checkpoint.load_model_spec(checkpoint_dir, step)
  if layout:
    chosen = layouts.get(layout)
  else:
    recorded = LAYOUTS.get(source_layout(checkpoint_dir) or "")
    chosen = recorded if recorded and not recorded.fits(spec) else layouts.default_layout(spec)
  layouts.check(chosen, spec)
  if not out_path.endswith(FORMATS[chosen.format]):
    raise ConversionError(f"the {chosen.name} layout is written as a {chosen.format} file: "
                          f"name the output *{FORMATS[chosen.format][0]}, not {out_path!r}")
  tensors = chosen.export(checkpoint.load_variables(checkpoint_dir, step), spec)
  _WRITERS[chosen.format](out_path, tensors)
  return chosen, len(tensors)
