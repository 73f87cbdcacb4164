"""Release layouts: how each release's own network names and lays out our models' tensors.

A layout is one release's network class, e.g. fast-MPN-COV's `MPNCOVResNet` or
GCP_Optimization's `MobileNetV2_MPNCOV`. Export writes a model in a layout so that the
release's network loads it strictly (`load_state_dict(strict=True)`, MindSpore's
`load_param_into_net`); import recognises the layout of a file and reads it. Sizes (widths,
reduction dimension, classes) are the model's: a layout fixes names and array layouts.

The registry `LAYOUTS` maps a name to a `Layout`; `python -m gcp.convert --help` lists
them. The CNN layouts are defined here, on top of the torchvision-style ("canonical") names
of `gcp.convert.torch_layout`:
  torchvision              torchvision's ResNet, DenseNet, Inception3 (without AuxLogits),
                           MobileNetV2 and ShuffleNetV2 (GAP): the canonical names.
  mpncovresnet             fast-MPN-COV's MPNCOVResNet, GCP_Optimization's ResNet_MPNCOV and
                           DropCov's ResNet_ACD: the canonical names (`layer_reduce`,
                           `layer_reduce_bn`, `eca_layer.conv`, `fc`).
  fastmpn_resnet           fast-MPN-COV's Basemodel around an mpncovresnet (MPNCOV) or a
                           torchvision ResNet (GAvP) trained from scratch (main.py without
                           --pretrained): `features.{0,1,4..7}` (conv1, bn1, layer1..4),
                           `representation.conv_dr_block.{0,1}`, `classifier`.
  fastmpn_resnet_finetune  the same wrapper fine-tuning an mpncovresnet (--pretrained):
                           the reduction block is `features.{8,9}`.
  fastmpn_vgg              fast-MPN-COV's Basemodel around a VGG or AlexNet (and its
                           mpncovvgg16_bn) with MPNCOV, GAvP or BCNN (every fastmpn_ layout
                           holds those three): torchvision's names with the reduction block in
                           `representation.conv_dr_block.{0,1}`; `classifier` alone when it
                           fine-tunes (one Linear layer, our `hidden=0`; fine-tuned
                           mpncovvgg16_bn keeps its reduction block).
  fastmpn_densenet         the same around a DenseNet: torchvision's names and
                           `representation.conv_dr_block.{0,1}`.
  fastmpn_inception        the same around Inception-v3: its modules as `features.{0..17}`
                           (two max-pool slots between), `classifier` for `fc`.
  gcp_opt_mobilenet        GCP_Optimization's MobileNetV2_MPNCOV and ShuffleNetV2_MPNCOV:
                           torchvision's names with the reduction block in
                           `dimension_reduction.{0,1}` (one layout: the two classes name
                           their GCP parts alike; the backbone's names tell them apart).
  mindspore_resnet         the seed releases' MindSpore ResNets (Fast-MPN, DropCov), written
                           as a MindSpore `.ckpt` (spellings in `gcp.convert.mindspore`).
Other modules register theirs with `register` (the ViT layouts: `gcp.convert.vit`).

A PyTorch CNN layout is one table of module renames (`Renames`), which export applies one
way and import the other, so the two cannot drift. DataParallel's `module.` components are
dropped on import (`gcp.convert.pytorch.read`) and never written.
"""
import dataclasses
import textwrap
from typing import Any, Callable

import numpy as np

from gcp.convert import mindspore
from gcp.convert.torch_layout import ConversionError, to_torch
from gcp.models.densenet import SIZES as DENSENET_SIZES
from gcp.models.resnet import STAGE_SIZES
from gcp.models.vgg import CFGS


@dataclasses.dataclass(frozen=True)
class Layout:
  """One release network's names.

  Attributes:
    name: the registry key (`--layout`).
    description: the release and its network class, for `--help`.
    format: the file it is written as: 'pytorch' (a state_dict), 'mindspore' (`.ckpt`) or
      'vit_npz' (AugReg `.npz`); keys of `gcp.convert.FORMATS`.
    fits: `create_model` spec -> "" if the release's network computes the model, else why
      not ("its network is a VGG-16-BN with ...; this model is resnet18 + gap head ...").
    export: `(variables, spec)` -> `{release name: array in the release's layout}`.
    renames: for PyTorch CNN layouts, the module renames from the canonical names (import
      reads a detected file through them); None where names are read otherwise.
    signature: names a file of this layout holds (all of them; `module.` dropped), by
      which import tells it from the others; () for layouts not told apart by name.
  """
  name: str
  description: str
  format: str
  fits: Callable[[dict], str]
  export: Callable[[Any, dict], dict[str, np.ndarray]]
  renames: "Renames | None" = None
  signature: tuple[str, ...] = ()


