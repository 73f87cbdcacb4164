"""Start-up time: from launching `python main.py` to its first training step, and from
launching `python main.py --mode=eval` to its evaluation, without and with the persistent
compilation cache.

  python benchmarks/startup.py [--config configs/default.py] [--repeats 1]

Each launch is a new process with a new workdir. Rows:
- `plain`: no compilation cache and XLA's own CPU flags (`JAX_ENABLE_COMPILATION_CACHE=
  false GCP_XLA_DEFAULTS=0`): every launch before gcp.runtime existed paid this, and still
  pays it on a machine whose cache is off;
- `first launch`: gcp's defaults with an empty cache (a new experiment);
- `second launch`: the same experiment again (a resume, a re-run, an evaluation of a
  trained model), which loads its programs from the cache.
The training launch stops after its first step (time until its first line in
metrics.jsonl, with `--config.log_every_steps=1`); the evaluation launch scores the
checkpoint that stop left, to the end (the digits' test split is 2 batches of 500).
Ratios are against `plain` (lower is better). The init row compares compiling
`model.init` with JAX's default threefry keys against the rbg keys gcp.train.init_state uses.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {
    "plain": {"JAX_ENABLE_COMPILATION_CACHE": "false", "GCP_XLA_DEFAULTS": "0"},
    "first launch": {},
    "second launch": {},
}


def _first_step_seconds(args, env, workdir) -> float:
  """Launches a training run, waits for its first metrics line, then stops it with SIGTERM
  (it saves a checkpoint first, which the evaluation launch scores)."""
  metrics = os.path.join(workdir, "metrics.jsonl")
  start = time.perf_counter()
  proc = subprocess.Popen(
      [sys.executable, "main.py", f"--config={args.config}", f"--workdir={workdir}",
       "--config.log_every_steps=1"], cwd=ROOT, env=env,
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  while not (os.path.exists(metrics) and os.path.getsize(metrics)):
    if proc.poll() is not None:
      raise RuntimeError(f"main.py stopped before its first step:\n{proc.stderr.read().decode()}")
    time.sleep(0.05)
  seconds = time.perf_counter() - start
  proc.send_signal(signal.SIGTERM)
  proc.communicate(timeout=600)
  return seconds


def _eval_seconds(args, env, workdir) -> tuple[float, str]:
  start = time.perf_counter()
  out = subprocess.run(
      [sys.executable, "main.py", f"--config={args.config}", f"--workdir={workdir}",
       "--mode=eval"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  seconds = time.perf_counter() - start
  if out.returncode:
    raise RuntimeError(f"main.py --mode=eval failed:\n{out.stderr}")
  summary = next((line for line in out.stdout.splitlines()
                  if line.startswith("compilation cache")), "")
  return seconds, summary


def _init_compile_seconds() -> dict:
  """Compile time of the default model's `init` with threefry and with rbg keys."""
  import importlib.util
  import jax
  import jax.numpy as jnp
  from gcp.models import create_model
  spec = importlib.util.spec_from_file_location("default", os.path.join(ROOT, "configs",
                                                                        "default.py"))
  default = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(default)
  model = create_model(**{**default.get_config().model.to_dict(), "num_classes": 10})
  seconds = {}
  for impl in ("threefry2x32", "rbg"):
    init = jax.jit(lambda seed, impl=impl: model.init(
        jax.random.key(seed, impl=impl), jnp.zeros((1, 28, 28, 3)), train=False))
    start = time.perf_counter()
    init.lower(0).compile()
    seconds[impl] = time.perf_counter() - start
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", default="configs/default.py")
  parser.add_argument("--repeats", type=int, default=1,
                      help="launches per row (the median is shown)")
  parser.add_argument("--json", help="also write the numbers to this file")
  args = parser.parse_args()
  sys.path.insert(0, ROOT)
  rows = {}
  with tempfile.TemporaryDirectory() as tmp:
    for repeat in range(args.repeats):
      cache = os.path.join(tmp, f"cache{repeat}")   # empty for each repeat's first launch
      for name, extra in SETTINGS.items():
        env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache, **extra}
        workdir = os.path.join(tmp, f"{name.replace(' ', '_')}{repeat}")
        first_step = _first_step_seconds(args, env, workdir)
        evaluation, summary = _eval_seconds(args, env, workdir)
        rows.setdefault(name, []).append((first_step, evaluation, summary))
        print(f"{name}: first step {first_step:.1f} s, evaluation {evaluation:.1f} s; "
              f"{summary or 'compilation cache: off'}", flush=True)
  import numpy as np
  median = {name: np.median([r[:2] for r in runs], axis=0) for name, runs in rows.items()}
  print(f"\n{args.config}, median of {args.repeats} launch(es) per row")
  print(f"{'':>14} {'launch->first step':>19} {'ratio':>6} {'launch->eval done':>18} "
        f"{'ratio':>6}")
  for name, (step, evaluation) in median.items():
    print(f"{name:>14} {step:17.1f} s {step / median['plain'][0]:6.2f} "
          f"{evaluation:16.1f} s {evaluation / median['plain'][1]:6.2f}")
  os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"  # this process compiles init afresh
  init = _init_compile_seconds()
  print(f"\nmodel.init compile: threefry {init['threefry2x32']:.1f} s, rbg {init['rbg']:.1f} s "
        f"(ratio {init['rbg'] / init['threefry2x32']:.2f})")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"launches": {k: v.tolist() for k, v in median.items()},
                 "init_compile_seconds": init}, f, indent=2)


if __name__ == "__main__":
  main()
