"""The TPAMI 2023 claims about global covariance pooling, measured: `run_study` (behind
`python -m gcp.study configs/study.py --workdir runs/study [--quick]`).

Trains every head of the study config (`configs/study.py`: GAP, iSQRT-COV, DropCov on the
same backbone, data, schedule and seeds), measures each run, and writes into WORKDIR:

- `study.json`: every number per seed, with mean, standard error and 95% interval per head,
  and the verdict of every claim for every head against the baseline (GAP);
- `study.md`: one row per claim with its verdict per head pair, then every measurement;
- `curves.png`, `landscape.png`, `sharpness.png`, `robustness.png`;
- `runs/<head>_seed<k>/`: each run (a main.py workdir) and its measurements
  (`study_run.json`).

The claims and what measures them (per run):
1. converges faster: the mean training loss over the run (area under the loss curve per
   step); also the epochs and steps to fixed fractions of the study's best accuracy;
2. smooths the loss landscape: the loss range and the gradient change along the gradient at
   the head's input, on the training batch every `landscape_every_steps` steps
   (`gcp.analysis.landscape`), averaged over training;
3. reaches flatter minima: the top Hessian eigenvalue and the Hutchinson trace of the
   training loss at the end (`gcp.analysis.sharpness`);
4. is more robust to corruptions: mCE and relative mCE over the corruptions and severities
   against the baseline run of the same seed (`gcp.analysis.robustness`);
5. transfers better: top-1 of a linear probe of the frozen network on a held-out task
   (`gcp.analysis.transfer`).

Each verdict is a paired t-test over seeds of head minus baseline (95% interval; mCE: a
one-sample test against the baseline's 1): "holds" if the interval lies on the side the
claim predicts, "reversed" if on the other, "not significant" otherwise (or with one
seed). A study resumes: finished runs and their measurements are reused, an interrupted
run resumes from its checkpoint.
"""
import copy
import dataclasses
import json
import math
import os
import time

import ml_collections
import numpy as np

from gcp import reporting, train
from gcp import workdir as workdir_lib
from gcp.analysis import (landscape, plots, robustness, runs, sharpness, stats,
                          transfer)
from gcp.config import split_names, to_dict

RUN_FILE = "study_run.json"
FIGURES = ("curves", "landscape", "sharpness", "robustness")


@dataclasses.dataclass(frozen=True)
class Metric:
  """A per-run number and the claim it tests."""
  key: str
  claim: str
  description: str
  lower_is_better: bool
  primary: bool = False  # the claim's row in study.md's first table
  null: float | None = None  # one-sample test of the head's values against this


CLAIMS = ("converges faster", "smooths the loss landscape", "reaches flatter minima",
          "is more robust to corruptions", "transfers better")


def metrics_of(fractions) -> tuple[Metric, ...]:
  """The measured numbers, in study.md's order."""
  return (
      Metric("train_loss_auc", CLAIMS[0], "mean training loss over the run (area under "
             "the loss curve / steps)", True, primary=True),
      *(Metric(f"epochs_to_{f:g}", CLAIMS[0], f"epochs to {100 * f:g}% of the study's best "
               "eval top-1", True) for f in fractions),
      Metric("landscape_loss_range", CLAIMS[1], "loss range along the gradient, mean over "
             "training", True, primary=True),
      Metric("landscape_grad_change", CLAIMS[1], "largest gradient change along the "
             "gradient (gradient predictiveness), mean over training", True),
      Metric("top_eigenvalue", CLAIMS[2], "top Hessian eigenvalue of the training loss",
             True, primary=True),
      Metric("hessian_trace", CLAIMS[2], "Hessian trace (Hutchinson)", True),
      Metric("mce", CLAIMS[3], "mCE against the baseline run of the same seed (baseline = "
             "1)", True, primary=True, null=1.0),
      Metric("relative_mce", CLAIMS[3], "relative mCE against the baseline (baseline = 1)",
             True, null=1.0),
      Metric("mean_corruption_error", CLAIMS[3], "top-1 error under corruption, mean", True),
      Metric("transfer_top1", CLAIMS[4], "linear-probe top-1 on the held-out task", False,
             primary=True),
      Metric("eval_top1", "(accuracy, for reference)", "final eval top-1", False),
  )


