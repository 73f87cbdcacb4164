"""PyTorch `.pth` / `.pth.tar` files, read safely and written for strict loading.

Reads what the releases publish or their training scripts save:
  - a bare state_dict, or a training checkpoint holding one under `state_dict` (fast-MPN-COV,
    GCP_Optimization and DropCov's main.py: with `epoch`, `arch`, `best_prec1` /
    `best_acc1`, `optimizer`), `model` or `net`;
  - timm's `CheckpointSaver` files (Moment Probing, DropCov's transformers): `state_dict`,
    `state_dict_ema` (the model EMA), `optimizer`, `amp_scaler`, `metric`, `version` and the
    command line as `args`, an `argparse.Namespace`. With both weight sets the EMA is read,
    which these scripts evaluate and select by (`weights` chooses);
  - DataParallel's `module.` components, at the front or inside (`features.module.`).
The file is loaded with `torch.load(weights_only=True)`, which unpickles tensors, Python
containers and numbers only, plus the harmless `SAFE_GLOBALS`; a file that pickles anything
else is refused with the types it holds (it is not corrupt) and how to extract its weights.
Names are returned as the file has them (`gcp.convert.layouts` maps a release's layout onto
torchvision-style names). torch is imported only here, and only when a PyTorch file is read
or written (`pip install torch==2.13.0`).
"""
import argparse
import logging
import pickle
import re
import zipfile

import numpy as np

from gcp.convert.torch_layout import ConversionError

# Types besides tensors, containers and numbers that the releases' training checkpoints
# pickle, and that are safe to unpickle: timm's CheckpointSaver stores the parsed command
# line (argparse.Namespace). Everything else the releases save (epoch, arch, metrics,
# optimizer and AMP-scaler state dicts) torch's weights_only loader accepts as it is.
SAFE_GLOBALS = (argparse.Namespace,)
# Where training checkpoints keep the weights, and timm's key for their EMA.
_STATE_KEYS = ("state_dict", "model", "net")
_EMA_KEY = "state_dict_ema"
WEIGHTS = ("state_dict", "ema")
_SKIP = ("num_batches_tracked",)
_log = logging.getLogger(__name__)


def _torch():
  try:
    import torch
  except ImportError as e:
    raise ConversionError("reading or writing PyTorch checkpoints needs torch: "
                          "pip install torch==2.13.0 (a CPU build is enough)") from e
  return torch


def _unsafe_types(torch, path: str, error: Exception) -> list[str]:
  """The pickled types `weights_only` refused in `path` (all of them in a zip file; the
  first one, from the error, in the legacy pre-1.6 format)."""
  try:
    return torch.serialization.get_unsafe_globals_in_checkpoint(path)
  except (ValueError, RuntimeError, OSError):
    return re.findall(r"GLOBAL ([\w.]+) was not an allowed global", str(error))


def _load(path: str):
  torch = _torch()
  with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
    try:
      return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
      raise
    except pickle.UnpicklingError as e:
      unsafe = _unsafe_types(torch, path, e)
      if not unsafe:
        raise ConversionError(f"{path} is not a readable PyTorch checkpoint (truncated or "
                              f"corrupt file?): {e}") from e
      allowed = ", ".join(f"{t.__module__}.{t.__qualname__}" for t in SAFE_GLOBALS)
      raise ConversionError(
          f"{path} is a complete PyTorch file, not a corrupt one, but besides tensors it "
          f"pickles objects of the type(s) {', '.join(unsafe)}. Unpickling those can run code "
          "from the file, so the converter loads only tensors, containers, numbers and "
          f"{allowed}. If you trust the file, save its weights alone and convert that:\n"
          f"  python -c \"import torch; c = torch.load('{path}', weights_only=False); "
          "torch.save(c['state_dict'], 'weights.pth')\"\n"
          "(use the key that holds the weights if it is not 'state_dict').") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
      raise ConversionError(f"{path} is not a readable PyTorch checkpoint (truncated or "
                            f"corrupt file?): {e}") from e


def _choose_weights(obj, path: str, weights: str | None):
  """(the state dict to convert, which set: 'state_dict', 'ema' or None for a bare one)."""
  if weights not in (None, *WEIGHTS):
    raise ConversionError(f"unknown weights {weights!r}; valid: {', '.join(WEIGHTS)}")
  if not isinstance(obj, dict):
    return obj, None
  ema = obj.get(_EMA_KEY) if isinstance(obj.get(_EMA_KEY), dict) else None
  plain = next((obj[k] for k in _STATE_KEYS if isinstance(obj.get(k), dict)), None)
  if weights == "ema" and ema is None:
    raise ConversionError(f"{path} holds no EMA weights (no {_EMA_KEY!r} entry; it has "
                          f"{', '.join(map(repr, list(obj)[:8]))})")
  if weights == "state_dict":
    return (plain, "state_dict") if plain is not None else (obj, None)
  if ema is not None:
    if weights is None and plain is not None:
      _log.warning("%s holds the trained weights (state_dict) and their moving average "
                   "(%s): converting the EMA weights, which the releases' timm training "
                   "scripts evaluate and select by; pass weights='state_dict' "
                   "(--weights state_dict) for the others", path, _EMA_KEY)
    return ema, "ema"
  return (plain, "state_dict") if plain is not None else (obj, None)


def read(path: str, weights: str | None = None) -> tuple[dict[str, np.ndarray], str | None]:
  """A `.pth` / `.pth.tar` file -> (`{name: float32 numpy array}` with DataParallel's
  `module.` components and BatchNorm's `num_batches_tracked` dropped, the weight set read:
  'state_dict', 'ema' or None for a bare state_dict).

  Args:
    weights: 'state_dict' or 'ema' to choose from a file that keeps both (timm's
      `state_dict` and `state_dict_ema`); default: the EMA, with a note on the console.
  """
  torch = _torch()
  obj, chosen = _choose_weights(_load(path), path, weights)
  if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
    raise ConversionError(f"{path} holds no state_dict (a dict of tensors, possibly under "
                          f"{', '.join(map(repr, _STATE_KEYS + (_EMA_KEY,)))})")
  out = {}
  for key, value in obj.items():
    if key.endswith(_SKIP):
      continue
    name = ".".join(p for p in key.split(".") if p != "module")
    if name in out:
      raise ConversionError(f"{path}: two tensors map to {name!r}")
    out[name] = value.detach().to(torch.float32).numpy()
  return out, chosen


def write(path: str, tensors: dict[str, np.ndarray]) -> None:
  """Saves `{name: array}` as a PyTorch state_dict, adding BatchNorm's
  `num_batches_tracked` so that `load_state_dict(strict=True)` accepts it."""
  torch = _torch()
  state = {}
  for name, value in tensors.items():
    state[name] = torch.from_numpy(np.array(value))  # a writable copy
    if name.endswith(".running_var"):
      state[name[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
  torch.save(state, path)
