"""PyTorch `.pth` / `.pth.tar` state dicts of the releases <-> torchvision-style names.

Reads what fast-MPN-COV, GCP_Optimization, DropCov and torchvision publish or train:
  - a bare state_dict, or a training checkpoint holding one under `state_dict` / `model`;
  - DataParallel's `module.` components (at the front, or inside `features.module.`);
  - fast-MPN-COV's fine-tuning wrapper: `features.<i>` (the backbone's children in order),
    `representation.conv_dr_block.{0,1}` (reduction conv and BN), `classifier` (the fc);
  - GCP_Optimization's MobileNetV2: `dimension_reduction.{0,1}` (reduction conv and BN).
Writes state dicts in the mpncovresnet / torchvision naming that `load_state_dict(strict=
True)` accepts (BatchNorm `num_batches_tracked` included). torch is imported only here,
and only when a PyTorch file is read or written (`pip install torch==2.13.0`).
"""
import pickle
import re
import zipfile

import numpy as np

from gcp.convert.torch_layout import ConversionError

# The children of torchvision's ResNet / mpncovresnet, in order: fast-MPN-COV's wrapper
# keeps them as features.<index>.
_RESNET_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4",
                    "layer_reduce", "layer_reduce_bn")
_SKIP = ("num_batches_tracked",)


def _torch():
  try:
    import torch
  except ImportError as e:
    raise ConversionError("reading or writing PyTorch checkpoints needs torch: "
                          "pip install torch==2.13.0 (a CPU build is enough)") from e
  return torch


def _resnet_child(match: re.Match) -> str:
  index = int(match.group(1))
  return _RESNET_CHILDREN[index] + "." if index < len(_RESNET_CHILDREN) else match.group(0)


def canonical_names(keys) -> dict[str, str]:
  """A release's state-dict keys -> `{key: torchvision / mpncovresnet name}`."""
  bare = {k: ".".join(p for p in k.split(".") if p != "module") for k in keys}
  # fast-MPN-COV's wrapper around a ResNet: features.4.0.conv1 is layer1's first block
  # (VGG and MobileNetV2 keep torchvision's own features.<i> names).
  wrapped_resnet = any(re.match(r"features\.\d+\.\d+\.conv1\.", n) for n in bare.values())
  out = {}
  for key, name in bare.items():
    if wrapped_resnet:
      name = re.sub(r"^features\.(\d+)\.", _resnet_child, name)
      name = re.sub(r"^classifier\.(weight|bias)$", r"fc.\1", name)
    name = re.sub(r"^(representation\.conv_dr_block|dimension_reduction)\.0\.",
                  "layer_reduce.", name)
    out[key] = re.sub(r"^(representation\.conv_dr_block|dimension_reduction)\.1\.",
                      "layer_reduce_bn.", name)
  return out


def read(path: str) -> dict[str, np.ndarray]:
  """A `.pth` / `.pth.tar` file -> `{torchvision-style name: float32 numpy array}`."""
  torch = _torch()
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except FileNotFoundError:
    raise
  except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError,
          OSError) as e:
    raise ConversionError(f"{path} is not a readable PyTorch checkpoint (truncated or "
                          f"corrupt file?): {e}") from e
  if isinstance(obj, dict):
    for key in ("state_dict", "model", "net"):
      if isinstance(obj.get(key), dict):
        obj = obj[key]
        break
  if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
    raise ConversionError(f"{path} holds no state_dict (a dict of tensors, possibly under "
                          "'state_dict' or 'model')")
  out = {}
  for key, name in canonical_names(obj).items():
    if key.endswith(_SKIP):
      continue
    if name in out:
      raise ConversionError(f"{path}: two tensors map to {name!r}")
    out[name] = obj[key].detach().to(torch.float32).numpy()
  return out


def write(path: str, tensors: dict[str, np.ndarray]) -> None:
  """Saves `{torch name: array}` as a PyTorch state_dict, adding BatchNorm's
  `num_batches_tracked` so that `load_state_dict(strict=True)` accepts it."""
  torch = _torch()
  state = {}
  for name, value in tensors.items():
    state[name] = torch.from_numpy(np.array(value))  # a writable copy
    if name.endswith(".running_var"):
      state[name[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
  torch.save(state, path)
