"""GPU benchmark: training throughput, the iSQRT meta-layer, input-pipeline cores, memory.

On every device of this machine (data-parallel, `gcp.train`'s 1-D `data` mesh):
1. training images/s of ResNet-50 GAP and ResNet-50 + iSQRT (d = 128, 256) at 224 px,
   `--batch` (256) images per device, backbone in bfloat16 and in float32: one
   `gcp.train.make_train_step` step (forward, backward, SGD with momentum and weight decay,
   BatchNorm updates), median of `--repeats` steps after a warm-up step;
2. the iSQRT meta-layer alone on one device: forward + backward of triu(isqrt_cov(x)) in
   float32 (as benchmarks/meta_layer.py) by Newton-Schulz matmuls and by eigh, at the
   shape the head sees in one device's step ([B, M, d], M = H*W of the last stage: 14 x 14
   at 224 px, the second-order heads keep layer4 at stride 1), with its share of the step;
3. the training input pipeline (benchmarks/input_pipeline.py's synthetic 500 x 375 JPEGs,
   inception crop 224 + flip + normalise) in images per host-core second, and the host
   cores it needs to feed the fastest training rate of 1.;
4. memory per device of each training step: the allocator's peak (`memory_stats()`) where
   the backend keeps one (GPUs) and the row raised it, else XLA's buffer assignment of the
   compiled step (arguments + outputs + temporaries - donated aliases); the table says
   which. A row that runs out of memory is reported as such (try a smaller `--batch`).
Compiles are timed apart from the steps (a warm compilation cache makes them short).

  python benchmarks/gpu.py [--batch 256] [--repeats 10] [--json PATH] [--smoke]

`--smoke` runs every path at toy sizes (ResNet-18 at 32 px, 8 channels wide, 2 images per
device, d = 16): 45-60 s on the 2-core development CPU, mostly compiling, and 22-30 s with
the compilation cache warm; its numbers mean nothing. Without a GPU the numbers are CPU
numbers, and the script says so.
"""
import argparse
import dataclasses
import gc
import json
import os
import platform
import sys
import tempfile
import time

START = time.perf_counter()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Before jax and TensorFlow load: one OpenBLAS thread for jaxlib's CPU eigh (as main.py).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import input_pipeline  # noqa: E402
import meta_layer  # noqa: E402
from gcp import runtime, train  # noqa: E402
from gcp.models import create_model  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
from timing import median_seconds  # noqa: E402

NUM_CLASSES = 1000
DTYPES = ("bfloat16", "float32")
METHODS = ("newton_schulz", "eigh")
PIPELINE_PP = "inception_crop(224)|flip_lr|normalize('imagenet')"


@dataclasses.dataclass(frozen=True)
class Sizes:
  arch: str
  size: int  # input pixels
  batch: int  # per device
  dims: tuple  # iSQRT reduction_dim d
  repeats: int  # timed training steps
  meta_repeats: int
  pipeline_images: int  # JPEGs written, each listed `links` times per epoch
  links: int
  rounds: int  # timed pipeline epochs
  options: dict = dataclasses.field(default_factory=dict)  # create_model options
  xla_flags: tuple = ()  # added to XLA_FLAGS unless named there


