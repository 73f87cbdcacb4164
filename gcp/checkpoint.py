"""The only module that talks to Orbax: save, restore, and load variables for notebooks.

A checkpoint directory holds one folder per step with up to three items: `state` (step,
params, model_state, and opt_state in training checkpoints; converted ones have none),
`model` (the `create_model` arguments as JSON, so a checkpoint says which architecture it
belongs to) and, in training checkpoints, `progress` (JSON: what the loop accumulated
since the epoch began, so that a resumed run reports what an uninterrupted one does).
Orbax writes each step to a temporary folder and renames it when complete, so a killed run
never leaves a half-written checkpoint behind. A checkpoint damaged afterwards (a
truncated or garbled file, a missing entry) is reported by `CheckpointError`, which names
the step folder, the file and the reason; training falls back to the newest checkpoint
that restores (`Checkpointer.restore_newest`).

Wherever a checkpoint is read, `directory` is a checkpoint directory (`WORKDIR/
checkpoints`, or one written by `python -m gcp.convert`), a workdir holding one, one
step's folder (`WORKDIR/checkpoints/248`: that step), or a registered source's
`prefix:NAME` (`register_source`; `pretrained:NAME` once gcp.pretrained is imported).

Weight surgery lives here too: `merge_pretrained` (fine-tuning) and
`inflate_image_variables` (a video model from an image model's checkpoint).
"""
import dataclasses
import json
import os
import re
import sys
import traceback
from typing import Any, Callable

import flax
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from gcp.models.video import BACKBONE_MODULE, STEM_KERNEL
from gcp.workdir import write_atomic

_policies = ocp.checkpoint_managers
_ITEMS = ("state", "model", "progress", "classes")
BEST_FILE = "best.json"


class CheckpointError(ValueError):
  """A checkpoint that cannot be read: the message names the step folder, the file and the
  reason in one paragraph."""


# --------------------------------------------------------------------------- diagnosis

def _json_problem(step_dir: str) -> str | None:
  """The first JSON file of a step folder that does not parse, as "path: reason"."""
  for root, _, files in sorted(os.walk(step_dir)):
    for name in sorted(files):
      path = os.path.join(root, name)
      if name not in ("_METADATA", "metadata", "_CHECKPOINT_METADATA", "_sharding"):
        continue
      try:
        with open(path) as f:
          json.load(f)
      except ValueError as e:
        return f"{path} is not valid JSON, truncated or garbled ({e})"
  return None


def _reason(step_dir: str, items: tuple[str, ...], error: Exception) -> str:
  """Why `items` of `step_dir` did not restore, naming the file where one can be told."""
  missing = [os.path.join(step_dir, i) for i in items if not os.path.isdir(
      os.path.join(step_dir, i))]
  if missing:
    return f"{missing[0]} is missing"
  problem = _json_problem(step_dir)
  if problem:
    return problem
  # tensorstore nests its causes ("CODE: Error opening ...: Error reading ... of local file
  # "...": <the cause>") and appends a spec dump: keep the file, the code and the cause.
  message = (str(error).split(" [tensorstore_spec=")[0].strip().splitlines() or [""])[0]
  files = re.findall(r'local file "([^"]+)"', message)
  if not files:
    return f"{type(error).__name__}: {message[:300]}"
  code = re.match(r"([A-Z_]+): ", message)
  array = re.search(r'Error reading "([^"/]+)/[^"]*" in OCDBT', message)
  cause = re.sub(r' of local file "[^"]+"', "", message.rsplit(": ", 1)[-1])
  return (f"{files[-1]}{f' (array {array.group(1)})' if array else ''}: "
          f"{code.group(1) + ': ' if code else ''}{cause[:300]}")


def _error(directory: str, step: int, items: tuple[str, ...], error: Exception,
           fix: str = "") -> CheckpointError:
  step_dir = os.path.join(directory, str(step))
  return CheckpointError(f"checkpoint {step_dir} cannot be restored: "
                         f"{_reason(step_dir, items, error)}.{' ' + fix if fix else ''}")


