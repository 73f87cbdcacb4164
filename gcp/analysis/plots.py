"""Figures of the analyses, one line (or bar) per model: each function takes
`{label: result}` and returns a matplotlib Figure (shown inline in a notebook, or written
with `save`). Figures are built without pyplot, so no backend is switched.
"""
import math

import numpy as np
from matplotlib.figure import Figure


def save(fig: Figure, path: str) -> str:
  fig.savefig(path, dpi=100)
  return path


def _axes(rows: int, cols: int, width: float = 5.0, height: float = 3.6):
  fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
  axes = fig.subplots(rows, cols, squeeze=False)
  return fig, axes


def _finish(axes, legend: bool = True):
  for ax in np.ravel(axes):
    ax.grid(alpha=0.3)
    if legend and ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)


def plot_comparison(comparison: dict) -> Figure:
  """`gcp.analysis.compare.compare_runs` output: loss and top-1 (train dashed, eval solid)
  against epochs (top) and wall-clock seconds (bottom)."""
  fig, axes = _axes(2, 2)
  for i, (label, curves) in enumerate(comparison.items()):
    color = f"C{i}"
    for row, x_key in enumerate(("epoch", "seconds")):
      for split, style in (("train", "--"), ("eval", "o-")):
        x = curves[x_key]
        axes[row, 0].plot(x, curves[f"{split}_loss"], style, color=color, ms=3,
                          label=f"{label} {split}")
        axes[row, 1].plot(x, 100 * np.asarray(curves[f"{split}_top1"]), style, color=color,
                          ms=3, label=f"{label} {split}")
  for row, x_label in enumerate(("epoch", "wall-clock (s)")):
    axes[row, 0].set(xlabel=x_label, ylabel="loss")
    axes[row, 1].set(xlabel=x_label, ylabel="top-1 (%)")
  _finish(axes)
  return fig


def plot_landscape(results: dict) -> Figure:
  """`gradient_landscape` outputs: loss and gradient change against the step size."""
  fig, axes = _axes(1, 2)
  for label, r in results.items():
    axes[0, 0].plot(r["eta"], r["loss"], "o-", ms=3, label=label)
    axes[0, 1].plot(r["eta"], r["grad_change"], "o-", ms=3,
                    label=f"{label} (|g| = {r['grad_norm']:.3g})")
  layers = sorted({r["layer"] for r in results.values()})
  axes[0, 0].set(xlabel="eta", ylabel="loss at y + eta g",
                 title=f"loss along the gradient at {', '.join(layers)}")
  axes[0, 1].set(xlabel="eta", ylabel="||g(y + eta g) - g||",
                 title="gradient predictiveness (lower: more predictive)")
  _finish(axes)
  return fig


def plot_sharpness(results: dict) -> Figure:
  """`sharpness` outputs: power-iteration estimates, and top eigenvalue and trace bars."""
  fig, axes = _axes(1, 3, width=4.2)
  labels = list(results)
  for label, r in results.items():
    axes[0, 0].plot(np.arange(1, len(r["power_iteration"]) + 1), r["power_iteration"],
                    "o-", ms=3, label=label)
  axes[0, 0].set(xlabel="Hessian-vector products", ylabel="Rayleigh quotient",
                 title="power iteration")
  colors = [f"C{i}" for i in range(len(labels))]
  axes[0, 1].bar(labels, [results[k]["top_eigenvalue"] for k in labels], color=colors)
  axes[0, 1].set(title="top Hessian eigenvalue")
  errors = [results[k]["trace_stderr"] or 0.0 for k in labels]
  bars = axes[0, 2].bar(labels, [results[k]["trace"] for k in labels], yerr=errors,
                        color=colors, capsize=4)
  for bar, label in zip(bars, labels):
    if not results[label].get("trace_significant", True):  # results from before the flag
      bar.set_hatch("//")
      bar.set_alpha(0.5)
      axes[0, 2].annotate("not significant", (bar.get_x() + bar.get_width() / 2, 0),
                          ha="center", va="bottom", fontsize=8, color="C3")
  axes[0, 2].axhline(0, color="k", lw=0.5)
  axes[0, 2].set(title="Hessian trace (Hutchinson, +- 1 s.e.)")
  _finish(axes)
  return fig


