"""Our CNN variable trees in PyTorch names and layouts: the canonical name map every CNN
format uses.

The canonical names are torchvision's for the backbones (`layer2.0.downsample.0.weight`,
`features.7.weight`, `features.3.conv.1.0.weight`, `stage3.0.branch1.2.weight`), plus
mpncovresnet's GCP head names: `layer_reduce` / `layer_reduce_bn` for the reduction block
(fast-MPN-COV's mpncovresnet, GCP_Optimization's ResNets, the MindSpore releases),
`eca_layer.conv.weight` for DropCov's ECA conv, and the classifier (`fc` for ResNets and
ShuffleNetV2, `classifier.*` for VGG and MobileNetV2).
Each release's layout renames these (`gcp.convert.layouts`; e.g. fast-MPN-COV's VGG keeps
its reduction block in `representation.conv_dr_block`).
Array layouts: conv OIHW (ours HWIO), dense `[out, in]` (ours `[in, out]`), BatchNorm
weight / bias / running_mean / running_var (ours scale / bias / mean / var).
"""
import re
from typing import Any, NamedTuple

import flax.traverse_util
import numpy as np

from gcp.checkpoint import describe_mismatch
from gcp.models.densenet import SIZES as DENSENET_SIZES
from gcp.models.resnet import STAGE_SIZES, Bottleneck
from gcp.models.shufflenet import STAGE_CHANNELS, STAGE_REPEATS
from gcp.models.vgg import CFGS


class ConversionError(ValueError):
  """A checkpoint does not map one-to-one onto the chosen architecture, or is unreadable."""


class Entry(NamedTuple):
  """One tensor: its PyTorch name and where it lives in our variables."""
  torch_name: str
  path: tuple[str, ...]  # (collection, module..., leaf)


_LEAF = {("params", "kernel"): "weight", ("params", "bias"): "bias",
         ("params", "scale"): "weight", ("batch_stats", "mean"): "running_mean",
         ("batch_stats", "var"): "running_var"}
_HEAD_MODULES = {"head/reduce/conv": "layer_reduce", "head/reduce/bn": "layer_reduce_bn"}
ECA = "eca_layer.conv.weight"


def _resnet_module(module: str, _modules) -> str:
  module = re.sub(r"^(layer\d+)_(\d+)/", r"\1.\2.", module)
  return module.replace("downsample_conv", "downsample.0").replace("downsample_bn",
                                                                   "downsample.1")


def _vgg_module(module: str, modules) -> str:
  # torchvision's features Sequential holds conv, (BN,) ReLU for every conv and one slot for
  # every max-pool; ours keeps the config index i, so conv i sits at i + 2 * (convs before)
  # with BatchNorm, i + (convs before) without (AlexNet too).
  convs = sorted({int(m.split("_")[1]) for m in modules if re.fullmatch(r"features_\d+", m)})
  extra_slots = 2 if any(re.fullmatch(r"features_\d+_bn", m) for m in modules) else 1
  match = re.fullmatch(r"features_(\d+)(_bn)?", module)
  if match:
    i = int(match.group(1))
    return f"features.{i + extra_slots * convs.index(i) + (1 if match.group(2) else 0)}"
  return re.sub(r"^classifier_(\d+)$", r"classifier.\1", module)


def _mobilenet_module(module: str, modules) -> str:
  match = re.fullmatch(r"features_(\d+)_(conv|bn)", module)  # stem and last 1x1 conv
  if match:
    return f"features.{match.group(1)}.{0 if match.group(2) == 'conv' else 1}"
  match = re.fullmatch(r"features_(\d+)/(expand|depthwise|project)_(conv|bn)", module)
  if match:
    block, part, kind = match.groups()
    expands = f"features_{block}/expand_conv" in modules
    if part == "project":
      return f"features.{block}.conv.{int(expands) + 1 + (kind == 'bn')}"
    slot = 0 if part == "expand" else int(expands)
    return f"features.{block}.conv.{slot}.{0 if kind == 'conv' else 1}"
  return "classifier.1" if module == "classifier" else module