LAYOUTS: dict[str, Layout] = {}


def register(layout: Layout) -> Layout:
  """Adds a layout to `LAYOUTS` (the order of registration is the order of preference
  when a model's default layout is chosen, see `default_layout`)."""
  if layout.name in LAYOUTS:
    raise ValueError(f"layout {layout.name!r} is registered already")
  LAYOUTS[layout.name] = layout
  return layout


def get(name: str) -> Layout:
  if name not in LAYOUTS:
    raise ConversionError(f"unknown layout {name!r}; valid layouts: {', '.join(LAYOUTS)}")
  return LAYOUTS[name]


def fitting(spec: dict) -> list[str]:
  """The layouts that can hold the model `create_model(**spec)` builds, preferred first."""
  return [name for name, layout in LAYOUTS.items() if not layout.fits(spec)]


def default_layout(spec: dict) -> Layout:
  """The release layout a model is exported in when none is given or recorded: the first
  registered layout that holds it (e.g. torchvision for a GAP ResNet, mpncovresnet for a
  ResNet with a second-order head, mindspore_resnet for `variant='mindspore'`)."""
  names = fitting(spec)
  if not names:
    raise ConversionError(
        f"no release's network computes {spec['arch']} + {spec['head']} head (reduction_dim "
        f"{spec.get('reduction_dim')}), so there is no layout to export it in (`python -m "
        "gcp.convert --help` lists them). gcp.convert.torch_layout.to_torch(variables) gives "
        "its tensors under torchvision-style names.")
  return LAYOUTS[names[0]]


def check(layout: Layout, spec: dict) -> None:
  """Raises `ConversionError` if `layout`'s network cannot hold the model."""
  problem = layout.fits(spec)
  if problem:
    raise ConversionError(f"the {layout.name} layout ({layout.description}) cannot hold "
                          f"this model: {problem}. Layouts that can: "
                          f"{', '.join(fitting(spec)) or 'none'}")


def detect(format: str, names) -> Layout | None:
  """The layout of a file's names (without `module.`) among those with a signature: the
  one whose whole signature is present, the longest if several are (a fine-tuning wrapper
  has the names of the from-scratch one and more). None: no signature matches, the names
  are canonical (torchvision, mpncovresnet) or read by their format's own code."""
  names = set(names)
  found = [l for l in LAYOUTS.values()
           if l.format == format and l.signature and set(l.signature) <= names]
  return max(found, key=lambda l: len(l.signature), default=None)


def describe(columns: int = 92) -> str:
  """The layouts as an indented table, `name  description [format]`, for help texts and
  errors."""
  width = max(map(len, LAYOUTS), default=0)
  indent = " " * (width + 4)
  return "\n".join(
      textwrap.fill(f"{l.description} [{l.format}]", columns, initial_indent=indent,
                    subsequent_indent=indent).replace(indent, f"  {name:<{width}}  ", 1)
      for name, l in LAYOUTS.items())


class Renames:
  """Module renames between canonical names and a release's: `(canonical, release)` pairs
  of module paths, matched at whole dotted components, applied one way on export and the
  other way on import."""

  def __init__(self, *pairs: tuple[str, str]):
    self.pairs = pairs

  @staticmethod
  def _apply(name: str, pairs) -> str:
    for old, new in pairs:
      if name == old or name.startswith(old + "."):
        return new + name[len(old):]
    return name

  def to_release(self, name: str) -> str:
    return self._apply(name, self.pairs)

  def to_canonical(self, name: str) -> str:
    return self._apply(name, [(release, canonical) for canonical, release in self.pairs])

  def canonical(self, tensors: dict[str, Any], source: str) -> dict[str, Any]:
    """`{release name: tensor}` -> `{canonical name: tensor}`; two tensors landing on one
    name (a file mixing layouts) raise `ConversionError`."""
    out = {}
    for name, value in tensors.items():
      new = self.to_canonical(name)
      if new in out:
        raise ConversionError(f"{source}: two tensors map to {new!r}")
      out[new] = value
    return out


