"""Analyse a trained run: JSON and PNG plots in WORKDIR/analysis/.

  python -m gcp.analysis runs/default                        # everything but robustness
  python -m gcp.analysis runs/default --analyses robustness --baseline runs/gap
  python -m gcp.analysis runs/default --compare runs/gap     # training curves side by side

Analyses: diagnostics (covariance spectrum, Newton-Schulz convergence), landscape (loss
and gradient change along the gradient at a layer), sharpness (top Hessian eigenvalue,
Hessian trace), robustness (top-1 error under 15 corruptions x 5 severities; CE and mCE
against --baseline). Robustness evaluates the whole evaluation split 76 times: choose a
smaller --robustness-split (e.g. 'validation[:5000]') on large data sets.
"""
import os

# As main.py: jaxlib's CPU eigh is faster with one OpenBLAS thread (set before it loads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

from gcp import runtime  # noqa: E402
from gcp.analysis import report  # noqa: E402
from gcp.config import split_names  # noqa: E402
from gcp.data.corruptions import CORRUPTIONS, SEVERITIES  # noqa: E402

DEFAULT = ("diagnostics", "landscape", "sharpness")


def _numbers(kind):
  def parse(text: str):
    try:
      return [kind(t) for t in split_names(text)]
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
  return parse


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m gcp.analysis",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
  parser.add_argument("workdir", help="the run to analyse (holds config.json, checkpoints/)")
  parser.add_argument("--analyses", type=split_names, default=list(DEFAULT),
                      help=f"comma-separated, of {', '.join(report.ANALYSES)} "
                      f"(default: {','.join(DEFAULT)}; with --baseline also robustness)")
  parser.add_argument("--baseline", help="workdir of the reference model for CE / mCE")
  parser.add_argument("--compare", nargs="+", default=[], metavar="WORKDIR",
                      help="plot these runs' training curves with this one's")
  parser.add_argument("--data-dir", help="TFDS data dir (default: the run's)")
  parser.add_argument("--num-batches", type=int, default=2,
                      help="batches of the fixed set (the first evaluation examples) that "
                      "diagnostics, landscape and sharpness use")
  parser.add_argument("--batch-size", type=int, default=128,
                      help="also the robustness evaluation batch (a multiple of the devices)")
  parser.add_argument("--layer", help="landscape layer (default: the head's input)")
  parser.add_argument("--etas", type=_numbers(float), help="landscape step sizes, "
                      "comma-separated after '=' (they start with a minus): "
                      "--etas=-64,-16,0,16,64 (default: gcp.analysis.landscape.DEFAULT_ETAS)")
  parser.add_argument("--power-iters", type=int, default=20,
                      help="at most this many Hessian-vector products for the top eigenvalue")
  parser.add_argument("--trace-error", type=float, default=0.1,
                      help="Hutchinson draws probes until the trace's standard error is this "
                      "fraction of it (0: exactly --max-probes)")
  parser.add_argument("--max-probes", type=int, default=100,
                      help="at most this many Hutchinson probes")
  parser.add_argument("--corruptions", type=split_names, default=list(CORRUPTIONS),
                      help="comma-separated (default: all 15)")
  parser.add_argument("--severities", type=_numbers(int), default=list(SEVERITIES),
                      help="comma-separated, of 1-5 (default: all)")
  parser.add_argument("--robustness-split", help="default: the run's evaluation split")
  parser.add_argument("--frost-dir", help="a folder of ImageNet-C's frost photos "
                      "(frost1.png ... frost5.jpg) for the exact frost (default: procedural)")
  parser.add_argument("--seed", type=int, default=0, help="sharpness's random vectors")
  args = parser.parse_args(argv)
  analyses = args.analyses
  if args.baseline and "robustness" not in analyses and args.analyses == list(DEFAULT):
    analyses = [*analyses, "robustness"]
  options = {} if args.etas is None else {"etas": args.etas}
  try:
    results = report.analyze(
        args.workdir, analyses=analyses, baseline=args.baseline, compare_with=args.compare,
        data_dir=args.data_dir, num_batches=args.num_batches, batch_size=args.batch_size,
        layer=args.layer, power_iters=args.power_iters,
        trace_rel_error=args.trace_error or None, max_probes=args.max_probes,
        corruptions=args.corruptions, severities=args.severities,
        robustness_split=args.robustness_split, frost_dir=args.frost_dir, seed=args.seed,
        **options)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(json.dumps(report.headline(results), indent=2))
  return 0


if __name__ == "__main__":
  runtime.exit_quickly(main())