FULL = Sizes("resnet50", 224, 256, (128, 256), 10, 10, 256, 16, 2)
# Compiles dominate at toy sizes: XLA's backend optimisations are turned down (half the
# compile time), and the ResNet is 8 channels wide (the same program, less arithmetic).
# The 8 JPEGs listed 4 times make one batch of 32.
SMOKE = Sizes("resnet18", 32, 2, (16,), 2, 2, 8, 4, 1, {"width": 8},
              ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true"))


def _progress(message: str) -> None:
  print(f"[{time.perf_counter() - START:6.1f} s] {message}", file=sys.stderr, flush=True)


def _name(arch: str, head: str, dim) -> str:
  return f"ResNet-{arch[len('resnet'):]} " + ("GAP" if head == "gap" else f"iSQRT d={dim}")


def _peak_device_bytes():
  """The largest allocator high-water mark of the local devices; None where the backend
  keeps no statistics (CPU)."""
  stats = [d.memory_stats() for d in jax.local_devices()]
  if any(s is None or "peak_bytes_in_use" not in s for s in stats):
    return None
  return max(s["peak_bytes_in_use"] for s in stats)


def _head_samples(sizes: Sizes) -> int:
  """M, the samples (H*W) of the feature map the iSQRT head pools at `sizes.size` px."""
  model = create_model(sizes.arch, head="isqrt", num_classes=NUM_CLASSES,
                       reduction_dim=sizes.dims[0], **sizes.options)
  shapes = jax.eval_shape(lambda: model.init_with_output(
      jax.random.key(0), jnp.zeros((1, sizes.size, sizes.size, 3)),
      capture_intermediates=lambda _, method: method == "features")[1]["intermediates"])
  (features,) = shapes["head"]["features"]
  return features.shape[1]


def _train_row(sizes: Sizes, head: str, dim, dtype: str, mesh, data, parked) -> tuple:
  """(row, state on the host): images/s, step time, compile time and memory of one training
  configuration. `parked`: the state a row of the same head left on the host, or None.

  Parameters are float32 in every dtype, so one head's rows share a state: it is
  initialised once (a compile fewer per head) and waits on the host between its rows,
  leaving the devices to the row being measured. Values do not change a step's cost.
  """
  row = {"model": _name(sizes.arch, head, dim), "head": head, "reduction_dim": dim,
         "dtype": dtype, "global_batch": int(data["label"].shape[0])}
  peak_before = _peak_device_bytes()
  model = create_model(sizes.arch, head=head, num_classes=NUM_CLASSES, reduction_dim=dim,
                       dtype=dtype, **sizes.options)
  tx = optax.chain(optax.add_decayed_weights(1e-4, mask=train.weight_decay_mask),
                   optax.sgd(0.1, momentum=0.9))
  try:
    if parked is None:
      state = [train.init_state(model, tx, (sizes.size, sizes.size, 3), seed=0, mesh=mesh)]
    else:  # replicated, as init_state places it
      state = [jax.device_put(parked, NamedSharding(mesh, P()))]
    start = time.perf_counter()
    # Compiled ahead of time: the same executable gives the timing and the memory analysis.
    step = train.make_train_step(model, tx, label_smoothing=0.1).lower(state[0], data)
    step = step.compile()
    row["compile_s"] = time.perf_counter() - start

    def run():
      state[0], metrics = step(state[0], data)
      jax.block_until_ready((state[0], metrics))
    seconds = median_seconds(run, sizes.repeats)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return {**row, "error": f"out of memory at {sizes.batch} per device (try --batch)"}, None
  row.update(step_ms=1e3 * seconds, images_per_s=row["global_batch"] / seconds)
  analysis = step.memory_analysis()
  xla = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes +
         analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)
  peak = _peak_device_bytes()
  # The allocator's peak cannot be reset: it is this row's only if the row raised it.
  if peak is not None and peak > peak_before:
    row["memory"] = {"bytes": peak, "source": "device peak (memory_stats)", "xla_bytes": xla}
  else:
    why = "no device statistics" if peak is None else "device peak set by an earlier row"
    row["memory"] = {"bytes": xla, "source": f"XLA memory_analysis ({why})", "xla_bytes": xla}
  return row, jax.device_get(state[0])


def _meta_row(method: str, b: int, c: int, m: int, repeats: int, training: list) -> dict:
  """Forward + backward of the meta-layer on one device, and its share of each matching
  training step (same d; each device runs b images per step)."""
  step, xla = meta_layer._jax_step(f"isqrt {method}", b, c, m)
  seconds = median_seconds(step, repeats)
  row = {"method": method, "B": b, "C": c, "M": m, "ms": 1e3 * seconds,
         "images_per_s": b / seconds, "xla_bytes": xla}
  for r in training:
    if r["reduction_dim"] == c and "step_ms" in r:
      row[f"share_of_{r['dtype']}_step"] = 1e3 * seconds / r["step_ms"]
  return row