# ShuffleNetV2 unit parts -> their index in torchvision's branch Sequential (conv; BN + 1):
# branch1 = dw, BN, pw, BN, ReLU; branch2 = pw, BN, ReLU, dw, BN, pw, BN, ReLU.
_SHUFFLE_SLOTS = {("branch1", "dw"): 0, ("branch1", "pw"): 2, ("branch2", "pw1"): 0,
                  ("branch2", "dw"): 3, ("branch2", "pw2"): 5}


def _shufflenet_module(module: str, _modules) -> str:
  match = re.fullmatch(r"(conv[15])_(conv|bn)", module)  # stem and last 1x1 conv
  if match:
    return f"{match.group(1)}.{0 if match.group(2) == 'conv' else 1}"
  match = re.fullmatch(r"(stage\d)_(\d+)/(branch[12])_(dw|pw|pw1|pw2)_(conv|bn)", module)
  if match:
    stage, block, branch, part, kind = match.groups()
    return f"{stage}.{block}.{branch}.{_SHUFFLE_SLOTS[branch, part] + (kind == 'bn')}"
  return module  # fc


def _densenet_module(module: str, _modules) -> str:
  # torchvision keeps the whole backbone (conv0 ... norm5) in its `features` Sequential.
  return module if module == "classifier" else "features." + module.replace("/", ".")


def _path_module(module: str, _modules) -> str:
  return module.replace("/", ".")


def _backbone_module_namer(modules):
  if "layer1_0/conv1" in modules:
    return _resnet_module
  if "conv0" in modules:
    return _densenet_module
  if "Conv2d_1a_3x3/conv" in modules:
    return _path_module  # Inception-v3: torchvision's module paths
  if "conv1_conv" in modules:
    return _shufflenet_module
  if "features_0_conv" in modules:
    return _mobilenet_module
  if "features_0" in modules:
    return _vgg_module
  raise ConversionError("no PyTorch name map for this model: the converters know ResNets, "
                        "VGGs, AlexNet, DenseNets, Inception-v3, MobileNetV2 and "
                        "ShuffleNetV2")


def entries(variables) -> list[Entry]:
  """Every tensor of `variables` (`{"params": ..., "batch_stats": ...}`) with its PyTorch
  name, in our tree order."""
  flat = flax.traverse_util.flatten_dict(dict(variables))
  unsupported = sorted({p[0] for p in flat} - {"params", "batch_stats"})
  if unsupported:
    raise ConversionError(f"collections {unsupported} have no PyTorch counterpart (the "
                          "cbp head's sketch constants); convert a model without them")
  modules = {"/".join(p[1:-1]) for p in flat}
  namer = _backbone_module_namer(modules)
  out = []
  for path in flat:
    collection, *module, leaf = path
    module = "/".join(module)
    if path == ("params", "head", "eca"):
      out.append(Entry(ECA, path))
      continue
    name = _HEAD_MODULES.get(module) or namer(module, modules)
    out.append(Entry(f"{name}.{_LEAF[collection, leaf]}", path))
  return out


def _to_torch_layout(x: np.ndarray, torch_name: str) -> np.ndarray:
  if torch_name == ECA:
    return x.reshape(1, 1, -1)
  if x.ndim == 4:
    return x.transpose(3, 2, 0, 1)
  return x.T if x.ndim == 2 else x


def _from_torch_layout(x: np.ndarray, torch_name: str) -> np.ndarray:
  if torch_name == ECA:
    return x.reshape(-1)
  if x.ndim == 4:
    return x.transpose(2, 3, 1, 0)
  return x.T if x.ndim == 2 else x


def _torch_shape(shape: tuple[int, ...], torch_name: str) -> tuple[int, ...]:
  return _to_torch_layout(np.empty(shape, np.bool_), torch_name).shape


def to_torch(variables) -> dict[str, np.ndarray]:
  """Our variables -> `{torch name: array in PyTorch layout}` (numpy, same dtype)."""
  flat = flax.traverse_util.flatten_dict(dict(variables))
  return {e.torch_name: np.ascontiguousarray(_to_torch_layout(np.asarray(flat[e.path]),
                                                              e.torch_name))
          for e in entries(variables)}


