"""The only module that talks to Orbax: save, restore, and load variables for notebooks.

A checkpoint directory holds one folder per step with two items: `state` (step, params,
model_state, and opt_state in training checkpoints; converted ones have none) and `model`
(the `create_model` arguments as JSON, so a checkpoint says which architecture it belongs
to). Orbax writes each step to a temporary folder and
renames it when complete, so a killed run never leaves a half-written checkpoint behind.
"""
import os
import re
from typing import Any

import flax.traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp

_policies = ocp.checkpoint_managers


class Checkpointer:
  """Asynchronous checkpoints in `directory`: the latest `keep`, plus the best by top-1."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
               best_metric: str = "eval_top1"):
    policy = _policies.AnyPreservationPolicy([
        _policies.LatestN(n=keep),
        _policies.BestN(get_metric_fn=lambda m: m[best_metric], reverse=False, n=1,
                        keep_checkpoints_without_metrics=False),
    ])
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory), item_names=("state", "model"),
        options=ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=async_save,
            create=True, cleanup_tmp_directories=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def model_spec(self, step: int | None = None) -> dict:
    """The `create_model` arguments saved with checkpoint `step` (default: the latest)."""
    step = self.latest_step() if step is None else step
    return self._manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.JsonRestore()))["model"]

  def save(self, step: int, state: Any, model_spec: dict,
           metrics: dict | None = None) -> None:
    """Starts an asynchronous save of `state` at `step`; returns before it is written."""
    self._manager.save(step, metrics=metrics, force=True, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), model=ocp.args.JsonSave(model_spec)))

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores the state at `step` (default: latest) into the structure and shardings of
    `target` (arrays or `jax.ShapeDtypeStruct`s)."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract)))["state"]

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _checkpoint_dir(directory: str) -> str:
  """A checkpoint directory, given it or a workdir holding one in `checkpoints/`."""
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory at {directory!r}: give a workdir, its "
                            "checkpoints/ folder, or the output of `python -m gcp.convert`")
  return os.path.abspath(directory)


def _read(directory: str, step: int | None, item: str, args) -> Any:
  directory = _checkpoint_dir(directory)
  with ocp.CheckpointManager(directory, item_names=("state", "model"),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as m:
    step = m.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{directory!r} holds no checkpoint")
    return m.restore(step, args=ocp.args.Composite(**{item: args}))[item]


def load_state(directory: str, step: int | None = None) -> dict:
  """A checkpoint's saved state as a dict: `step`, `params`, `model_state`, and where the
  run had them `opt_state` and `ema_params` (the EMA of the trained parameters, a nested
  dict of their paths; None without EMA).

  Args:
    directory: a checkpoint directory (`WORKDIR/checkpoints`, or one written by
      `python -m gcp.convert`) or a workdir holding one.
    step: which step (default: the latest).
  """
  return _read(directory, step, "state", ocp.args.StandardRestore())


def load_variables(directory: str, step: int | None = None) -> dict:
  """`{"params": ..., "batch_stats": ..., ...}` of a checkpoint (see `load_state` for the
  arguments), for `model.apply`."""
  state = load_state(directory, step)
  return {"params": state["params"], **state["model_state"]}


def load_model_spec(directory: str, step: int | None = None) -> dict:
  """The `create_model` arguments saved with a checkpoint: `create_model(**spec)` builds the
  network its variables belong to."""
  return _read(directory, step, "model", ocp.args.JsonRestore())


def save_variables(directory: str, variables: dict, model_spec: dict) -> None:
  """Writes model variables (no optimizer state) as step 0 of a checkpoint directory, in the
  layout `load_variables`, `load_model_spec` and `config.init_from` read."""
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  checkpointer = Checkpointer(directory, keep=1, async_save=False)
  checkpointer.save(0, {"step": 0, "params": params, "model_state": model_state}, model_spec)
  checkpointer.close()


def describe_mismatch(expected: dict, found: dict, fits=None, limit: int = 8) -> str:
  """How named tensors differ from the ones a model needs, as a readable report; "" when
  they map one-to-one.

  Args:
    expected: `{name: shape}` the target needs.
    found: `{name: shape}` the source has.
    fits: `(name, expected shape, found shape) -> bool`; default: equal shapes.
  """
  fits = fits or (lambda name, want, got: tuple(want) == tuple(got))
  missing = [n for n in expected if n not in found]
  unexpected = [n for n in found if n not in expected]
  shapes = [f"{n}: expected {tuple(want)}, found {tuple(found[n])}"
            for n, want in expected.items() if n in found and not fits(n, want, found[n])]

  def block(title, items):
    if not items:
      return []
    more = [f"    ... and {len(items) - limit} more"] if len(items) > limit else []
    return [f"  {title} ({len(items)}):", *(f"    {i}" for i in items[:limit]), *more]
  return "\n".join(block("missing", missing) + block("unexpected", unexpected) +
                   block("wrong shape", shapes))


def _path_name(path) -> str:
  return "/".join(str(p) for p in path)


def merge_pretrained(target: dict, loaded: dict, dont_load: str = "") -> tuple[dict, list[str]]:
  """Initialises `target` variables from `loaded` ones (fine-tuning), name by name.

  Args:
    target: freshly initialised variables `{"params": ..., "batch_stats": ...}`.
    loaded: variables of a checkpoint (`load_variables`).
    dont_load: regular expression; variables whose path (`params/fc/kernel`) it matches
      keep their fresh values (e.g. "^params/fc/|^batch_stats/fc/" for a new classifier).

  Returns:
    (merged variables, the paths that kept their fresh values).

  Raises:
    ValueError with a report if any other variable is missing from `loaded`, has another
    shape there, or if `loaded` holds variables the model does not use: nothing is loaded
    partially without being asked.
  """
  pattern = re.compile(dont_load) if dont_load else None
  skip = lambda name: bool(pattern and pattern.search(name))
  flat_target = {_path_name(p): (p, v) for p, v in
                 flax.traverse_util.flatten_dict(dict(target)).items()}
  flat_loaded = {_path_name(p): v for p, v in
                 flax.traverse_util.flatten_dict(dict(loaded)).items()}
  report = describe_mismatch(
      {n: v.shape for n, (_, v) in flat_target.items() if not skip(n)},
      {n: v.shape for n, v in flat_loaded.items() if not skip(n)})
  if report:
    raise ValueError(
        "the checkpoint does not match the model:\n" + report +
        "\nTo keep some variables freshly initialised (e.g. a classifier for new classes), "
        "set config.init_dont_load to a regular expression matching their paths, e.g. "
        "'^(params|batch_stats)/fc/'.")
  kept = [n for n in flat_target if skip(n)]
  merged = {p: (v if skip(n) else np.asarray(flat_loaded[n]).astype(v.dtype))
            for n, (p, v) in flat_target.items()}
  return flax.traverse_util.unflatten_dict(merged), kept