# ---------------------------------------------------------------------------------------
# Configuration


def resolve(study: ml_collections.ConfigDict, quick: bool = False) -> ml_collections.ConfigDict:
  """The study config to run: checked, and with `--quick`'s settings applied."""
  study = copy.deepcopy(study)
  if study.get("heads"):  # a subset of the runs: the others are neither trained nor compared
    chosen = split_names(study.heads)
    unknown = [h for h in chosen if h not in study.runs]
    if unknown:
      raise ValueError(f"config.heads names {', '.join(unknown)}, not in config.runs "
                       f"({', '.join(study.runs)})")
    with study.runs.unlocked():  # config flags lock the config they parse
      for head in [h for h in study.runs if h not in chosen]:
        del study.runs[head]
  heads, key = list(study.runs), "config.heads" if study.get("heads") else "config.runs"
  if study.baseline not in heads:
    raise ValueError(f"config.baseline {study.baseline!r} is not one of {key} "
                     f"({', '.join(heads)})")
  if len(heads) < 2:
    raise ValueError(f"a study compares heads: {key} needs the baseline and at least one "
                     "other head")
  if quick:
    q = study.quick
    study.seeds = q.seeds
    study.num_epochs = q.num_epochs
    study.robustness.severities = q.severities
    study.sharpness.power_iters = q.power_iters
    study.sharpness.max_probes = q.max_probes
  if study.seeds < 1:
    raise ValueError(f"config.seeds must be >= 1, got {study.seeds}")
  return study


def heads_of(study: ml_collections.ConfigDict) -> list[str]:
  """The baseline, then the other heads in alphabetical order (a ConfigDict's order)."""
  return [study.baseline, *(h for h in study.runs if h != study.baseline)]


def run_name(head: str, seed: int) -> str:
  return f"{head}_seed{seed}"


def run_config(study: ml_collections.ConfigDict, head: str, seed: int):
  config = copy.deepcopy(study.runs[head])
  config.seed = seed
  return config


def _settings(study: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> dict:
  """What a run's measurements depend on: reused only while these are unchanged."""
  return json.loads(json.dumps({
      "run": to_dict(config), "sharpness": study.sharpness.to_dict(),
      "robustness": study.robustness.to_dict(), "transfer": study.transfer.to_dict()},
      default=list))


# ---------------------------------------------------------------------------------------
# One run


def curves_of(run_dir: str) -> dict:
  """A run's logged curves: per epoch (`epoch`, `step`, `eval_top1`, `train_loss`,
  `wall_time`), per log step (`loss_step`, `loss_epoch` (the step in epochs), `loss`) and
  per landscape probe (`landscape_step`, `loss_range`, `grad_change`)."""
  rows = reporting.read_metrics(os.path.join(run_dir, reporting.METRICS_FILE))
  epochs = [r for r in rows if "eval_top1" in r]
  steps = [r for r in rows if "loss" in r]
  probes = [r for r in rows if "landscape_loss_range" in r]
  steps_per_epoch = epochs[0]["step"] / epochs[0]["epoch"]
  return {"epoch": [r["epoch"] for r in epochs], "step": [r["step"] for r in epochs],
          "eval_top1": [r["eval_top1"] for r in epochs],
          "train_loss": [r["train_loss"] for r in epochs],
          "wall_time": [r["wall_time"] for r in epochs],
          "loss_step": [r["step"] for r in steps],
          "loss_epoch": [r["step"] / steps_per_epoch for r in steps],
          "loss": [r["loss"] for r in steps],
          "landscape_step": [r["step"] for r in probes],
          "loss_range": [r["landscape_loss_range"] for r in probes],
          "grad_change": [r["landscape_grad_change_max"] for r in probes]}


def mean_over_steps(steps, values) -> float:
  """The area under a curve per step (trapezoid rule): its mean over the steps covered."""
  steps, values = np.asarray(steps, np.float64), np.asarray(values, np.float64)
  if len(steps) < 2:
    return float(values.mean()) if len(values) else float("nan")
  return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))


