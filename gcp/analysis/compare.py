"""Training curves of several runs side by side (e.g. GAP against iSQRT-COV): loss and
top-1 against epochs and against wall-clock time.

Epoch metrics and times come from each workdir's `metrics.jsonl` (`gcp.reporting.
MetricLog`): `wall_time` is the seconds the run had been running at that line, over all
its sessions (the pause between a stop and a resume does not count; compilation and
evaluation do, as they do for the person waiting).
"""
import os

import numpy as np

from gcp import reporting

CURVES = ("train_loss", "train_top1", "eval_loss", "eval_top1")


def run_curves(workdir: str) -> dict:
  """A run's per-epoch curves: `epoch`, `seconds` (running time at the epoch's end; NaN
  for runs logged before gcp recorded it) and each of `CURVES` (lists of the same
  length)."""
  path = os.path.join(workdir, reporting.METRICS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: give workdirs of runs trained with main.py "
                            "or gcp.train.train_and_evaluate")
  rows = [r for r in reporting.read_metrics(path) if "eval_top1" in r]
  curves = {"epoch": [r["epoch"] for r in rows],
            "seconds": [r.get("wall_time", float("nan")) for r in rows]}
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
