"""Damaged checkpoints: each kind of damage is named (step folder, file, reason) in one
paragraph; training falls back to the newest checkpoint that restores; a step folder can
be read on its own; the best checkpoint survives the latest-N policy."""
import asyncio
import gc
import glob
import os
import shutil
import sys
import types

import jax
import numpy as np
import pytest

from gcp import checkpoint, runtime

SPEC = {"arch": "test"}


def state(value: float) -> dict:
  # Incompressible and large enough for its own array file (small arrays sit inside the
  # index files).
  w = value + np.random.default_rng(0).random((256, 256), np.float32) / 2
  return {"step": int(value), "params": {"w": w, "b": np.zeros(3, np.float32)},
          "model_state": {}}


@pytest.fixture
def saved(tmp_path):
  """Steps 1, 2, 3 (parameters 1.0, 2.0, 3.0), with progress, written synchronously."""
  directory = str(tmp_path / "checkpoints")
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  for step in (1, 2, 3):
    ckpt.save(step, state(step), SPEC, progress={"wall_time": float(step)})
  ckpt.close()
  return directory


def truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def largest_array_file(step_dir):
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  return max(files, key=os.path.getsize)


def array_database(step_dir):
  """Where a damaged array file is reported: the array database (tensorstore's messages
  name the array, not its data file)."""
  path = largest_array_file(step_dir)
  return path, os.path.join(step_dir, "state") + "/ (array params.w)"


