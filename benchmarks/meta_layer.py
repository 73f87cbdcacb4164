"""Speed and memory of the GCP meta-layer against the PyTorch release, on this machine.

Forward + backward of triu(isqrt(cov(x))) (`gcp.ops`, jitted) and of the release's
Covpool -> Sqrtm -> Triuvec (PyTorch port with its dense M x M centring matrix and
hand-written backward, tests/references/torch_release.py), float32, same inputs, same
process for timing. The `eig` path (MPN-COV, eigendecomposition) is reported beside them.
Peak memory is the rise of the resident set over one call, sampled every 0.5 ms in a fresh
process per case.

  python benchmarks/meta_layer.py [--repeats 10] [--threads 2]

Prints a table of times, peak memory and the ratios ours / PyTorch (lower is better).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [(32, 256, 196), (8, 256, 784)]  # (B, C, M): 224 px and 448 px inputs, d = 256
IMPLS = ("torch_release", "gcp_isqrt", "gcp_eig")


def _rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_rise(fn) -> int:
  """Largest rise of the resident set above its level before `fn()` while it runs."""
  base, peak, done = _rss_bytes(), [0], threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], _rss_bytes())
      time.sleep(0.0005)
  thread = threading.Thread(target=sample)
  thread.start()
  fn()
  done.set()
  thread.join()
  return max(peak[0], _rss_bytes()) - base


def _make_step(impl: str, b: int, c: int, m: int):
  """A function running one forward + backward on fixed random inputs, synchronously."""
  rng = np.random.default_rng(0)
  x = np.maximum(rng.normal(size=(b, m, c)), 0).astype(np.float32)
  w = rng.normal(size=(b, c * (c + 1) // 2)).astype(np.float32)
  if impl == "torch_release":
    import torch
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from references import torch_release
    xt = torch.tensor(x.transpose(0, 2, 1).copy(), requires_grad=True)
    wt = torch.tensor(w)

    def step():
      xt.grad = None
      (torch_release.meta_layer(xt, 5) * wt).sum().backward()
      return xt.grad
    return step
  import jax
  import jax.numpy as jnp
  from gcp import ops
  norm = ops.isqrt if impl == "gcp_isqrt" else ops.eig_power
  grad = jax.jit(jax.grad(lambda f, v: jnp.sum(ops.triu_vec(norm(ops.covariance(f))) * v)))
  xj, wj = jnp.asarray(x), jnp.asarray(w)
  return lambda: grad(xj, wj).block_until_ready()


def _seconds(step, repeats: int) -> float:
  step()  # compile / warm up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _memory_case(impl, b, c, m, threads):
  """Runs in a fresh process: peak RSS rise of one warmed-up call."""
  _set_threads(threads)
  step = _make_step(impl, b, c, m)
  step()
  print(json.dumps({"peak_bytes": _peak_rss_rise(step)}))


def _set_threads(threads: int):
  import torch
  torch.set_num_threads(threads)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--memory-case", nargs=4, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.memory_case:
    impl, b, c, m = args.memory_case
    return _memory_case(impl, int(b), int(c), int(m), args.threads)

  _set_threads(args.threads)
  import jax
  from tqdm import tqdm
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; "
        f"torch threads {args.threads}; median of {args.repeats}")
  rows = []
  cases = [(s, impl) for s in SIZES for impl in IMPLS]
  for (b, c, m), impl in tqdm(cases, desc="cases"):
    seconds = _seconds(_make_step(impl, b, c, m), args.repeats)
    out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                          "--memory-case", impl, str(b), str(c), str(m)],
                         capture_output=True, text=True, check=True, cwd=ROOT)
    peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    rows.append(((b, c, m), impl, seconds, peak))

  print(f"\n{'B, C, M':>14} {'implementation':>15} {'fwd+bwd ms':>11} {'peak MB':>8} "
        f"{'time ratio':>10} {'memory ratio':>12}")
  for (size, impl, seconds, peak) in rows:
    base = next(r for r in rows if r[0] == size and r[1] == "torch_release")
    print(f"{str(size):>14} {impl:>15} {1e3 * seconds:11.1f} {peak / 2**20:8.1f} "
          f"{seconds / base[2]:10.2f} {peak / max(base[3], 1):12.2f}")


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  main()
