"""Speed and memory of the GCP meta-layer against the PyTorch release, on this machine.

Forward + backward of triu(isqrt_cov(x)) (`gcp.ops`, jitted `value_and_grad`, so the forward
output is materialised as in a training step: the default 'auto' and each explicit
evaluation method) and of the release's
Covpool -> Sqrtm -> Triuvec (PyTorch port with its dense M x M centring matrix and
hand-written backward, tests/references/torch_release.py), float32, same inputs, same
process for timing. The `eig` path (MPN-COV, eigendecomposition) is reported beside them.
'isqrt auto' is what the ISQRT head runs on this backend: on CPU 'gram' when M < C, else
'eigh'.
Peak memory: for PyTorch the rise of the resident set over one warmed-up call, sampled
every 0.5 ms in a fresh process (large CPU tensors are returned to the OS when freed); for
JAX the compiled program's buffers from XLA's memory analysis (arguments, outputs and
temporaries), because XLA's CPU runtime keeps freed buffers and its RSS would hide them.

  python benchmarks/meta_layer.py [--repeats 10] [--threads 2] [--lapack-threads 1]

--lapack-threads sets OPENBLAS_NUM_THREADS for the LAPACK that jaxlib's CPU eigh calls
(scipy's OpenBLAS; PyTorch does not use it). The default 1 is what main.py sets: eigh runs
once per small matrix, where more threads only add overhead.

Prints a table of times, peak memory and the ratios ours / PyTorch (lower is better).
"""
import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import threading
import time

import numpy as np

from timing import median_seconds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [(32, 256, 196), (8, 256, 784)]  # (B, C, M): 224 px and 448 px inputs, d = 256
IMPLS = ("torch_release", "isqrt auto (CPU default)", "isqrt newton_schulz", "isqrt eigh",
         "isqrt gram", "eig (MPN-COV)")


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


def _inputs(b: int, c: int, m: int):
  rng = np.random.default_rng(0)
  x = np.maximum(rng.normal(size=(b, m, c)), 0).astype(np.float32)
  return x, rng.normal(size=(b, c * (c + 1) // 2)).astype(np.float32)


def _torch_step(b: int, c: int, m: int):
  """One forward + backward of the release port on fixed random inputs."""
  import torch
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  from references import torch_release
  x, w = _inputs(b, c, m)
  xt = torch.tensor(x.transpose(0, 2, 1).copy(), requires_grad=True)
  wt = torch.tensor(w)

  def step():
    xt.grad = None
    (torch_release.meta_layer(xt, 5) * wt).sum().backward()
    return xt.grad
  return step


def _jax_step(impl: str, b: int, c: int, m: int):
  """(one synchronous forward + backward, the compiled program's buffer bytes)."""
  import jax
  import jax.numpy as jnp
  from gcp import ops
  if impl.startswith("isqrt"):
    pool = functools.partial(ops.isqrt_cov, method=impl.split()[1])
  else:
    pool = lambda f: ops.eig_power(ops.covariance(f))
  grad = jax.jit(jax.value_and_grad(lambda f, v: jnp.sum(ops.triu_vec(pool(f)) * v)))
  x, w = (jnp.asarray(a) for a in _inputs(b, c, m))
  memory = grad.lower(x, w).compile().memory_analysis()
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes +
          memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  return (lambda: jax.block_until_ready(grad(x, w))), peak


def _torch_memory_case(b, c, m, threads):
  """Runs in a fresh process: peak RSS rise of one warmed-up call."""
  _set_threads(threads)
  step = _torch_step(b, c, m)
  step()
  print(json.dumps({"peak_bytes": _peak_rss_rise(step)}))


def _set_threads(threads: int):
  import torch
  torch.set_num_threads(threads)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--lapack-threads", type=int, default=1,
                      help="OPENBLAS_NUM_THREADS for jaxlib's LAPACK (eigh)")
  parser.add_argument("--torch-memory-case", nargs=3, type=int, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.torch_memory_case:
    return _torch_memory_case(*args.torch_memory_case, args.threads)

  os.environ["OPENBLAS_NUM_THREADS"] = str(args.lapack_threads)  # before scipy loads
  _set_threads(args.threads)
  import jax
  from tqdm import tqdm
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; "
        f"torch threads {args.threads}; LAPACK threads for JAX "
        f"{args.lapack_threads}; median of {args.repeats}")
  rows = []
  cases = [(s, impl) for s in SIZES for impl in IMPLS]
  for (b, c, m), impl in tqdm(cases, desc="cases"):
    if impl == "torch_release":
      seconds = median_seconds(_torch_step(b, c, m), args.repeats)
      out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads),
                            "--torch-memory-case", str(b), str(c), str(m)],
                           capture_output=True, text=True, check=True, cwd=ROOT)
      peak = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    else:
      step, peak = _jax_step(impl, b, c, m)
      seconds = median_seconds(step, args.repeats)
    rows.append(((b, c, m), impl, seconds, peak))

  print(f"\n{'B, C, M':>14} {'implementation':>24} {'fwd+bwd ms':>11} {'peak MB':>8} "
        f"{'time ratio':>10} {'memory ratio':>12}")
  for (size, impl, seconds, peak) in rows:
    base = next(r for r in rows if r[0] == size and r[1] == "torch_release")
    print(f"{str(size):>14} {impl:>24} {1e3 * seconds:11.1f} {peak / 2**20:8.1f} "
          f"{seconds / base[2]:10.2f} {peak / max(base[3], 1):12.2f}")


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  main()