DAMAGE = {
    # what is done to step 3: (the file to damage and the path the message names, the
    # damage, a phrase of the reason)
    "truncated array file": (array_database, truncate, "Requested byte range"),
    "truncated _METADATA": (lambda d: [os.path.join(d, "state", "_METADATA")] * 2, truncate,
                            "not valid JSON"),
    "garbled _METADATA": (lambda d: [os.path.join(d, "state", "_METADATA")] * 2,
                          lambda p: open(p, "w").write("{garbage"), "not valid JSON"),
    "missing array file": (array_database, os.remove, "Truncated"),
    "missing state entry": (lambda d: [os.path.join(d, "state")] * 2, shutil.rmtree,
                            "is missing"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_checkpoint_is_named_and_training_falls_back(saved, damage, monkeypatch):
  unraisable = []  # what Python would print as "Exception ignored in ..."
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  which, damage_fn, reason = DAMAGE[damage]
  step_dir = os.path.join(saved, "3")
  path, named = which(step_dir)
  damage_fn(path)

  # Reading it (init_from, --mode=eval): one paragraph with the file and the reason, and
  # the way to the intact ones.
  with pytest.raises(checkpoint.CheckpointError) as error:
    checkpoint.load_variables(saved)
  message = str(error.value)
  assert message.startswith(f"checkpoint {step_dir} cannot be restored: {named}")
  assert reason in message and "\n" not in message and len(message) < 800
  assert f"Other checkpoints there: steps 2, 1; read one by giving its folder, e.g. " \
         f"{os.path.join(saved, '2')}" in message
  np.testing.assert_array_equal(
      checkpoint.load_variables(os.path.join(saved, "2"))["params"]["w"], state(2)["params"]["w"])

  # Resuming: the newest checkpoint that restores, the damaged one reported and left.
  reports = []
  ckpt = checkpoint.Checkpointer(saved, async_save=False)
  restored, step, progress = ckpt.restore_newest(
      jax.tree.map(np.zeros_like, state(0)), report=reports.append)
  assert step == 2 and progress == {"wall_time": 2.0}
  np.testing.assert_array_equal(restored["params"]["w"], state(2)["params"]["w"])
  assert len(reports) == 2 and named in reports[0]
  assert reports[1] == f"resuming from step 2, the newest checkpoint in {saved} that restores"
  assert os.path.isdir(step_dir)
  # Training on reaches step 3 again: the damaged one is moved aside, not overwritten.
  ckpt.save(3, state(30), SPEC)
  ckpt.close()
  assert os.path.isdir(os.path.join(saved, "damaged", "3"))
  np.testing.assert_array_equal(checkpoint.load_variables(saved)["params"]["w"],
                                state(30)["params"]["w"])
  # Nothing under the messages: the reads still in flight when one failed report nothing.
  gc.collect()
  assert not unraisable, [u.exc_value for u in unraisable]


def _unraisable(error: BaseException):
  return types.SimpleNamespace(exc_type=type(error), exc_value=error,
                               exc_traceback=error.__traceback__, err_msg=None, object=None)


def test_reads_left_in_flight_by_a_failed_restore_report_nothing(saved, monkeypatch):
  """What tensorstore's late callbacks raise into the event loop Orbax closed after a
  failed read is dropped (made here; on a busy machine the damaged-checkpoint test meets
  real ones)."""
  unraisable = []
  monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
  truncate(largest_array_file(os.path.join(saved, "3")))
  with pytest.raises(checkpoint.CheckpointError):
    checkpoint.load_variables(saved)
  loop = asyncio.new_event_loop()
  loop.close()
  try:
    loop.call_soon_threadsafe(print)
  except RuntimeError as e:
    late = e
  # The same message raised elsewhere, and anything else, still reach the hook.
  others = [RuntimeError("Event loop is closed"), ValueError("something else")]
  for error in (late, *others):
    sys.unraisablehook(_unraisable(error))
  assert [u.exc_value for u in unraisable] == others


def test_a_garbled_model_spec_is_named(saved):
  path = os.path.join(saved, "3", "model", "metadata")
  with open(path, "w") as f:
    f.write("{garbage")
  with pytest.raises(checkpoint.CheckpointError, match=f"{path} is not valid JSON"):
    checkpoint.load_model_spec(saved)


def test_nothing_restores_lists_every_checkpoint(saved):
  for step in (1, 2, 3):
    shutil.rmtree(os.path.join(saved, str(step), "state"))
  ckpt = checkpoint.Checkpointer(saved, async_save=False)
  with pytest.raises(checkpoint.CheckpointError, match=r"(?s)no checkpoint in .* restores:"
                                                       r".*/3/state is missing.*/1/state is "
                                                       r"missing.*Move the checkpoints/"):
    ckpt.restore_newest(state(0), report=lambda _: None)
  ckpt.close()


def test_the_best_checkpoint_outlives_the_latest_n(tmp_path):
  directory = str(tmp_path / "c")
  ckpt = checkpoint.Checkpointer(directory, keep=2, async_save=False)
  for step, top1 in ((1, 0.5), (2, 0.9), (3, 0.6), (4, 0.7)):
    ckpt.save(step, state(step), SPEC)
    ckpt.record_eval(step, {"eval_top1": top1})
  ckpt.save(5, state(5), SPEC)
  ckpt.close()
  assert checkpoint.steps(directory) == [2, 4, 5]
  # A new session knows the best from best.json.
  ckpt = checkpoint.Checkpointer(directory, keep=1, async_save=False)
  ckpt.save(6, state(6), SPEC)
  ckpt.close()
  assert checkpoint.steps(directory) == [2, 6]


def test_class_names_round_trip_and_are_optional(tmp_path):
  variables = {"params": {"w": np.ones((2, 3), np.float32)}}
  spec = {"arch": "resnet18", "head": "gap", "num_classes": 3}
  checkpoint.save_variables(str(tmp_path / "named"), variables, spec, ["a", "b", "c"])
  checkpoint.save_variables(str(tmp_path / "plain"), variables, spec)
  assert checkpoint.load_class_names(str(tmp_path / "named")) == ["a", "b", "c"]
  assert checkpoint.load_class_names(str(tmp_path / "named" / "0")) == ["a", "b", "c"]
  assert checkpoint.load_class_names(str(tmp_path / "plain")) is None


def test_a_replicated_state_saves_and_restores_without_compiling(tmp_path):
  """Every process's first save must not compile a program per array shape and device
  (Orbax's replica-parallel writing does, ~10 s for ResNet-50 on 8 devices); restoring
  into the replicated target gives it back."""
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  # Shapes no other test uses (nothing compiled for them is in memory already), each
  # divisible among the devices (as Orbax splits an array).
  values = {"step": np.int32(7), "params": {f"w{i}": np.full((i + 3, 17, 16), i, np.float32)
                                             for i in range(4)}, "model_state": {}}
  target = jax.device_put(values, replicated)
  before = runtime.cache_counts()["requests"]
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
  ckpt.save(7, target, SPEC)
  ckpt.wait()
  assert runtime.cache_counts()["requests"] == before
  restored = ckpt.restore(target)
  ckpt.close()
  for leaf, value in zip(jax.tree.leaves(restored), jax.tree.leaves(values)):
    assert leaf.sharding == replicated
    np.testing.assert_array_equal(leaf, value)