def _pipeline(sizes: Sizes, fastest: float) -> dict:
  """Training-pipeline images/s (wall), per host core, and the cores `fastest` images/s
  need. Per core is images per CPU-second of this process (all its threads)."""
  import gcp.data
  with tempfile.TemporaryDirectory() as tmp:
    input_pipeline._write_images(tmp, sizes.pipeline_images, sizes.links)
    builder = gcp.data.load_builder(f"folder:{tmp}")
    rates = input_pipeline._best_rates(
        {"ours": lambda e, bar: input_pipeline._ours_epoch(builder, PIPELINE_PP, e, bar)},
        sizes.rounds)
  wall, per_core = rates["ours"]
  return {"images_per_s": wall, "cores_busy": wall / per_core,
          "images_per_s_per_core": per_core, "fastest_training_images_per_s": fastest,
          "cores_needed": fastest / per_core, "cores_available": len(os.sched_getaffinity(0)),
          "epoch_images": sizes.pipeline_images * sizes.links}


def _header(smoke: bool, sizes: Sizes, m: int) -> dict:
  import jaxlib
  from gcp.ops import newton_schulz
  devices = jax.devices()
  precision = (jax.config.jax_default_matmul_precision or
               "unset (XLA's default: TF32 for float32 on NVIDIA Ampere and newer)")
  return {
      "device_kind": devices[0].device_kind, "platform": devices[0].platform,
      "device_count": len(devices), "process_count": jax.process_count(),
      "host": platform.processor() or platform.machine(),
      "jax": jax.__version__, "jaxlib": jaxlib.__version__, "smoke": smoke,
      "arch": sizes.arch, "size": sizes.size, "batch_per_device": sizes.batch,
      "head_samples_M": m,
      "precision": (
          "backbone compute dtype per row (bfloat16 | float32), parameters float32; "
          f"default matmul precision {precision}; second-order head in float32, covariance and "
          f"Newton-Schulz matmuls at Precision.{newton_schulz._HIGHEST.name}; iSQRT head "
          f"method 'auto' -> {newton_schulz.resolve_method('auto', m, sizes.dims[0])}")}