# --------------------------------------------------------------------- the CNN layouts

RESNETS = tuple(STAGE_SIZES)
VGGS = ("alexnet", *(f"{name}{bn}" for name in CFGS for bn in ("", "_bn")))
DENSENETS = tuple(DENSENET_SIZES)
# The backbones fast-MPN-COV's Basemodel wraps with a representation (src/network/base.py).
FASTMPN_ARCHS = RESNETS + VGGS + DENSENETS + ("inception_v3",)
# fast-MPN-COV's Basemodel rebuilds Inception-v3's features as a Sequential of its modules
# (None: the two parameter-free max-pools it inserts).
INCEPTION_FEATURES = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", None,
                      "Conv2d_3b_1x1", "Conv2d_4a_3x3", None, "Mixed_5b", "Mixed_5c",
                      "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
                      "Mixed_7a", "Mixed_7b", "Mixed_7c")
RELEASE_ITERS = 5  # Newton-Schulz iterations of every released iSQRT network


def _requires(spec: dict, *, archs, heads, reduction: bool | None = None,
              variant: str = "pytorch", what: str) -> str:
  """"" if `spec` is one of `archs` with one of `heads`, a reduction block when `reduction`
  (None: with or without), the `variant`, the standard stem and the releases' 5 iSQRT
  iterations; else what the layout's network is, against this model."""
  iters = spec.get("num_iters", RELEASE_ITERS) if spec["head"] == "isqrt" else RELEASE_ITERS
  model_variant = spec.get("variant", "pytorch")
  if (spec["arch"] in archs and spec["head"] in heads and iters == RELEASE_ITERS
      and (reduction is None or bool(spec.get("reduction_dim")) == reduction)
      and model_variant == variant and not spec.get("small_input")):
    return ""
  details = [f"reduction_dim {spec.get('reduction_dim')}"]
  details += [f"{iters} iSQRT iterations"] if iters != RELEASE_ITERS else []
  details += [f"variant {model_variant}"] if model_variant != "pytorch" else []
  details += ["small_input stem"] if spec.get("small_input") else []
  return (f"its network is {what}; this model is {spec['arch']} + {spec['head']} head "
          f"({', '.join(details)})")


def _basemodel(archs, what: str) -> Callable[[dict], str]:
  """`fits` of fast-MPN-COV's Basemodel around `archs` with its representations: MPNCOV
  (the isqrt head, 5 iterations, with or without the reduction block), GAvP (gap) and BCNN
  (the bcnn head, which computes the release's BCNN: no reduction block, no parameters)."""
  def fits(spec: dict) -> str:
    if spec["head"] == "bcnn":
      return _requires(spec, archs=archs, heads=("bcnn",), reduction=False,
                       what=f"{what} with BCNN (no reduction block)")
    return _requires(spec, archs=archs, heads=("isqrt", "gap"),
                     what=f"{what} with GAP or iSQRT-COV (5 iterations)")
  return fits


def _pytorch(name: str, description: str, fits, *pairs: tuple[str, str],
             signature: tuple[str, ...] = ()) -> Layout:
  renames = Renames(*pairs)
  export = lambda variables, spec: {renames.to_release(n): a
                                    for n, a in to_torch(variables).items()}
  return register(Layout(name, description, "pytorch", fits, export, renames, signature))


_REDUCED_ISQRT = "with iSQRT-COV (5 iterations) after a reduction block"
# fast-MPN-COV's Basemodel keeps the backbone's children as features.<index>; the children
# of torchvision's ResNet and of mpncovresnet are conv1, bn1, relu, maxpool, layer1..4,
# (layer_reduce, layer_reduce_bn, layer_reduce_relu,) fc.
_BASEMODEL_RESNET = (("conv1", "features.0"), ("bn1", "features.1"),
                     *((f"layer{i}", f"features.{i + 3}") for i in range(1, 5)),
                     ("fc", "classifier"))
_CONV_DR_BLOCK = (("layer_reduce", "representation.conv_dr_block.0"),
                  ("layer_reduce_bn", "representation.conv_dr_block.1"))

