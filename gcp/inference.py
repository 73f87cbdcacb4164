"""A trained or converted model, ready to classify images outside the training loop.

`load(source)` reads everything inference needs from one checkpoint source (a workdir, a
checkpoint directory, one step's folder, `python -m gcp.convert` output or
`pretrained:NAME`): the network, its variables, its evaluation preprocessing and its class
names. `gcp.predict` and `gcp.export` start from it.

    from gcp import inference
    classifier = inference.load("runs/digits")
    logits = classifier.logits(images)  # images preprocessed as classifier.eval_pp says
"""
import dataclasses
import os

import flax.linen as nn
import jax

from gcp import checkpoint, convert
from gcp import workdir as workdir_lib
from gcp.models import VIDEO_ARCHS, create_model
from gcp.train import eval_logits, with_params

# Heads evaluated by an `isqrt_method`: `portable` networks take the Newton-Schulz form,
# which is matmuls only (the other methods call eigh, which not every runtime has).
_ISQRT_HEADS = ("isqrt", "tcp")
WEIGHTS = ("ema", "trained")


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A network with its variables and how its images are prepared.

  Attributes:
    model: the network (`create_model(**spec)`).
    variables: its variables, for `model.apply`.
    spec: the `create_model` arguments.
    eval_pp: its evaluation preprocessing (`gcp.data.preprocess` string, after decoding).
    flip: whether evaluation averages the logits of each image and its mirror.
    class_names: the names of its outputs, in order.
    source: the checkpoint it was read from, and `step` its step.
    weights: 'ema' (the run's EMA parameters) or 'trained'.
  """
  model: nn.Module
  variables: dict
  spec: dict
  eval_pp: str
  flip: bool
  class_names: list[str]
  source: str
  step: int
  weights: str

  @property
  def video(self) -> bool:
    return self.spec["arch"] in VIDEO_ARCHS

  def logits(self, images, variables: dict | None = None):
    """Logits `[B, K]` of preprocessed `images` as evaluation computes them
    (`gcp.train.eval_logits`: views averaged, and mirrors if `flip`)."""
    return eval_logits(self.model, self.variables if variables is None else variables,
                       images, self.flip)


def run_dir(path: str) -> str | None:
  """The workdir that holds the checkpoint source `path` (itself, or above its
  checkpoints/ folder or one step's folder), if it has a run's config."""
  path = os.path.abspath(os.path.expanduser(path))
  for candidate in (path, os.path.dirname(path), os.path.dirname(os.path.dirname(path))):
    if os.path.exists(os.path.join(candidate, workdir_lib.CONFIG_FILE)):
      return candidate
  return None


def load(source: str, *, step: int | None = None, eval_pp: str | None = None,
         flip: bool | None = None, weights: str | None = None,
         portable: bool = False) -> Classifier:
  """The classifier saved at `source`.

  Args:
    source: a workdir, checkpoint directory, step folder, converted checkpoint or
      `pretrained:NAME` (`gcp.checkpoint` reads them all).
    step: which checkpoint (default: the latest, or the step folder's).
    eval_pp, flip: override the evaluation preprocessing and mirroring. Default: the run's
      config (`config.data.eval_pp`, `config.eval_flip`) when `source` is in a workdir;
      for a converted checkpoint, its model family's (`gcp.convert.eval_preprocessing`)
      and no mirroring.
    weights: 'ema' or 'trained'; default: the EMA parameters when the run kept them.
    portable: evaluate iSQRT by Newton-Schulz iterations (matmuls only, the same function
      as the default method to float32 rounding), for runtimes without eigh.

  Raises:
    FileNotFoundError: nothing to read at `source`.
    CheckpointError: the checkpoint is damaged.
    ValueError: `weights` is unknown, or 'ema' for a checkpoint without EMA.
  """
  if weights not in (None, *WEIGHTS):
    raise ValueError(f"unknown weights {weights!r}; choose one of {', '.join(WEIGHTS)}")
  spec = checkpoint.load_model_spec(source, step)
  state = checkpoint.load_state(source, step)
  ema = state.get("ema_params")
  if weights == "ema" and ema is None:
    raise ValueError(f"the checkpoint at {source} has no EMA parameters (its run had no "
                     "optim.ema_decay): use weights='trained'")
  weights = weights or ("ema" if ema is not None else "trained")
  params = state["params"]
  if weights == "ema":  # the EMA covers the trained parameters; frozen ones stay
    params = with_params(params, ema)
  run = run_dir(source) if ":" not in source or os.path.exists(source) else None
  config = workdir_lib.saved_config(run) if run else None
  if eval_pp is None:
    eval_pp = config.data.eval_pp if config else convert.eval_preprocessing(spec)
  if flip is None:
    flip = bool(config.eval_flip) if config else False
  names = checkpoint.load_class_names(source, step)
  if names is None or len(names) != spec["num_classes"]:
    names = [f"class {i}" for i in range(spec["num_classes"])]
  built = dict(spec)
  if portable and spec["head"] in _ISQRT_HEADS:
    built["isqrt_method"] = "newton_schulz"
  variables = jax.device_get({"params": params, **state["model_state"]})
  return Classifier(model=create_model(**built), variables=variables, spec=spec,
                    eval_pp=eval_pp, flip=flip, class_names=list(names), source=source,
                    step=int(state["step"]), weights=weights)