def from_torch(tensors: dict[str, np.ndarray], target, *, source: str = "checkpoint") -> dict:
  """`{torch name: array}` -> variables shaped like `target` (arrays or ShapeDtypeStructs).

  Every name must map one-to-one: missing, unexpected or mis-shaped tensors raise
  `ConversionError` with a report (never a partial load). Arrays keep their values and are
  cast to the target's dtype.
  """
  flat_target = flax.traverse_util.flatten_dict(dict(target))
  expected = {e.torch_name: e for e in entries(target)}
  report = describe_mismatch(
      {n: _torch_shape(flat_target[e.path].shape, n) for n, e in expected.items()},
      {n: t.shape for n, t in tensors.items()})
  if report:
    raise ConversionError(f"{source} does not match the architecture:\n{report}")
  flat = {e.path: _from_torch_layout(np.asarray(tensors[n]), n).astype(
      flat_target[e.path].dtype) for n, e in expected.items()}
  return flax.traverse_util.unflatten_dict(flat)


def _stage_sizes(tensors) -> tuple[int, ...]:
  sizes = []
  for stage in range(1, 5):
    blocks = {int(m.group(1)) for n in tensors
              for m in [re.match(rf"layer{stage}\.(\d+)\.", n)] if m}
    sizes.append(max(blocks) + 1 if blocks else 0)
  return tuple(sizes)


def _shufflenet_width(tensors) -> float:
  """The `width_mult` of a ShuffleNetV2 from its stage2 channels (twice branch1's 1x1
  output), checking its units per stage."""
  units = lambda stage: len({m.group(1) for n in tensors
                             for m in [re.match(rf"stage{stage}\.(\d+)\.", n)] if m})
  repeats = tuple(units(stage) for stage in (2, 3, 4))
  channels = 2 * tensors["stage2.0.branch1.2.weight"].shape[0]
  widths = {c[0]: w for w, c in STAGE_CHANNELS.items()}
  if repeats != STAGE_REPEATS or channels not in widths:
    raise ConversionError(f"a ShuffleNetV2 with {repeats} units per stage and {channels} "
                          f"stage2 channels is not one of the shufflenet_v2 widths (units "
                          f"{STAGE_REPEATS}, stage2 channels {', '.join(map(str, widths))})")
  return widths[channels]


def _feature_convs(tensors) -> list:
  """The conv kernels of a VGG's or AlexNet's `features` Sequential, in order."""
  convs = {int(m.group(1)): t for n, t in tensors.items()
           for m in [re.fullmatch(r"features\.(\d+)\.weight", n)] if m and t.ndim == 4}
  return [convs[i] for i in sorted(convs)]


def _vgg_spec(tensors) -> dict[str, Any]:
  """arch and width of a VGG or AlexNet from its convs."""
  convs = _feature_convs(tensors)
  if tensors["features.0.weight"].shape[-1] == 11:
    return {"arch": "alexnet"}
  depths = {sum(isinstance(v, int) for v in cfg): name for name, cfg in CFGS.items()}
  if len(convs) not in depths:
    raise ConversionError(f"a VGG with {len(convs)} convs is not one of "
                          f"{', '.join(f'{n} ({d})' for d, n in depths.items())}")
  bn = "_bn" if "features.1.running_mean" in tensors else ""
  return {"arch": depths[len(convs)] + bn, "width": int(tensors["features.0.weight"].shape[0])}