def _late_read_callback(unraisable) -> bool:
  return (unraisable.exc_type is RuntimeError and unraisable.object is None
          and str(unraisable.exc_value) == "Event loop is closed"
          and any(frame.name == "call_soon_threadsafe"
                  for frame in traceback.extract_tb(unraisable.exc_traceback)))


def _drop_late_read_callbacks() -> None:
  """Before a restore: should it fail (a damaged checkpoint), the reads still in flight
  complete after Orbax has closed its event loop, and their callbacks would make Python
  print "Exception ignored ... RuntimeError: Event loop is closed" under the message that
  names the damage. Those reports alone are dropped (`sys.unraisablehook`)."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_late_read_callbacks", False):
    return

  def hook(unraisable):
    if not _late_read_callback(unraisable):
      previous(unraisable)
  hook.drops_late_read_callbacks = True
  sys.unraisablehook = hook


# --------------------------------------------------------------------------- training

@dataclasses.dataclass
class _KeepStep(_policies.PreservationPolicy):
  """Preserves one step, which may change as the run goes (the best evaluated one)."""
  step: int | None = None

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    return [c.step == self.step for c in checkpoints]


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's handler of the `state` item, with replicated arrays written from one device.
  (Orbax's default on CPUs splits each replicated array among its devices: every process
  then compiles a slice program per array shape and device, 10 s of ResNet-50's first save
  on 8 devices, to spread a transfer our replicated states do not need spread. Orbax does
  not split on GPUs either, when JAX_PLATFORMS names them.)"""
  scalars = ocp.type_handlers.ScalarHandler()
  return ocp.PyTreeCheckpointHandler(
      type_handler_registry=ocp.type_handlers.create_type_handler_registry(
          (int, scalars), (float, scalars), (np.number, scalars),
          (np.ndarray, ocp.type_handlers.NumpyHandler()),
          (jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False))))


