"""The only module that talks to Orbax: save, restore, and load variables for notebooks.

A checkpoint directory holds one folder per step with two items: `state` (step, params,
model_state, opt_state) and `model` (the `create_model` arguments as JSON, so a checkpoint
says which architecture it belongs to). Orbax writes each step to a temporary folder and
renames it when complete, so a killed run never leaves a half-written checkpoint behind.
"""
import os
from typing import Any

import jax
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


def load_variables(directory: str, step: int | None = None) -> dict:
  """`{"params": ..., "batch_stats": ..., ...}` of a checkpoint, for `model.apply`.

  Args:
    directory: a checkpoint directory (`WORKDIR/checkpoints`) or a workdir holding one.
    step: which step (default: the latest).
  """
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory at {directory!r}")
  with ocp.CheckpointManager(os.path.abspath(directory), item_names=("state", "model"),
                             options=ocp.CheckpointManagerOptions(read_only=True)) as m:
    step = m.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{directory!r} holds no checkpoint")
    state = m.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  state = state["state"]
  return {"params": state["params"], **state["model_state"]}