# In order of preference for a model's default layout.
_pytorch("torchvision", "torchvision's ResNet / DenseNet / Inception3 (aux_logits=False) / "
         "MobileNetV2 / ShuffleNetV2 with GAP (also GCP_Optimization's MobileNetV2 and "
         "ShuffleNetV2)",
         lambda s: _requires(s, archs=RESNETS + DENSENETS + ("inception_v3", "mobilenet_v2",
                                                             "shufflenet_v2"),
                             heads=("gap",), what="a ResNet, DenseNet, Inception-v3, "
                             "MobileNetV2 or ShuffleNetV2 with GAP"))
_pytorch("mpncovresnet", "fast-MPN-COV's MPNCOVResNet, GCP_Optimization's ResNet_MPNCOV; "
         "with the dropcov head DropCov's ResNet_ACD (eca_layer)",
         lambda s: _requires(s, archs=RESNETS, heads=("isqrt", "dropcov"), reduction=True,
                             what=f"a ResNet {_REDUCED_ISQRT} (or DropCov's)"))
_pytorch("fastmpn_vgg", "fast-MPN-COV's Basemodel around a VGG (vgg11 ... vgg19_bn; "
         "mpncovvgg16_bn) or AlexNet with MPNCOV, GAvP or BCNN",
         _basemodel(VGGS, "a VGG or AlexNet"),
         *_CONV_DR_BLOCK,
         # conv biases tell a VGG's or AlexNet's features.0 from a Basemodel ResNet's
         signature=("features.0.bias", "representation.conv_dr_block.0.weight"))
_pytorch("fastmpn_densenet", "fast-MPN-COV's Basemodel around a DenseNet (densenet121 ... "
         "densenet201) with MPNCOV, GAvP or BCNN",
         _basemodel(DENSENETS, "a DenseNet"),
         *_CONV_DR_BLOCK,
         signature=("features.conv0.weight", "representation.conv_dr_block.0.weight"))
_pytorch("fastmpn_inception", "fast-MPN-COV's Basemodel around Inception-v3 (features.0 ... "
         "features.17, no AuxLogits) with MPNCOV, GAvP or BCNN",
         _basemodel(("inception_v3",), "an Inception-v3"),
         *((module, f"features.{i}") for i, module in enumerate(INCEPTION_FEATURES) if module),
         ("fc", "classifier"), *_CONV_DR_BLOCK,
         signature=("features.0.conv.weight",))
_pytorch("gcp_opt_mobilenet", "GCP_Optimization's MobileNetV2_MPNCOV and "
         "ShuffleNetV2_MPNCOV (src/models/ShuffleNetV2_MPNCOV.py)",
         lambda s: _requires(s, archs=("mobilenet_v2", "shufflenet_v2"), heads=("isqrt",),
                             reduction=True,
                             what=f"a MobileNetV2 or ShuffleNetV2 {_REDUCED_ISQRT}"),
         ("layer_reduce", "dimension_reduction.0"),
         ("layer_reduce_bn", "dimension_reduction.1"),
         signature=("dimension_reduction.0.weight",))
register(Layout(
    "mindspore_resnet", "the seed releases' MindSpore ResNets, Fast-MPN and DropCov "
    "(src/resnet.py)", "mindspore",
    lambda s: _requires(s, archs=RESNETS, heads=("isqrt", "dropcov"), reduction=True,
                        variant="mindspore",
                        what=f"a variant='mindspore' ResNet {_REDUCED_ISQRT} (or DropCov's)"),
    lambda variables, spec: mindspore.release_names(to_torch(variables))))
_pytorch("fastmpn_resnet", "fast-MPN-COV's Basemodel around an mpncovresnet (MPNCOV) or a "
         "torchvision ResNet (GAvP, BCNN) trained from scratch (main.py without --pretrained)",
         _basemodel(RESNETS, "a ResNet"),
         *_BASEMODEL_RESNET, *_CONV_DR_BLOCK,
         signature=("features.4.0.conv1.weight",))
_pytorch("fastmpn_resnet_finetune", "fast-MPN-COV's Basemodel fine-tuning an mpncovresnet "
         "(main.py --pretrained: the reduction block in features.8 / features.9)",
         lambda s: _requires(s, archs=RESNETS, heads=("isqrt",), reduction=True,
                             what=f"a ResNet {_REDUCED_ISQRT}"),
         *_BASEMODEL_RESNET, ("layer_reduce", "features.8"), ("layer_reduce_bn", "features.9"),
         signature=("features.4.0.conv1.weight", "features.8.weight"))
