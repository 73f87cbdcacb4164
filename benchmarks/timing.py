"""Shared by the benchmark scripts (run as `python benchmarks/<name>.py`)."""
import time

import numpy as np


def median_seconds(step, repeats: int) -> float:
  """Median wall time of `step()` over `repeats` calls, after one warm-up (compile) call."""
  step()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return float(np.median(times))