def _densenet_spec(tensors) -> dict[str, Any]:
  """arch (and the sizes where they are not the arch's) of a DenseNet."""
  layers = lambda block: len({m.group(1) for n in tensors for m in [re.match(
      rf"features\.denseblock{block}\.denselayer(\d+)\.", n)] if m})
  blocks = tuple(layers(b) for b in range(1, 5))
  growth = int(tensors["features.denseblock1.denselayer1.conv2.weight"].shape[0])
  sizes = dict(growth_rate=growth, block_config=blocks,
               num_init_features=int(tensors["features.conv0.weight"].shape[0]),
               bn_size=int(tensors["features.denseblock1.denselayer1.conv1.weight"].shape[0])
               // growth)
  arch = next((name for name, (g, b, i) in DENSENET_SIZES.items() if b == blocks),
              "densenet121")
  defaults = dict(zip(("growth_rate", "block_config", "num_init_features"),
                      DENSENET_SIZES[arch]), bn_size=4)
  return {"arch": arch, **{k: v for k, v in sizes.items() if v != defaults[k]}}


def infer_model_spec(tensors: dict[str, np.ndarray]) -> dict[str, Any]:
  """`create_model` arguments read off canonically named tensors: arch, head, num_classes,
  reduction_dim and the size options (VGG, AlexNet: also `hidden`; DenseNet: the sizes
  that are not its arch's). The head is a guess where weights cannot tell: 'dropcov' with
  an ECA conv, 'isqrt' for any other second-order classifier (cov, eig and isqrt heads
  have the same parameters), 'bcnn' for C x C features, else 'gap'."""
  spec: dict[str, Any] = {}
  if "layer1.0.conv1.weight" in tensors:
    block = "bottleneck" if "layer1.0.conv3.weight" in tensors else "basic"
    stages = _stage_sizes(tensors)
    arch = [a for a, (s, b) in STAGE_SIZES.items()
            if s == stages and (b is Bottleneck) == (block == "bottleneck")]
    if not arch:
      raise ConversionError(f"a ResNet with {block} blocks {stages} per stage is not one of "
                            f"{', '.join(STAGE_SIZES)}")
    stem = tensors["conv1.weight"].shape
    spec.update(arch=arch[0], width=int(stem[0]), small_input=stem[-1] == 3)
    classifier = "fc.weight"
    channels = stem[0] * 8 * (4 if block == "bottleneck" else 1)
  elif "stage2.0.branch1.0.weight" in tensors:
    spec.update(arch="shufflenet_v2", width_mult=_shufflenet_width(tensors))
    classifier = "fc.weight"
    channels = STAGE_CHANNELS[spec["width_mult"]][-1]
  elif "features.0.0.weight" in tensors:
    spec.update(arch="mobilenet_v2", width_mult=tensors["features.0.0.weight"].shape[0] / 32)
    classifier = "classifier.1.weight"
    last = max(int(m.group(1)) for n in tensors for m in [re.match(r"features\.(\d+)\.0\.", n)]
               if m)
    channels = tensors[f"features.{last}.0.weight"].shape[0]
  elif "features.0.weight" in tensors:  # VGGs and AlexNet
    spec.update(_vgg_spec(tensors))
    # The first Linear: VGG's classifier.0, AlexNet's classifier.1, or the only one.
    first = next((n for n in ("classifier.0.weight", "classifier.1.weight") if n in tensors),
                 "classifier.weight")
    classifier = "classifier.weight" if first == "classifier.weight" else "classifier.6.weight"
    spec["hidden"] = 0 if first == classifier or first not in tensors else int(
        tensors[first].shape[0])
    channels = _feature_convs(tensors)[-1].shape[0]
  elif "features.conv0.weight" in tensors:
    spec.update(_densenet_spec(tensors))
    classifier = "classifier.weight"
    channels = tensors["features.norm5.weight"].shape[0]
  elif "Conv2d_1a_3x3.conv.weight" in tensors:
    spec["arch"] = "inception_v3"
    classifier = "fc.weight"
    channels = 2048  # Mixed_7c's four branches: 320 + 768 + 768 + 192
  else:
    raise ConversionError("cannot tell the architecture: no ResNet (layer1.0.conv1.weight), "
                          "VGG or AlexNet (features.0.weight), DenseNet "
                          "(features.conv0.weight), Inception-v3 (Conv2d_1a_3x3.conv.weight), "
                          "MobileNetV2 (features.0.0.weight) or ShuffleNetV2 "
                          "(stage2.0.branch1.0.weight) tensors; pass the architecture "
                          "explicitly")
  if classifier not in tensors:
    raise ConversionError(f"a {spec['arch']} without its classifier {classifier!r}; the "
                          f"tensors end in {sorted(tensors)[-4:]}")
  reduce = tensors.get("layer_reduce.weight")
  spec["reduction_dim"] = int(reduce.shape[0]) if reduce is not None else None
  dim = spec["reduction_dim"] or channels
  features_in = tensors[first if spec.get("hidden") else classifier].shape[1]
  if ECA in tensors:
    spec["head"] = "dropcov"
  elif reduce is not None or features_in == dim * (dim + 1) // 2:
    spec["head"] = "isqrt"
  elif features_in == dim * dim:  # fast-MPN-COV's BCNN: the full C x C matrix
    spec["head"] = "bcnn"
  else:
    spec["head"] = "gap"
  spec["num_classes"] = int(tensors[classifier].shape[0])
  return spec