def measure(run_dir: str, study: ml_collections.ConfigDict) -> dict:
  """Every per-run measurement of the module doc (mCE and the epochs to the study's best
  come later, from all runs: `summarize`)."""
  curves = curves_of(run_dir)
  run = runs.load_run(run_dir)
  s = study.sharpness
  batches = runs.fixed_batches(run, num_batches=s.num_batches, batch_size=s.batch_size,
                               split=s.split)
  sharp = sharpness.sharpness(run.model, run.variables, batches, num_iters=s.power_iters,
                              trace_rel_error=s.trace_rel_error, max_probes=s.max_probes)
  r = study.robustness
  errors = robustness.corruption_errors_of(
      run, r.split, r.batch_size, split_names(r.corruptions), tuple(r.severities))
  t = study.transfer
  probe = transfer.linear_probe_of(run, name=t.name, train_split=t.train_split,
                                   test_split=t.test_split, pp=t.pp, data_dir=t.data_dir,
                                   batch_size=t.batch_size)
  summary = robustness.corruption_summary(errors)
  return {
      "curves": curves, "sharpness": sharp, "robustness": errors, "transfer": probe,
      "metrics": {
          "train_loss_auc": mean_over_steps(curves["loss_step"], curves["loss"]),
          "landscape_loss_range": float(np.mean(curves["loss_range"] or [np.nan])),
          "landscape_grad_change": float(np.mean(curves["grad_change"] or [np.nan])),
          "top_eigenvalue": sharp["top_eigenvalue"], "hessian_trace": sharp["trace"],
          "mean_corruption_error": summary["mean_corruption_error"],
          "transfer_top1": probe["top1"], "eval_top1": curves["eval_top1"][-1],
          "train_seconds": curves["wall_time"][-1]}}


def _load(path: str) -> dict | None:
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError:  # a damaged file: measured again
    return None


def study_run(study: ml_collections.ConfigDict, workdir: str, head: str, seed: int) -> dict:
  """Trains (or resumes, or reuses) one run and measures it (or reuses its measurements
  if the settings they depend on are unchanged)."""
  config = run_config(study, head, seed)
  run_dir = os.path.join(workdir, "runs", run_name(head, seed))
  path = os.path.join(run_dir, RUN_FILE)
  settings = _settings(study, config)
  saved = _load(path)
  if saved is not None and saved["settings"] == settings:
    return {**saved, "curves": curves_of(run_dir)}  # the log's curves: cheap to read again
  try:
    train.train_and_evaluate(config, run_dir, probe=landscape.training_probe)
  except workdir_lib.ConfigChanged as e:
    raise workdir_lib.ConfigChanged(
        f"{e}\n{run_dir} belongs to a study with another config (for example --quick "
        "against a full study): give this study its own --workdir") from None
  result = {"head": head, "seed": seed, "settings": settings, **measure(run_dir, study)}
  workdir_lib.write_atomic(path, json.dumps(result, indent=1))
  return result


# ---------------------------------------------------------------------------------------
# The study


def epochs_to(curves: dict, target: float) -> tuple[float, float]:
  """(epoch, step) of the first evaluation at or above `target` (NaN if none)."""
  for epoch, step, top1 in zip(curves["epoch"], curves["step"], curves["eval_top1"]):
    if top1 >= target:
      return float(epoch), float(step)
  return float("nan"), float("nan")