def _print(report: dict) -> None:
  h, n = report["header"], report["header"]["device_count"]
  print(f"\ndevices: {n} x {h['device_kind']} ({h['platform']}), {h['process_count']} "
        f"process(es); host {h['host']}; jax {h['jax']}, jaxlib {h['jaxlib']}")
  print(f"precision: {h['precision']}")
  if h["platform"] == "cpu":
    print("WARNING: no GPU: these are CPU numbers" +
          (" at smoke sizes, which only check that every path runs" if h["smoke"] else ""))
  training = report["training"]
  print(f"\n1. Training, {h['arch']} at {h['size']} px, {h['batch_per_device']} images per "
        f"device x {n} = {training[0]['global_batch']} per step (median step time)\n")
  print("| model | dtype | images/s | ms/step | compile (or cache load) s |")
  print("|---|---|---|---|---|")
  for r in training:
    if "error" in r:
      print(f"| {r['model']} | {r['dtype']} | {r['error']} | | |")
    else:
      print(f"| {r['model']} | {r['dtype']} | {r['images_per_s']:.1f} | {r['step_ms']:.1f} | "
            f"{r['compile_s']:.1f} |")
  print(f"\n2. iSQRT meta-layer alone on one device: float32 forward + backward of "
        f"triu(isqrt_cov(x)), x [B, M, C], M = {h['head_samples_M']} (the head's H*W)\n")
  print("| method | B, M, C | ms | images/s | XLA MiB | share of bfloat16 step "
        "| share of float32 step |")
  print("|---|---|---|---|---|---|---|")
  for r in report["meta_layer"]:
    shares = [r.get(f"share_of_{dtype}_step") for dtype in DTYPES]
    shares = " | ".join("-" if s is None else f"{100 * s:.1f}%" for s in shares)
    print(f"| {r['method']} | {r['B']}, {r['M']}, {r['C']} | {r['ms']:.2f} | "
          f"{r['images_per_s']:.0f} | {r['xla_bytes'] / 2**20:.1f} | {shares} |")
  p = report["pipeline"]
  print(f"\n3. Input pipeline ({PIPELINE_PP}, 500 x 375 JPEGs, best of epochs of "
        f"{p['epoch_images']} images)\n")
  print("| images/s (wall) | cores busy | images/s per core | fastest training images/s per host "
        "| host cores needed | host cores available |")
  print("|---|---|---|---|---|---|")
  print(f"| {p['images_per_s']:.0f} | {p['cores_busy']:.2f} | "
        f"{p['images_per_s_per_core']:.0f} | {p['fastest_training_images_per_s']:.1f} | "
        f"{p['cores_needed']:.1f} | {p['cores_available']} |")
  print("\n4. Memory per device of each training step\n")
  print("| model | dtype | MiB | source | XLA buffers MiB |")
  print("|---|---|---|---|---|")
  for r in report["memory"]:
    print(f"| {r['model']} | {r['dtype']} | {r['bytes'] / 2**20:.0f} | {r['source']} | "
          f"{r['xla_bytes'] / 2**20:.0f} |")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--smoke", action="store_true", help="toy sizes: check every path")
  parser.add_argument("--batch", type=int, help="images per device (default 256)")
  parser.add_argument("--repeats", type=int, help="timed training steps (default 10)")
  parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
  args = parser.parse_args()
  sizes = SMOKE if args.smoke else FULL
  sizes = dataclasses.replace(sizes, batch=args.batch or sizes.batch,
                              repeats=args.repeats or sizes.repeats)
  # XLA reads its flags when the backend starts, i.e. at the first computation below.
  runtime.add_xla_flags(*sizes.xla_flags)

  _progress("start")
  mesh = train.make_mesh()
  m = _head_samples(sizes)
  rng = np.random.default_rng(0)
  host_batch = sizes.batch * jax.local_device_count()
  data = train.shard_batch({
      "image": rng.normal(size=(host_batch, sizes.size, sizes.size, 3)).astype(np.float32),
      "label": rng.integers(0, NUM_CLASSES, host_batch).astype(np.int32)}, mesh)
  heads = [("gap", None)] + [("isqrt", d) for d in sizes.dims]
  training, parked = [], {}
  # Rows in order of their expected memory (bfloat16 first), so that each is likely to
  # raise the device's peak and can be measured by it (see `_train_row`).
  for dtype in DTYPES:
    for head, dim in heads:
      _progress(f"training: {_name(sizes.arch, head, dim)}, {dtype}")
      row, parked[head, dim] = _train_row(sizes, head, dim, dtype, mesh, data,
                                          parked.get((head, dim)))
      training.append(row)
      gc.collect()  # the row's device state and executable, before the next row allocates
  del data, parked
  meta = []
  for dim in sizes.dims:
    for method in METHODS:
      _progress(f"meta-layer: {method}, d={dim}")
      meta.append(_meta_row(method, sizes.batch, dim, m, sizes.meta_repeats, training))
  _progress("input pipeline")
  # What one host's pipeline feeds: its share of the fastest global rate.
  rates = [r["images_per_s"] / jax.process_count() for r in training if "images_per_s" in r]
  report = {
      "header": _header(args.smoke, sizes, m), "training": training, "meta_layer": meta,
      "pipeline": _pipeline(sizes, max(rates, default=float("nan"))),
      "memory": [{"model": r["model"], "dtype": r["dtype"], **r["memory"]}
                 for r in training if "memory" in r]}
  _progress("done")
  _print(report)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(report, f, indent=1)


if __name__ == "__main__":
  main()