def plot_robustness(results: dict) -> Figure:
  """`corruption_errors` outputs: top-1 error against severity, one panel per corruption
  (severity 0: clean)."""
  names = list(next(iter(results.values()))["errors"])
  cols = min(5, len(names))
  rows = math.ceil(len(names) / cols)
  fig, axes = _axes(rows, cols, width=3.0, height=2.5)
  for i, name in enumerate(names):
    ax = axes[i // cols, i % cols]
    for label, r in results.items():
      ax.plot([0, *r["severities"]], 100 * np.asarray([r["clean_error"], *r["errors"][name]]),
              "o-", ms=3, label=label)
    ax.set_title(name, fontsize=9)
    ax.set(xlabel="severity", ylabel="top-1 error (%)")
  for j in range(len(names), rows * cols):
    axes[j // cols, j % cols].set_visible(False)
  _finish(axes[:1, :1])
  _finish(axes, legend=False)
  return fig


def plot_diagnostics(results: dict) -> Figure:
  """`diagnostics` outputs: the normalised covariance spectrum, and the Newton-Schulz
  residual and distance from the exact square root per iteration."""
  fig, axes = _axes(1, 2)
  for i, (label, r) in enumerate(results.items()):
    spec = r["spectrum"]
    axes[0, 0].semilogy(np.arange(1, spec["dim"] + 1),
                        np.maximum(spec["normalized"], 1e-12), color=f"C{i}",
                        label=f"{label} (eff. rank {spec['effective_rank']:.1f} of "
                              f"{spec['dim']})")
    ns = r["newton_schulz"]
    axes[0, 1].semilogy(ns["iterations"], ns["residual"], "o-", ms=3, color=f"C{i}",
                        label=f"{label}: ||Y_k^2 - S|| / ||S||")
    axes[0, 1].semilogy(ns["iterations"], ns["sqrt_error"], "s--", ms=3, color=f"C{i}",
                        label=f"{label}: ||Y_k - sqrt(S)|| / ||sqrt(S)||")
    axes[0, 1].axvline(r["num_iters"], color=f"C{i}", alpha=0.3)
  axes[0, 0].set(xlabel="index", ylabel="eigenvalue / trace",
                 title="spectrum of the pooled covariance")
  axes[0, 1].set(xlabel="Newton-Schulz iterations k", ylabel="relative error",
                 title="iSQRT convergence (line: the model's N)")
  _finish(axes)
  return fig


def plot_corrupted(images: dict) -> Figure:
  """`{corruption: [image per severity]}` (uint8-range `[H, W, C]` arrays) as a grid."""
  names = list(images)
  cols = max(len(v) for v in images.values())
  fig, axes = _axes(len(names), cols, width=1.3, height=1.3)
  for i, name in enumerate(names):
    for j in range(cols):
      ax = axes[i, j]
      ax.set_xticks([])
      ax.set_yticks([])
      if j < len(images[name]):
        image = np.clip(np.asarray(images[name][j]), 0, 255).astype(np.uint8)
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0,
                  vmax=255)
      if j == 0:
        ax.set_ylabel(name, fontsize=7)
  return fig


# Figures of a study (`gcp.analysis.study`): each takes `study.json`'s content, one colour
# per head, lines for the mean over seeds and bands from the lowest to the highest seed.


def _study_runs(summary: dict, head: str) -> list[dict]:
  return [r for r in summary["runs"].values() if r["head"] == head]


def _band(ax, runs: list[dict], x_key: str, y_key: str, color: str, label: str,
          scale: float = 1.0):
  n = min(len(r["curves"][y_key]) for r in runs)
  if n == 0:
    return
  x = np.asarray(runs[0]["curves"][x_key][:n])
  y = scale * np.asarray([r["curves"][y_key][:n] for r in runs], np.float64)
  ax.plot(x, y.mean(0), color=color, label=f"{label} (n = {len(runs)})")
  if len(runs) > 1:
    ax.fill_between(x, y.min(0), y.max(0), color=color, alpha=0.2)


def _study_panels(summary: dict, panels) -> Figure:
  """One panel per `(x_key, y_key, scale, axes labels)` of the runs' curves, one band per
  head."""
  fig, axes = _axes(1, len(panels))
  for i, head in enumerate(summary["heads"]):
    runs = _study_runs(summary, head)
    for ax, (x_key, y_key, scale, _) in zip(axes[0], panels):
      _band(ax, runs, x_key, y_key, f"C{i}", head, scale)
  for ax, (*_, labels) in zip(axes[0], panels):
    ax.set(**labels)
  _finish(axes)
  return fig


def plot_study_curves(summary: dict) -> Figure:
  """Training loss (per logged step) and eval top-1 against epochs, per head, with seed
  bands."""
  return _study_panels(summary, [
      ("loss_epoch", "loss", 1.0, dict(xlabel="epoch", ylabel="training loss",
                                       title="training loss")),
      ("epoch", "eval_top1", 100.0, dict(xlabel="epoch", ylabel="eval top-1 (%)",
                                         title="evaluation accuracy"))])


def plot_study_landscape(summary: dict) -> Figure:
  """The loss landscape during training, as the GCP optimisation paper's panel: the range
  of the loss and the largest gradient change along the gradient, per step, per head."""
  return _study_panels(summary, [
      ("landscape_step", "loss_range", 1.0, dict(
          xlabel="step", ylabel="max - min loss along the gradient",
          title="loss landscape (lower: smoother)")),
      ("landscape_step", "grad_change", 1.0, dict(
          xlabel="step", ylabel="max gradient change along the gradient",
          title="gradient predictiveness (lower: more predictive)"))])


def _mean_bars(ax, summary: dict, key: str, title: str):
  heads = summary["heads"]
  stats = [summary["per_head"][h][key] for h in heads]
  means = [s["mean"] for s in stats]
  half = [(s["interval"][1] - s["mean"]) if np.isfinite(s["interval"][1]) else 0.0
          for s in stats]
  ax.bar(heads, means, yerr=half, capsize=4, color=[f"C{i}" for i in range(len(heads))])
  for i, head in enumerate(heads):
    values = [v for v in stats[i]["values"] if np.isfinite(v)]
    ax.plot([i] * len(values), values, "k.", ms=4)
  ax.axhline(0, color="k", lw=0.5)
  ax.set(title=title)


def plot_study_sharpness(summary: dict) -> Figure:
  """Top Hessian eigenvalue and Hessian trace per head: mean over seeds, 95% interval,
  dots per seed; a head with a trace that is not significant in some seed is labelled."""
  fig, axes = _axes(1, 2, width=4.5)
  _mean_bars(axes[0, 0], summary, "top_eigenvalue", "top Hessian eigenvalue")
  _mean_bars(axes[0, 1], summary, "hessian_trace", "Hessian trace (Hutchinson)")
  for i, head in enumerate(summary["heads"]):
    flags = summary["per_head"][head]["trace_significant"]
    if not all(flags):
      axes[0, 1].annotate(f"{flags.count(False)} seed(s)\nnot significant", (i, 0),
                          ha="center", va="bottom", fontsize=7, color="C3")
  fig.suptitle("flatness at the end of training (mean, 95% interval over seeds)")
  _finish(axes, legend=False)
  return fig


def plot_study_robustness(summary: dict) -> Figure:
  """Corruption error relative to the baseline (CE, baseline = 1) per corruption family
  and head: mean over the family's corruptions and the seeds, min-max over seeds."""
  from gcp.data.corruptions import FAMILIES
  fig, axes = _axes(1, 1, width=7.0)
  ax = axes[0, 0]
  heads = summary["heads"]
  width = 0.8 / len(heads)
  families = [f for f, names in FAMILIES.items()
              if any(n in r.get("ce", {}) for r in summary["runs"].values() for n in names)]
  for i, head in enumerate(heads):
    per_seed = np.asarray([[np.nanmean([r["ce"][n] for n in FAMILIES[f] if n in r["ce"]])
                            for f in families] for r in _study_runs(summary, head)
                           if "ce" in r], np.float64).reshape(-1, len(families))
    if not len(per_seed):
      continue
    x = np.arange(len(families)) + (i - (len(heads) - 1) / 2) * width
    mean = per_seed.mean(0)
    ax.bar(x, mean, width, yerr=[mean - per_seed.min(0), per_seed.max(0) - mean],
           capsize=3, color=f"C{i}", label=head)
  ax.axhline(1.0, color="k", lw=0.5)
  ax.set_xticks(np.arange(len(families)), families)
  ax.set(ylabel=f"CE (baseline {summary['baseline']} = 1; lower: more robust)",
         title="corruption error per family")
  _finish(axes)
  return fig
