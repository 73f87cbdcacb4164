"""A run's record in its workdir: the config it was started with and every accepted change.

`config.json` is written once, when a run starts, and never rewritten. When a run resumes
with a config that differs, the differences are appended to `config_history.jsonl`
(`{"step", "time", "changes": {key: [old, new]}, "trajectory"}` per line) if they are
accepted:
- free changes (`gcp.config.FREE_KEYS`: logging, evaluation, checkpoint frequency, ...)
  always are;
- changes to the training trajectory (optimizer, schedule, data, model, seed, batch size)
  only with `allow_changes` (`python main.py --allow_config_change`); otherwise the run
  stops with the differences (`ConfigChanged`) before writing anything.
`saved_config` is `config.json` with the history applied: what resume, `--mode=eval` and
`python -m gcp.analysis` start from.
"""
import json
import os
import tempfile
import time

import jax
import ml_collections

from gcp import config as config_lib

# Read once, at import (os.umask can only be read by setting it, process-wide).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"


class ConfigChanged(ValueError):
  """A resumed run's config would change its training trajectory."""


def write_atomic(path: str, text: str) -> None:
  """Writes `text` to `path` so that readers see the old file or the new one, never a part
  (a temporary file in the same folder, renamed)."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would create it (mkstemp makes it private)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def _history(workdir: str) -> list[dict]:
  path = os.path.join(workdir, HISTORY_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def saved_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config of the run in `workdir` (config.json with the accepted changes of
  config_history.jsonl applied), or None if it holds no run.

  Raises:
    ValueError: config.json is not readable JSON, or holds unknown keys.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      values = json.load(f)
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON ({e}): restore it from a backup, or use a "
                     "new --workdir") from None
  config = config_lib.from_dict(values, source=path)
  for entry in _history(workdir):
    for key, (_, new) in entry["changes"].items():
      config_lib.set_value(config, key, new)
  return config


def resolve(workdir: str, file_config: ml_collections.ConfigDict, *, file_given: bool,
            overrides: list[str]) -> ml_collections.ConfigDict:
  """The config a command runs with in `workdir`.

  Args:
    workdir: the run's directory.
    file_config: the config of the `--config` file with the command-line overrides applied
      (the default file when no `--config` was given).
    file_given: whether `--config` was given explicitly.
    overrides: the dotted keys overridden on the command line.

  Returns:
    `file_config` if the file was given or the workdir holds no run; else the workdir's
    saved config with the overrides (their values taken from `file_config`) on top, so that
    resuming or evaluating a run needs nothing retyped.
  """
  saved = None if file_given else saved_config(workdir)
  if saved is None:
    return file_config
  flat = config_lib.leaves(file_config)
  for key in overrides:
    config_lib.set_value(saved, key, flat[key])
  return saved


def reconcile(workdir: str, config: ml_collections.ConfigDict, *, step: int,
              allow_changes: bool = False) -> dict | None:
  """Checks `config` against the run that `workdir` holds (at `step`).

  Returns:
    The accepted changes for `record` (`{"changes": ..., "trajectory": ...}`), or None if
    the workdir holds no config record.

  Raises:
    ConfigChanged: a difference changes the training trajectory and `allow_changes` is
      False (nothing is written).
  """
  saved = saved_config(workdir)
  if saved is None:
    return None
  trajectory, free = config_lib.changes(saved, config)
  if trajectory and not allow_changes:
    raise ConfigChanged(
        f"workdir {workdir} holds a run (at step {step}) trained with another config; "
        f"resuming with this one would change its training trajectory:\n"
        f"{config_lib.format_changes(trajectory)}\n"
        f"To resume the run as it was, drop these settings (`python main.py --workdir "
        f"{workdir}` resumes with the run's own config); to start another run, use a new "
        f"--workdir; to continue this run with the changes, pass --allow_config_change "
        f"(train_and_evaluate(..., allow_config_change=True)): they are then recorded in "
        f"{os.path.join(workdir, HISTORY_FILE)}. Nothing was written.")
  return {"changes": {**trajectory, **free}, "trajectory": bool(trajectory)}


def record(workdir: str, config: ml_collections.ConfigDict, accepted: dict | None,
           step: int) -> None:
  """Records a resumed run's accepted changes (`reconcile`'s result) as made at `step`;
  writes config.json if the workdir has none (a run from before it was kept)."""
  if jax.process_index() != 0:
    return
  if accepted is None:
    write_atomic(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))
  elif accepted["changes"]:
    entry = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **accepted}
    with open(os.path.join(workdir, HISTORY_FILE), "a") as f:
      f.write(json.dumps(entry) + "\n")


def start(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Records `config` as the config of a run starting afresh in `workdir` (a previous
  record, of a run that left no checkpoint, is replaced)."""
  if jax.process_index() != 0:
    return
  write_atomic(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))
  history = os.path.join(workdir, HISTORY_FILE)
  if os.path.exists(history):
    os.remove(history)
