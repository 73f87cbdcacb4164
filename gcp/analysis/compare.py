"""Training curves of several runs side by side (e.g. GAP against iSQRT-COV): loss and
top-1 against epochs and against wall-clock time.

Epoch metrics come from each workdir's `metrics.jsonl` (`gcp.reporting.MetricLog`). That
log holds no time, so wall-clock comes from the event times of the TensorBoard files the
same writer keeps: seconds since the training loop started, with each resumed session
timed from its own start (the pause between a stop and a resume does not count).
Compilation and evaluation time count, as they do for the person waiting.
"""
import glob
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.util import event_pb2

from gcp import reporting

CURVES = ("train_loss", "train_top1", "eval_loss", "eval_top1")


def _sessions(tensorboard_dir: str) -> list[list[tuple[int, float]]]:
  """Per events file (one per training session), its `(step, wall_time)` events in order,
  the first being the file's creation (the session's start)."""
  sessions = []
  for path in glob.glob(os.path.join(tensorboard_dir, "events.out.tfevents.*")):
    events = [event_pb2.Event.FromString(record.numpy())
              for record in tf.data.TFRecordDataset(path)]
    if events:
      sessions.append([(int(e.step), float(e.wall_time)) for e in events])
  return sorted(sessions, key=lambda s: s[0][1])


def elapsed_seconds(workdir: str) -> dict[int, float]:
  """`{step: seconds of training up to that step's log line}` from the TensorBoard events
  in `workdir/tensorboard` (empty if there are none)."""
  out, offset = {}, 0.0
  for session in _sessions(os.path.join(workdir, "tensorboard")):
    start = session[0][1]
    for step, wall_time in session[1:]:
      out[step] = offset + wall_time - start  # a later session overrides repeated steps
    offset += session[-1][1] - start
  return out


def run_curves(workdir: str) -> dict:
  """A run's per-epoch curves: `epoch`, `seconds` (wall-clock at the epoch's end; NaN
  without TensorBoard events) and each of `CURVES` (lists of the same length)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: give workdirs of runs trained with main.py "
                            "or gcp.train.train_and_evaluate")
  rows = [r for r in reporting.read_metrics(path) if "eval_top1" in r]
  seconds = elapsed_seconds(workdir)
  curves = {"epoch": [r["epoch"] for r in rows],
            "seconds": [seconds.get(r["step"], float("nan")) for r in rows]}
  for key in CURVES:
    curves[key] = [r.get(key, float("nan")) for r in rows]
  return curves


def compare_runs(workdirs) -> dict:
  """`{label: run_curves(workdir) + final}` for `workdirs`, a `{label: workdir}` dict or a
  list of workdirs (labelled by their folder names). `final` holds the last epoch's
  values and `best_eval_top1`."""
  if not isinstance(workdirs, dict):
    workdirs = {os.path.basename(os.path.normpath(w)): w for w in workdirs}
  out = {}
  for label, workdir in workdirs.items():
    curves = run_curves(workdir)
    if not curves["epoch"]:
      raise ValueError(f"{workdir} has no finished epoch in its metrics.jsonl")
    final = {key: values[-1] for key, values in curves.items()}
    final["best_eval_top1"] = float(np.max(curves["eval_top1"]))
    out[label] = {**curves, "final": final}
  return out
