"""Training-step throughput: ResNet-50 + iSQRT-COV (d = 256, 224 px) in JAX against the same
model in PyTorch, on this machine, in this process.

Ours: `gcp.train.make_train_step` (forward, backward, SGD with momentum and weight decay,
BatchNorm updates; jitted, buffers donated) on one device. PyTorch: the reference model of
tests/references/torch_resnet.py (torchvision layout, layer_reduce / layer_reduce_bn, the
release's Covpool / Sqrtm / Triuvec with their hand-written backward) with torch.optim.SGD.
Same batch, float32, label-smoothed cross-entropy in both.

  python benchmarks/train_step.py [--batch 8] [--repeats 5] [--threads 2] [--size 224]

Prints images/s of each and the ratio ours / PyTorch (higher is better).
"""
import argparse
import os
import platform
import sys

import numpy as np

from timing import median_seconds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch(batch: int, size: int):
  rng = np.random.default_rng(0)
  return (rng.normal(size=(batch, size, size, 3)).astype(np.float32),
          rng.integers(0, 1000, batch).astype(np.int32))


def jax_step(batch: int, size: int):
  import jax
  import optax
  from gcp import train
  from gcp.models import create_model
  model = create_model("resnet50", head="isqrt", num_classes=1000, reduction_dim=256)
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
  return run


def torch_step(batch: int, size: int):
  import torch
  sys.path.insert(0, os.path.join(ROOT, "tests"))
  from references import torch_resnet
  model = torch_resnet.ResNet("resnet50", "isqrt", dim=256, num_classes=1000).train()
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  args = parser.parse_args()
  os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as main.py: jaxlib's eigh
  import jax
  import torch
  from tqdm import tqdm
  torch.set_num_threads(args.threads)
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; torch {torch.__version__} "
        f"({args.threads} threads); batch {args.batch} at {args.size} px; median of "
        f"{args.repeats}")
  rates = {}
  for name, make in tqdm([("PyTorch", torch_step), ("ours (JAX)", jax_step)], desc="models"):
    rates[name] = args.batch / median_seconds(make(args.batch, args.size), args.repeats)
  print(f"\n{'implementation':>14} {'images/s':>9} {'ratio':>6}")
  for name, rate in rates.items():
    print(f"{name:>14} {rate:9.2f} {rate / rates['PyTorch']:6.2f}")


if __name__ == "__main__":
  sys.path.insert(0, ROOT)
  main()