def summarize(study: ml_collections.ConfigDict, results: list[dict]) -> dict:
  """`study.json`'s content from the per-run results: the cross-run numbers (epochs to the
  best, mCE), per-head summaries and the verdicts."""
  heads, base = heads_of(study), study.baseline
  by_run = {(r["head"], r["seed"]): r for r in results}
  seeds = sorted({r["seed"] for r in results})
  best = max(max(r["curves"]["eval_top1"]) for r in results)
  for r in results:
    for f in study.fractions:
      epoch, step = epochs_to(r["curves"], f * best)
      r["metrics"][f"epochs_to_{f:g}"] = epoch
      r["metrics"][f"steps_to_{f:g}"] = step
    baseline = by_run.get((base, r["seed"]))
    if baseline is not None:
      ce = robustness.corruption_summary(r["robustness"], baseline["robustness"])
      r["metrics"].update(mce=ce["mce"], relative_mce=ce["relative_mce"])
      r["ce"] = ce["ce"]
  metrics = metrics_of(study.fractions)
  per_head = {}
  for head in heads:
    values = {m: [by_run[head, s]["metrics"].get(m, math.nan) if (head, s) in by_run
                  else math.nan for s in seeds]
              for m in [*(x.key for x in metrics), "train_seconds",
                        *(f"steps_to_{f:g}" for f in study.fractions)]}
    per_head[head] = {m: stats.summary(v) for m, v in values.items()}
    per_head[head]["trace_significant"] = [
        by_run[head, s]["sharpness"]["trace_significant"] for s in seeds
        if (head, s) in by_run]
  verdicts = {}
  for head in heads:
    if head == base:
      continue
    verdicts[head] = {}
    for m in metrics:
      mine = per_head[head][m.key]["values"]
      theirs = None if m.null is not None else per_head[base][m.key]["values"]
      verdicts[head][m.key] = stats.verdict(mine, theirs, lower_is_better=m.lower_is_better,
                                            null=m.null or 0.0)
  return {"heads": heads, "baseline": base, "seeds": seeds, "best_eval_top1": best,
          "claims": list(CLAIMS),
          "metrics": [dataclasses.asdict(m) for m in metrics],
          "per_head": per_head, "verdicts": verdicts,
          "runs": {run_name(r["head"], r["seed"]): r for r in results},
          "settings": {"fractions": list(study.fractions), "seeds": study.seeds,
                       "num_epochs": study.num_epochs,
                       "landscape_every_steps": study.landscape_every_steps,
                       "sharpness": study.sharpness.to_dict(),
                       "robustness": json.loads(json.dumps(study.robustness.to_dict(),
                                                           default=list)),
                       "transfer": study.transfer.to_dict()}}


def _cell(s: dict) -> str:
  if not math.isfinite(s["mean"]):
    return "n/a"
  if s["stderr"] is None:
    return f"{s['mean']:.4g}"
  return f"{s['mean']:.4g} ± {s['stderr']:.2g}"


def _verdict_cell(v: dict, null: float | None) -> str:
  """The verdict with the tested mean and its 95% interval: of the difference from the
  baseline (signed), or of the values themselves against `null`."""
  d = v["difference"]
  if d["n"] < 2:
    return f"{v['verdict']} (n = {d['n']})"
  low, high = d["interval"]
  if null is not None:
    return f"{v['verdict']} ({d['mean']:.3g}, [{low:.3g}, {high:.3g}] against {null:g})"
  return f"{v['verdict']} ({d['mean']:+.3g}, [{low:+.3g}, {high:+.3g}])"


def trace_note(name: str, sharp: dict) -> str:
  """What study.md says about a run's Hutchinson trace when it is not significant or its
  probes ran out before the error target ('' otherwise)."""
  problems = []
  if not sharp["trace_significant"]:
    problems.append("not significant (its 95% interval includes zero)")
  stderr, target = sharp["trace_stderr"], sharp["trace_rel_error"]
  if sharp["trace_stopped_by"] == "probe cap" and target is not None and stderr is not None:
    relative = stderr / abs(sharp["trace"]) if sharp["trace"] else math.inf
    if relative > target:
      problems.append(f"error target missed: {sharp['trace_probes']} probes left a standard "
                      f"error of {100 * relative:.0f}% of the estimate (target "
                      f"{100 * target:.0f}%)")
  return f"{name}: {sharp['trace']:.4g} ± {stderr or math.nan:.2g}, " + "; ".join(
      problems) if problems else ""