class Checkpointer:
  """Asynchronous checkpoints in `directory`: the latest `keep`, plus the best by the eval
  metric recorded with `record_eval` (kept in `directory/best.json`). `class_names`: the
  classifier's classes in output order, saved with every checkpoint (`load_class_names`)."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
               class_names: list[str] | None = None):
    self.directory = os.path.abspath(directory)
    self._class_names = None if class_names is None else list(class_names)
    self._best_path = os.path.join(self.directory, BEST_FILE)
    self._best = self._read_best()
    self._keep_best = _KeepStep(self._best.get("step"))
    policy = _policies.AnyPreservationPolicy([_policies.LatestN(n=keep), self._keep_best])
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": _state_handler(),
                       **{name: ocp.JsonCheckpointHandler() for name in _ITEMS[1:]}},
        options=ocp.CheckpointManagerOptions(
            preservation_policy=policy, enable_async_checkpointing=async_save,
            create=True, cleanup_tmp_directories=True))

  def _read_best(self) -> dict:
    try:
      with open(self._best_path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def _restore_items(self, step: int, **args) -> dict:
    _drop_late_read_callbacks()
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # any failure to read is reported as the damage it is
      raise _error(self.directory, step, tuple(args), e) from e

  def model_spec(self, step: int | None = None) -> dict:
    """The `create_model` arguments saved with checkpoint `step` (default: the latest)."""
    step = self.latest_step() if step is None else step
    return self._restore_items(step, model=ocp.args.JsonRestore())["model"]

  def progress(self, step: int) -> dict | None:
    """The `progress` saved with checkpoint `step`; None if it has none (a checkpoint
    written by an earlier version of gcp)."""
    if not os.path.isdir(os.path.join(self.directory, str(step), "progress")):
      return None
    return self._restore_items(step, progress=ocp.args.JsonRestore())["progress"]

  def save(self, step: int, state: Any, model_spec: dict,
           progress: dict | None = None) -> None:
    """Starts an asynchronous save of `state` at `step`; returns before it is written. A
    damaged checkpoint already at `step` (one resume fell back from) is moved to
    `directory/damaged/` first."""
    if step in self._manager.all_steps():
      self._manager.wait_until_finished()
      if jax.process_index() == 0:
        aside = os.path.join(self.directory, "damaged", str(step))
        os.makedirs(os.path.dirname(aside), exist_ok=True)
        os.replace(os.path.join(self.directory, str(step)), aside)
      _sync(f"moved damaged checkpoint {step}")
      self._manager.reload()
    args = dict(state=ocp.args.PyTreeSave(state), model=ocp.args.JsonSave(model_spec))
    if progress is not None:
      args["progress"] = ocp.args.JsonSave(progress)
    if self._class_names is not None:
      args["classes"] = ocp.args.JsonSave({"names": self._class_names})
    self._manager.save(step, force=True, args=ocp.args.Composite(**args))

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores the state at `step` (default: latest) into the structure and shardings of
    `target` (arrays or `jax.ShapeDtypeStruct`s). Raises `CheckpointError` if it cannot."""
    step = self.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return self._restore_items(step, state=ocp.args.PyTreeRestore(
        abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)))["state"]

  def restore_newest(self, target: Any, check_spec: Callable[[dict], None] = lambda s: None,
                     report: Callable[[str], None] = print) -> tuple[Any, int, dict | None]:
    """`(state, step, progress)` of the newest checkpoint that restores; a damaged newer
    one is reported (`report`) and left in place.

    Args:
      target: as for `restore`.
      check_spec: called with each candidate's model spec before its state is read; raises
        to refuse the checkpoint (e.g. another architecture), which stops the search.
      report: where the damaged checkpoints are described.

    Raises:
      CheckpointError: no checkpoint restores (every one is described).
    """
    damaged = []
    for step in reversed(self.all_steps()):
      try:
        spec = self.model_spec(step)
        check_spec(spec)
        state, progress = self.restore(target, step), self.progress(step)
      except CheckpointError as e:
        damaged.append(str(e))
        report(f"{e} Trying the previous checkpoint; the damaged one is left in place.")
        continue
      if damaged:
        report(f"resuming from step {step}, the newest checkpoint in {self.directory} that "
               "restores")
      return state, step, progress
    raise CheckpointError(
        f"no checkpoint in {self.directory} restores:\n" + "\n".join(damaged) +
        "\nMove the checkpoints/ folder aside to train this workdir from the start, or use a "
        "new --workdir.")

  def record_eval(self, step: int, metrics: dict, metric: str = "eval_top1") -> None:
    """Records the evaluation of checkpoint `step`; the best by `metric` is kept from now
    on, whatever `keep`."""
    value = metrics.get(metric)
    if value is None or ("value" in self._best and value <= self._best["value"]):
      return
    self._best = {"step": int(step), "metric": metric, "value": float(value)}
    self._keep_best.step = int(step)
    if jax.process_index() == 0:
      write_atomic(self._best_path, json.dumps(self._best))

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


# --------------------------------------------------------------------------- reading

def steps(directory: str) -> list[int]:
  """The complete checkpoints' steps in a checkpoint directory, ascending ([] if there is
  no such directory)."""
  return sorted(ocp.utils.checkpoint_steps(directory)) if os.path.isdir(directory) else []


# Named checkpoint sources: `prefix:NAME` wherever a checkpoint is read is the directory
# `resolve(NAME)` returns. Modules above this one register theirs, so that it imports none
# of them; the known ones are named in the error when unregistered.
_SOURCES: dict[str, Callable[[str], str]] = {}
_KNOWN_SOURCES = {"pretrained": "gcp.pretrained"}


def register_source(prefix: str, resolve: Callable[[str], str]) -> None:
  """Makes `prefix:NAME` a checkpoint source: `resolve(NAME)` returns its checkpoint
  directory (gcp.pretrained registers 'pretrained')."""
  _SOURCES[prefix] = resolve


def _resolve(source: str) -> str:
  prefix, sep, name = source.partition(":")
  if not sep or os.path.exists(source):
    return source
  if prefix in _SOURCES:
    return _SOURCES[prefix](name)
  if prefix in _KNOWN_SOURCES:
    raise FileNotFoundError(f"{source!r}: {prefix}:NAME needs `import "
                            f"{_KNOWN_SOURCES[prefix]}` first (main.py imports it)")
  return source


