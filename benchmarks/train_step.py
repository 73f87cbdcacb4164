"""Training-step throughput: ResNet-50 GAP and ResNet-50 + iSQRT-COV (d = 256) at 224 px in
JAX against the same models in PyTorch, on this machine, in one run.

Ours: `gcp.train.make_train_step` (forward, backward, SGD with momentum and weight decay,
BatchNorm updates; jitted, buffers donated) on one device, in a child process per XLA
configuration (XLA reads its flags once per process):
- `gcp defaults`: the CPU flags gcp.runtime sets (what every gcp run uses);
- `plain XLA`: XLA's own defaults (`GCP_XLA_DEFAULTS=0`);
- `defaults + FLAGS` for each `--xla-flags=FLAGS`: gcp's defaults under that `XLA_FLAGS`
  (a flag it names replaces gcp's setting of it), to try other XLA CPU options.
PyTorch: the reference models of tests/references/torch_resnet.py (torchvision layout;
iSQRT: layer_reduce / layer_reduce_bn and the release's Covpool / Sqrtm / Triuvec with
their hand-written backward) with torch.optim.SGD, using the threads PyTorch picks by
default (`--threads` to change). Same batch, float32, label-smoothed cross-entropy.

  python benchmarks/train_step.py [--batch 8 32] [--head gap isqrt] [--repeats 5]
      [--xla-flags=--xla_cpu_multi_thread_eigen=false ...]

Prints images/s of each and the ratio ours / PyTorch (higher is better), each JAX
configuration's compile + first-step time and, where ours is slower than PyTorch, where a
step of each spends its time, side by side by op category (benchmarks/step_profile.py: a
jax.profiler trace of one step of ours, a torch.profiler one of PyTorch's).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

import step_profile
from timing import median_seconds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XLA_CONFIGS = {"gcp defaults": {}, "plain XLA": {"GCP_XLA_DEFAULTS": "0"}}


def _batch(batch: int, size: int):
  rng = np.random.default_rng(0)
  return (rng.normal(size=(batch, size, size, 3)).astype(np.float32),
          rng.integers(0, 1000, batch).astype(np.int32))


def jax_step(head: str, batch: int, size: int):
  import jax
  import optax
  from gcp import train
  from gcp.models import create_model
  model = create_model("resnet50", head=head, num_classes=1000, reduction_dim=256)
  tx = optax.chain(optax.add_decayed_weights(1e-4, mask=train.weight_decay_mask),
                   optax.sgd(0.1, momentum=0.9))
  mesh = train.make_mesh(jax.devices()[:1])
  state = [train.init_state(model, tx, (size, size, 3), seed=0, mesh=mesh)]
  step = train.make_train_step(model, tx, label_smoothing=0.1)
  images, labels = _batch(batch, size)
  data = train.shard_batch({"image": images, "label": labels}, mesh)

  def run():
    state[0], metrics = step(state[0], data)
    jax.block_until_ready(metrics["loss"])

  def hlo_text() -> str:  # of the program `run` calls (jit's in-memory cache: no compile)
    return step.lower(state[0], data).compile().as_text()
  return run, hlo_text


def torch_step(head: str, batch: int, size: int):
  import torch
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  from references import torch_resnet
  model = torch_resnet.ResNet("resnet50", head, dim=256, num_classes=1000).train()
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
  loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
  images, labels = _batch(batch, size)
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  y = torch.from_numpy(labels.astype(np.int64))

  def run():
    optimizer.zero_grad()
    loss_fn(model(x), y).backward()
    optimizer.step()
  return run


def _worker(args) -> None:
  """In the child: one JAX configuration, every case; prints one JSON line per case."""
  import jax
  for head in args.head:
    for batch in args.batch:
      start = time.perf_counter()
      run, hlo_text = jax_step(head, batch, args.size)
      run()  # compiles
      first = time.perf_counter() - start
      seconds = median_seconds(run, args.repeats)
      profile = step_profile.xla_step_profile(run, hlo_text()) if args.profile else None
      print(json.dumps({"head": head, "batch": batch, "rate": batch / seconds,
                        "first_step": first, "platform": jax.devices()[0].platform,
                        "profile": profile}), flush=True)


def _jax_rates(args, env_extra: dict) -> dict:
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--size", str(args.size),
         *(["--profile"] if not env_extra else []),  # where the defaults' time goes
         "--repeats", str(args.repeats), "--head", *args.head,
         "--batch", *map(str, args.batch)]
  # The compile times are part of the result: no compilation cache in the child.
  env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false", **env_extra}
  out = subprocess.run(cmd, env=env, capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  return {(r["head"], r["batch"]): r for r in rows}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
  parser.add_argument("--head", nargs="+", default=["gap", "isqrt"])
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, help="PyTorch threads (default: its own)")
  parser.add_argument("--xla-flags", action="append", default=[], metavar="FLAGS",
                      help="also measure gcp's defaults under this XLA_FLAGS value "
                      "(repeatable; write --xla-flags=VALUE, as VALUE starts with --)")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--profile", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as main.py: jaxlib's eigh
  if args.worker:
    _worker(args)
    return
  import torch
  from tqdm import tqdm
  if args.threads:
    torch.set_num_threads(args.threads)
  import jax
  import jaxlib
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"jax {jax.__version__} / jaxlib {jaxlib.__version__}; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); {args.size} px; median of {args.repeats}")
  cases = [(h, b) for h in args.head for b in args.batch]
  torch_rates, torch_profiles = {}, {}
  for head, batch in tqdm(cases, desc="PyTorch"):
    run = torch_step(head, batch, args.size)
    torch_rates[head, batch] = batch / median_seconds(run, args.repeats)
    torch_profiles[head, batch] = step_profile.torch_step_profile(run)
  configs = {**XLA_CONFIGS, **{f"defaults + {flags}": {"XLA_FLAGS": flags}
                               for flags in args.xla_flags}}
  jax_rates = {name: _jax_rates(args, env)
               for name, env in tqdm(configs.items(), desc="JAX configurations")}
  width = max(len("ours, " + name) for name in jax_rates)
  print(f"\n{'model':>16} {'batch':>5} {'implementation':>{width}} {'images/s':>9} {'ratio':>6} "
        f"{'compile + 1st step':>19}")
  for head, batch in cases:
    model = f"ResNet-50 {'GAP' if head == 'gap' else 'iSQRT d=256'}"
    print(f"{model:>16} {batch:5d} {'PyTorch':>{width}} {torch_rates[head, batch]:9.2f} "
          f"{1:6.2f}")
    for name, rows in jax_rates.items():
      row = rows[head, batch]
      print(f"{'':>16} {'':>5} {'ours, ' + name:>{width}} {row['rate']:9.2f} "
            f"{row['rate'] / torch_rates[head, batch]:6.2f} {row['first_step']:17.1f} s")
  for head, batch in cases:
    row = jax_rates["gcp defaults"][head, batch]
    if row["rate"] < torch_rates[head, batch] and row["profile"]:
      print(f"\nwhere a step spends its time, {head}, batch {batch} (one profiled step each, "
            f"ms; ours: gcp defaults):")
      print(f"  {'op category':>36} {'PyTorch':>8} {'ours':>8} {'ours - PyTorch':>15}")
      theirs, ours = torch_profiles[head, batch], row["profile"]
      for category in step_profile.CATEGORIES:
        a, b = theirs.get(category, 0.0), ours.get(category, 0.0)
        if a or b:
          print(f"  {category:>36} {a:8.0f} {b:8.0f} {b - a:+15.0f}")
      a, b = sum(theirs.values()), sum(ours.values())
      print(f"  {'step':>36} {a:8.0f} {b:8.0f} {b - a:+15.0f}")

if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  main()