def markdown(summary: dict, command: str = "") -> str:
  """`study.md`: the claims table, then every measurement."""
  heads, base = summary["heads"], summary["baseline"]
  others = [h for h in heads if h != base]
  metrics = summary["metrics"]
  seeds = summary["seeds"]
  lines = [f"# Study: {base} against {', '.join(others)}", ""]
  if command:
    lines += [f"`{command}`", ""]
  lines += [f"Seeds: {', '.join(map(str, seeds))}. Values: mean ± standard error over seeds. "
            "Verdict: a paired t-test over seeds of head − baseline (mCE: a one-sample test "
            "against the baseline's 1), 95% interval in brackets; \"holds\" when the interval "
            "lies on the side the claim predicts, \"reversed\" on the other side, \"not "
            "significant\" when it contains no difference or there is one seed.", ""]

  def table(rows):
    head = ["claim", "measure", *heads, *(f"{h} vs {base}" for h in others)]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in rows:
      direction = "lower" if m["lower_is_better"] else "higher"
      cells = [m["claim"], f"{m['description']} ({direction} is better)",
               *(_cell(summary["per_head"][h][m["key"]]) for h in heads),
               *(_verdict_cell(summary["verdicts"][h][m["key"]], m["null"]) for h in others)]
      out.append("| " + " | ".join(cells) + " |")
    return out
  lines += ["## The claims", "", *table([m for m in metrics if m["primary"]]), ""]
  lines += ["## Every measurement", "", *table(metrics), ""]
  notes = [trace_note(name, run["sharpness"]) for name, run in summary["runs"].items()]
  notes = [n for n in notes if n]
  if notes:
    lines += ["Hessian traces (Hutchinson) to read with care:", "",
              *(f"- {n}" for n in notes), ""]
  seconds = {h: summary["per_head"][h]["train_seconds"]["mean"] for h in heads}
  lines += ["Training time per run (s, mean): " +
            ", ".join(f"{h} {t:.0f}" for h, t in seconds.items()) + ".", ""]
  return "\n".join(lines)


def write_outputs(summary: dict, workdir: str, command: str = "") -> None:
  workdir_lib.write_atomic(os.path.join(workdir, "study.json"),
                           json.dumps(summary, indent=1, allow_nan=True))
  workdir_lib.write_atomic(os.path.join(workdir, "study.md"), markdown(summary, command))
  figures = {"curves": plots.plot_study_curves, "landscape": plots.plot_study_landscape,
             "sharpness": plots.plot_study_sharpness,
             "robustness": plots.plot_study_robustness}
  for name, plot in figures.items():
    plots.save(plot(summary), os.path.join(workdir, f"{name}.png"))


def run_study(study: ml_collections.ConfigDict, workdir: str, *, quick: bool = False,
              command: str = "") -> dict:
  """Runs (or resumes) the study in `workdir` and writes its outputs; returns the summary
  (`study.json`'s content)."""
  study = resolve(study, quick)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  plan = [(head, seed) for seed in range(study.seeds) for head in heads_of(study)]
  results, started, done_here = [], time.time(), 0
  for i, (head, seed) in enumerate(plan):
    left = len(plan) - i
    eta = ("" if not done_here else
           f", about {(time.time() - started) / done_here * left / 60:.0f} min left")
    reporting.info(f"study [{i + 1}/{len(plan)}] {head} seed {seed}{eta}")
    reused = os.path.exists(os.path.join(workdir, "runs", run_name(head, seed), RUN_FILE))
    result = study_run(study, workdir, head, seed)
    results.append(result)
    if not reused:
      done_here += 1
  summary = summarize(study, results)
  write_outputs(summary, workdir, command)
  reporting.info(f"wrote study.json, study.md and {', '.join(f + '.png' for f in FIGURES)} "
                 f"to {workdir}")
  return summary