def _locate(source: str, step: int | None) -> tuple[str, int]:
  """`(checkpoint directory, step)` of a workdir, checkpoint directory or step folder
  (`step` None: the step folder's, else the latest), or of a registered `prefix:NAME`
  source (`register_source`)."""
  source = os.path.abspath(os.path.expanduser(_resolve(source)))
  base = os.path.basename(source)
  if base.isdigit() and os.path.isdir(os.path.join(source, "state")) and step is None:
    return os.path.dirname(source), int(base)
  directory = source
  if os.path.isdir(os.path.join(directory, "checkpoints")):
    directory = os.path.join(directory, "checkpoints")
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"no checkpoint directory at {source!r}: give a workdir, its "
                            "checkpoints/ folder, one step's folder in it, or the output of "
                            "`python -m gcp.convert`")
  if step is None:
    found = steps(directory)
    if not found:
      raise FileNotFoundError(f"{directory!r} holds no checkpoint")
    step = found[-1]
  return directory, step


def _read(source: str, step: int | None, **args) -> dict:
  directory, step = _locate(source, step)
  _drop_late_read_callbacks()
  try:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as reader:
      return reader.restore(os.path.join(directory, str(step)),
                            args=ocp.args.Composite(**args))
  except Exception as e:  # any failure to read is reported as the damage it is
    others = [s for s in reversed(steps(directory)) if s != step]
    fix = (f"Other checkpoints there: step{'s' * (len(others) > 1)} "
           f"{', '.join(map(str, others[:5]))}; read one by giving its folder, e.g. "
           f"{os.path.join(directory, str(others[0]))}." if others else
           "It is the only checkpoint there: train or convert it again.")
    raise _error(directory, step, tuple(args), e, fix) from e


def load_state(directory: str, step: int | None = None) -> dict:
  """A checkpoint's saved state as a dict: `step`, `params`, `model_state`, and where the
  run had them `opt_state` and `ema_params` (the EMA of the trained parameters, a nested
  dict of their paths; None without EMA).

  Args:
    directory: a checkpoint directory, a workdir holding one, or a step's folder.
    step: which step (default: the latest, or the step folder's).

  Raises:
    FileNotFoundError: no checkpoint there.
    CheckpointError: the checkpoint is damaged (the message names the file).
  """
  return _read(directory, step, state=ocp.args.StandardRestore())["state"]


def load_variables(directory: str, step: int | None = None) -> dict:
  """`{"params": ..., "batch_stats": ..., ...}` of a checkpoint (see `load_state` for the
  arguments), for `model.apply`."""
  state = load_state(directory, step)
  return {"params": state["params"], **state["model_state"]}


def load_model_spec(directory: str, step: int | None = None) -> dict:
  """The `create_model` arguments saved with a checkpoint: `create_model(**spec)` builds the
  network its variables belong to."""
  return _read(directory, step, model=ocp.args.JsonRestore())["model"]


def load_class_names(directory: str, step: int | None = None) -> list[str] | None:
  """The class names saved with a checkpoint, in the classifier's output order; None if it
  has none (saved without, or by an earlier version of gcp)."""
  folder, step = _locate(directory, step)
  if not os.path.isdir(os.path.join(folder, str(step), "classes")):
    return None
  return _read(folder, step, classes=ocp.args.JsonRestore())["classes"]["names"]


def save_variables(directory: str, variables: dict, model_spec: dict,
                   class_names: list[str] | None = None) -> None:
  """Writes model variables (no optimizer state) as step 0 of a checkpoint directory, in the
  layout `load_variables`, `load_model_spec` and `config.init_from` read, with the
  classifier's `class_names` if given."""
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  checkpointer = Checkpointer(directory, keep=1, async_save=False, class_names=class_names)
  checkpointer.save(0, {"step": 0, "params": params, "model_state": model_state}, model_spec)
  checkpointer.close()


