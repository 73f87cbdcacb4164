"""`analyze()`: every analysis of one trained run, written as JSON and PNG into
`WORKDIR/analysis/` (the function behind `python -m gcp.analysis`)."""
import json
import os

from gcp import reporting
from gcp.analysis import (compare, diagnostics, landscape, plots, robustness, runs,
                          sharpness)
from gcp.data.corruptions import CORRUPTIONS, SEVERITIES

ANALYSES = ("diagnostics", "landscape", "sharpness", "robustness")


def _write(out_dir: str, name: str, result: dict, figure) -> None:
  with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
    json.dump(result, f, indent=2)
  plots.save(figure, os.path.join(out_dir, f"{name}.png"))


def analyze(workdir: str, *, analyses=ANALYSES, baseline: str | None = None,
            compare_with=(), data_dir: str | None = None, num_batches: int = 2,
            batch_size: int = 128, layer: str | None = None, etas=landscape.DEFAULT_ETAS,
            power_iters: int = 20, trace_rel_error: float | None = 0.1,
            max_probes: int = 100, corruptions=CORRUPTIONS,
            severities=SEVERITIES, robustness_split: str | None = None,
            frost_dir: str | None = None, seed: int = 0, out_dir: str | None = None) -> dict:
  """Runs `analyses` on the latest checkpoint of the run in `workdir` and writes
  `<name>.json` and `<name>.png` for each into `out_dir` (default `workdir/analysis`).

  Args:
    workdir: a run trained with main.py / `gcp.train.train_and_evaluate`.
    analyses: any of `ANALYSES`: `diagnostics` (covariance spectrum, Newton-Schulz),
      `landscape` (loss along the gradient at `layer`), `sharpness` (top Hessian eigenvalue,
      Hutchinson trace), `robustness` (corruption errors; CE and mCE against `baseline`).
    baseline: workdir of the reference model for CE / mCE (e.g. the GAP run), evaluated
      under the same corruptions.
    compare_with: further workdirs whose training curves are plotted with this run's
      (`compare.json` / `compare.png`).
    data_dir: TFDS data directory, if not the one the run was trained with.
    num_batches, batch_size: the fixed batch set of diagnostics, landscape and sharpness
      (the first examples of the evaluation split); `batch_size` also batches robustness
      evaluation (divisible by the device count).
    layer, etas: landscape layer (default: the head's input) and step sizes.
    power_iters, trace_rel_error, max_probes, seed: sharpness settings (Hutchinson draws
      probes until its standard error is `trace_rel_error` of the trace, or
      `max_probes`).
    corruptions, severities, robustness_split: robustness settings (default split: the
      run's evaluation split).
    frost_dir: a folder of ImageNet-C's frost photos for robustness's frost (default: the
      procedural texture).

  Returns:
    `{analysis name: result}` as written.
  """
  unknown = sorted(set(analyses) - set(ANALYSES))
  if unknown:
    raise ValueError(f"unknown analyses {unknown}; valid: {', '.join(ANALYSES)}")
  run = runs.load_run(workdir, data_dir=data_dir)
  out_dir = out_dir or os.path.join(run.workdir, "analysis")
  os.makedirs(out_dir, exist_ok=True)
  results = {}
  label = run.label
  batches = []
  if {"diagnostics", "landscape", "sharpness"} & set(analyses):
    batches = runs.fixed_batches(run, num_batches=num_batches, batch_size=batch_size)
  if "diagnostics" in analyses:
    results["diagnostics"] = diagnostics.diagnostics(
        run.model, run.variables, batches, num_iters=run.spec.get("num_iters", 5))
    _write(out_dir, "diagnostics", results["diagnostics"],
           plots.plot_diagnostics({label: results["diagnostics"]}))
  if "landscape" in analyses:
    results["landscape"] = landscape.gradient_landscape(run.model, run.variables, batches,
                                                        layer=layer, etas=etas)
    _write(out_dir, "landscape", results["landscape"],
           plots.plot_landscape({label: results["landscape"]}))
  if "sharpness" in analyses:
    results["sharpness"] = sharpness.sharpness(run.model, run.variables, batches,
                                               num_iters=power_iters,
                                               trace_rel_error=trace_rel_error,
                                               max_probes=max_probes, seed=seed)
    _write(out_dir, "sharpness", results["sharpness"],
           plots.plot_sharpness({label: results["sharpness"]}))
  if "robustness" in analyses:
    settings = (robustness_split, batch_size, corruptions, severities, frost_dir)
    errors = robustness.corruption_errors_of(run, *settings)
    curves = {label: errors}
    base = None
    if baseline:
      base_run = runs.load_run(baseline, data_dir=data_dir)
      base = robustness.corruption_errors_of(base_run, *settings)
      curves[f"{base_run.label} (baseline)"] = base
    results["robustness"] = {"errors": errors, "baseline": base,
                             "summary": robustness.corruption_summary(errors, base)}
    _write(out_dir, "robustness", results["robustness"], plots.plot_robustness(curves))
  if compare_with:
    results["compare"] = compare.compare_runs([run.workdir, *compare_with])
    _write(out_dir, "compare", results["compare"], plots.plot_comparison(results["compare"]))
  reporting.info(f"wrote {', '.join(sorted(results))} (JSON and PNG) to {out_dir}")
  return results


def headline(results: dict) -> dict:
  """The few numbers of `analyze`'s results worth printing."""
  keys = {"diagnostics": ("examples", "samples_per_image", "isqrt_error"),
          "landscape": ("layer", "grad_norm", "loss_range", "grad_change_max"),
          "sharpness": ("top_eigenvalue", "converged", "trace", "trace_stderr",
                        "trace_interval", "trace_significant", "trace_probes",
                        "trace_stopped_by")}
  out = {name: {k: results[name][k] for k in ks} for name, ks in keys.items()
         if name in results}
  if "diagnostics" in results:
    spectrum = results["diagnostics"]["spectrum"]
    out["diagnostics"].update(effective_rank=spectrum["effective_rank"], dim=spectrum["dim"])
  if "robustness" in results:
    summary = results["robustness"]["summary"]
    out["robustness"] = {k: summary[k] for k in ("clean_error", "mean_corruption_error",
                                                 "mce", "relative_mce", "corruptions",
                                                 "frost") if k in summary}
  if "compare" in results:
    out["compare"] = {label: {k: r["final"][k] for k in ("epoch", "seconds", "eval_top1")}
                      for label, r in results["compare"].items()}
  return out
