"""Uncertainty of the analyses' numbers: standard errors, 95% intervals (Student's t), and
the verdict of a claim "A is better than B" from paired samples (e.g. one per seed).

An estimate is *significant* when its 95% interval excludes zero (or the value a
comparison is made against).
"""
import math

import numpy as np
from scipy import stats as scipy_stats

LEVEL = 0.95
HOLDS, REVERSED, NOT_SIGNIFICANT = "holds", "reversed", "not significant"


def t_quantile(n: int, level: float = LEVEL) -> float:
  """The two-sided `level` quantile of Student's t with n - 1 degrees of freedom (n >= 2)."""
  return float(scipy_stats.t.ppf(0.5 + level / 2, n - 1))


def interval(mean: float, stderr: float | None, n: int, level: float = LEVEL) -> list:
  """`[low, high]`, the `level` t-interval of a mean of n samples with standard error
  `stderr`; `[nan, nan]` when it is undefined (n < 2 or no standard error)."""
  if stderr is None or n < 2 or not math.isfinite(stderr):
    return [float("nan"), float("nan")]
  half = t_quantile(n, level) * stderr
  return [float(mean - half), float(mean + half)]


def excludes(bounds, value: float = 0.0) -> bool:
  """Whether an interval lies entirely on one side of `value` (False if undefined)."""
  low, high = bounds
  return bool(low > value or high < value)


def summary(values, level: float = LEVEL) -> dict:
  """`mean`, `stderr` (sample std / sqrt(n); None for n < 2), `interval` (`level`
  t-interval), `n`, and `values` of finite samples (NaNs, e.g. an unreached target, are
  dropped and counted in `missing`)."""
  values = [float(v) for v in values]
  finite = [v for v in values if math.isfinite(v)]
  n = len(finite)
  mean = float(np.mean(finite)) if finite else float("nan")
  stderr = float(np.std(finite, ddof=1) / math.sqrt(n)) if n > 1 else None
  return {"mean": mean, "stderr": stderr, "interval": interval(mean, stderr, n, level),
          "n": n, "missing": len(values) - n, "values": values}


def verdict(candidate, baseline, *, lower_is_better: bool, null: float = 0.0,
            level: float = LEVEL) -> dict:
  """Whether `candidate` beats `baseline` (paired samples, e.g. per seed): a paired t-test
  on the differences candidate - baseline against `null`, at `level`.

  With `baseline=None` the candidate's own values are tested against `null` (e.g. an mCE
  against the baseline's 1).

  Returns:
    `verdict`: "holds" (the interval lies on the better side of `null`), "reversed" (on the
    worse side) or "not significant" (it contains `null`, or fewer than 2 pairs); with
    `difference` (`summary` of the differences or values), `test` (what was tested).
  """
  candidate = np.asarray(candidate, np.float64)
  if baseline is None:
    diffs, test = candidate, f"one-sample t-test against {null:g}"
  else:
    baseline = np.asarray(baseline, np.float64)
    if candidate.shape != baseline.shape:
      raise ValueError(f"paired samples differ in number: {candidate.shape} vs "
                       f"{baseline.shape}")
    diffs, test = candidate - baseline, "paired t-test on per-seed differences"
  keep = np.isfinite(diffs)
  d = summary(diffs[keep], level)
  d["missing"] = int((~keep).sum())
  low, high = d["interval"]
  better_side = (high < null) if lower_is_better else (low > null)
  worse_side = (low > null) if lower_is_better else (high < null)
  result = HOLDS if better_side else REVERSED if worse_side else NOT_SIGNIFICANT
  return {"verdict": result, "difference": d,
          "test": f"{test}, {round(100 * level)}% interval, n = {d['n']}"}