# --------------------------------------------------------------------------- weight surgery

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


def _flat_by_name(variables) -> dict:
  return {"/".join(str(k) for k in p): v for p, v in
          flax.traverse_util.flatten_dict(flax.core.unfreeze(dict(variables))).items()}


def _unflat_by_name(flat: dict) -> dict:
  return flax.traverse_util.unflatten_dict({tuple(n.split("/")): v for n, v in flat.items()})


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
  flat_target, flat_loaded = _flat_by_name(target), _flat_by_name(loaded)
  report = describe_mismatch(
      {n: v.shape for n, v in flat_target.items() if not skip(n)},
      {n: v.shape for n, v in flat_loaded.items() if not skip(n)})
  if report:
    raise ValueError(
        "the checkpoint does not match the model:\n" + report +
        "\nTo keep some variables freshly initialised (e.g. a classifier for new classes), "
        "set config.init_dont_load to a regular expression matching their paths, e.g. "
        "'^(params|batch_stats)/fc/'.")
  kept = [n for n in flat_target if skip(n)]
  merged = {n: (v if skip(n) else np.asarray(flat_loaded[n]).astype(v.dtype))
            for n, v in flat_target.items()}
  return _unflat_by_name(merged), kept


def inflate_image_variables(image_variables, video_variables) -> tuple[dict, list[str]]:
  """Video variables with the backbone taken from an image ResNet's (TSN initialisation).

  Every backbone variable (conv1, bn1, layer{i}_{j}/...: params and batch_stats) is
  copied; for snippets (conv1 with 3k input channels) the RGB kernel is repeated k times
  along the input channels, unscaled (SPEC §5), matching frame-major stacking. CPTM, the
  head, the auxiliary head and the classifier keep their values from `video_variables`;
  the image model's head and classifier are ignored.

  Args:
    image_variables: `{"params": ..., "batch_stats": ...}` of an image ResNet of the same
      depth and width (e.g. `load_variables` of an ImageNet run), any head. Its `variant`
      should be the video model's: variables cannot tell.
    video_variables: freshly initialised variables of the video model
      (`gcp.models.video`).

  Returns:
    (`video_variables` with the backbone replaced (same structure and dtypes), the names
    of the top-level modules that kept their fresh values).

  Raises:
    ValueError with a report of the missing, unexpected or mis-shaped backbone variables
    if the image model's backbone is not the video model's.
  """
  def is_backbone(name):  # params/layer1_0/conv1/kernel: its module is the second part
    parts = name.split("/")
    return len(parts) > 2 and bool(BACKBONE_MODULE.fullmatch(parts[1]))
  video = _flat_by_name(video_variables)
  image = {n: v for n, v in _flat_by_name(image_variables).items() if is_backbone(n)}
  wanted = [n for n in video if is_backbone(n)]

  def fits(var, want, got):
    if tuple(want) == tuple(got):
      return True
    # A snippet stem: the same kernel with the RGB input channels repeated.
    return (var == STEM_KERNEL and len(want) == len(got) == 4 and want[:2] == got[:2]
            and want[3] == got[3] and want[2] % got[2] == 0)
  report = describe_mismatch({n: video[n].shape for n in wanted},
                             {n: np.shape(v) for n, v in image.items()}, fits)
  if report:
    raise ValueError(
        "the image model's backbone does not match the video model's:\n" + report +
        "\nInitialise from an image ResNet of the same depth and width as the video model "
        "(its head and classifier are ignored).")
  repeats = video[STEM_KERNEL].shape[2] // np.shape(image[STEM_KERNEL])[2]
  merged = dict(video)
  for n in wanted:
    value = np.asarray(image[n])
    if n == STEM_KERNEL:
      value = np.tile(value, (1, 1, repeats, 1))
    merged[n] = jnp.asarray(value, dtype=video[n].dtype)
  fresh = sorted({n.split("/")[1] for n in video} - {n.split("/")[1] for n in wanted})
  return _unflat_by_name(merged), fresh
