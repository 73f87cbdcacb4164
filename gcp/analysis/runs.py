"""What the analyses work on: a trained run (model, variables, data settings) and a fixed
set of evaluation batches.

Single-host: the analyses run on this process's devices.
"""
import dataclasses
import itertools
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from gcp import checkpoint, data
from gcp.models import create_model
from gcp.workdir import CONFIG_FILE, saved_config


@dataclasses.dataclass
class Run:
  """A trained model and the data it was evaluated on.

  Attributes:
    workdir: the run's directory (or a checkpoint directory).
    spec: the `create_model` arguments saved with the checkpoint.
    model: `create_model(**spec)`.
    variables: `{"params": ..., "batch_stats": ..., ...}` for `model.apply`, on the
      default device.
    data: the run's `config.data` (name, data_dir, eval_split, eval_pp, image_key,
      label_key, ...), from the run's config (`workdir/config.json` and its recorded
      changes).
  """
  workdir: str
  spec: dict
  model: nn.Module
  variables: dict
  data: ml_collections.ConfigDict

  @property
  def label(self) -> str:
    return f"{self.spec['arch']}+{self.spec['head']}"


def load_run(workdir: str, *, data_dir: str | None = None, step: int | None = None) -> Run:
  """The latest checkpoint (or `step`) of the run in `workdir`, with the data settings of
  its config (`gcp.workdir.saved_config`); `data_dir` overrides the one it was trained
  with."""
  config = saved_config(workdir)
  if config is None:
    raise FileNotFoundError(
        f"{os.path.join(workdir, CONFIG_FILE)} not found: give the workdir of a run trained "
        "with main.py or gcp.train.train_and_evaluate (it holds config.json and "
        "checkpoints/)")
  data_config = config.data
  if data_dir is not None:
    data_config.data_dir = data_dir
  if data_config.eval_split is None:
    data_config.eval_split = data.default_eval_split(
        data.load_builder(data_config.name, data_config.data_dir))
  spec = checkpoint.load_model_spec(workdir, step)
  return Run(workdir=os.path.abspath(workdir), spec=spec, model=create_model(**spec),
             variables=_on_default_device(checkpoint.load_variables(workdir, step)),
             data=data_config)


def _on_default_device(tree):
  # Through numpy: arrays restored with a training mesh's sharding would give every
  # computation on them mesh-typed values, and so recompilations when mixed with others.
  return jax.device_put(jax.tree.map(np.asarray, tree))


def builder_of(run: Run):
  """The run's data set (`gcp.data.load_builder`)."""
  return data.load_builder(run.data.name, run.data.data_dir)


def fixed_batches(run: Run, *, num_batches: int, batch_size: int,
                  split: str | None = None) -> list[dict]:
  """The first `num_batches` batches of `split` (default: the run's evaluation split) with
  the run's evaluation preprocessing, as numpy dicts `image`, `label`, `mask` (the last
  batch may be padded; `mask` marks the real examples). The same examples, in the same
  order, every call."""
  if num_batches < 1 or batch_size < 1:
    raise ValueError(f"need num_batches >= 1 and batch_size >= 1, got {num_batches}, "
                     f"{batch_size}")
  batches = data.eval_batches(
      builder_of(run), split=split or run.data.eval_split, pp=run.data.eval_pp,
      per_host_batch=batch_size, image_key=run.data.image_key,
      label_key=run.data.label_key, prefetch=1)
  out = [b for b in itertools.islice(batches, num_batches) if b["mask"].any()]
  if not out:
    raise ValueError(f"split {split or run.data.eval_split!r} of {run.data.name} is empty")
  return out


def num_examples(batches) -> int:
  """Real examples in a batch set (those `mask` marks, or all where there is none)."""
  return int(sum(b["mask"].sum() if "mask" in b else len(b["label"]) for b in batches))


def check_unpadded(batches) -> None:
  """Training-mode analyses take BatchNorm statistics over every example of a batch,
  padding included: they need full batches."""
  if any("mask" in b and not np.all(b["mask"]) for b in batches):
    raise ValueError("train=True uses each batch's statistics, padding included: use "
                     "full batches (a batch_size that divides the split) or train=False")
