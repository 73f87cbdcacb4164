"""Training input pipeline throughput: our tf.data pipeline against PIL + numpy, per core.

Writes ImageNet-sized JPEGs (500 x 375, quality 90, smooth random content with some
texture) into a temporary ImageFolder and reads them as training images, inception crop
224 (scale 0.08-1, ratio 3/4-4/3) + horizontal flip + ImageNet normalisation, float32
batches of 32, with
- ours: `gcp.data.train_batches` on `folder:<tmp>` with
  "inception_crop(224)|flip_lr|normalize('imagenet')": only the crop window of each JPEG is
  decoded (`tf.image.decode_and_crop_jpeg`);
- ours, unfused: the same with "rgb|..." in front, which decodes whole images first (rgb is
  a no-op on colour images but is not fusable with decoding);
- PIL + numpy: open + decode (`Image.convert('RGB')`), a random-resized crop window of the
  same law, `Image.resize(..., BILINEAR)` of the crop, flip, `(x - mean) / std` in numpy
  float32 and `np.stack` into batches (what a torchvision-style loader worker does), in
  this process's main thread.
Each file is listed `--links` times (hard links in several class folders) so that an epoch
of the folder (4,096 images by default) outweighs the start-up of our pipeline (tracing,
filling the shuffle buffer), which is timed as well: the page cache holds the files once.
The process is pinned to `--cores` CPUs (default 1). Each pipeline first runs one untimed
warm-up epoch; then the pipelines take turns for `--rounds` rounds of one epoch each, and
the best round of each is reported. Per core means images per CPU-second of this process
(all its threads: `time.process_time`), which other processes on the machine do not
distort; images/s is wall-clock.

  python benchmarks/input_pipeline.py [--images 256] [--links 16] [--rounds 3] [--cores 1]

Prints a table of images/s and the ratio to PIL + numpy (higher is better).
"""
import argparse
import math
import os
import platform
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 224
BATCH = 32
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def _write_images(root: str, n: int, links: int, seed: int = 0) -> list[str]:
  """`n` 500 x 375 JPEGs (quality 90) in root/train/<class>/, each hard-linked into
  `links` class folders; returns all `n * links` paths."""
  from PIL import Image
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:375, 0:500] / 100.0
  paths = []
  for i in range(n):
    image = np.zeros((375, 500, 3))
    for c in range(3):  # a few smooth waves per channel, then noise for texture
      for _ in range(4):
        fy, fx, phase = rng.uniform(0.2, 3, 2).tolist() + [rng.uniform(0, 6.3)]
        image[..., c] += np.sin(fy * yy + fx * xx + phase)
    image = 127 + 30 * image + rng.normal(0, 12, image.shape)
    for k in range(links):
      folder = os.path.join(root, "train", f"class{k}")
      os.makedirs(folder, exist_ok=True)
      path = os.path.join(folder, f"img{i:05d}.jpg")
      if k == 0:
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
      else:
        os.link(paths[-k], path)
      paths.append(path)
  return paths


def _pil_window(rng, width: int, height: int) -> tuple[int, int, int, int]:
  """(x, y, w, h): TF's sample_distorted_bounding_box law (ratio uniform in [3/4, 4/3],
  height uniform between the heights of areas 0.08 and 1), else the whole image."""
  area = width * height
  for _ in range(100):
    ratio = rng.uniform(3 / 4, 4 / 3)
    lo = round(math.sqrt(0.08 * area / ratio))
    hi = min(round(math.sqrt(area / ratio)), height, int((width + 0.5) / ratio))
    if lo > hi:
      continue
    h = int(rng.integers(lo, hi + 1))
    w = round(h * ratio)
    if 0 < w <= width and 0.08 * area <= w * h <= area:
      return (int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h)
  return 0, 0, width, height


def _pil_one(args) -> np.ndarray:
  from PIL import Image
  path, seed = args
  rng = np.random.default_rng(seed)
  with Image.open(path) as f:
    image = f.convert("RGB")
  x, y, w, h = _pil_window(rng, *image.size)
  image = image.resize((SIZE, SIZE), Image.BILINEAR, box=(x, y, x + w, y + h))
  pixels = np.asarray(image, np.float32)
  if rng.random() < 0.5:
    pixels = pixels[:, ::-1]
  return (pixels - MEAN) / STD


def _pil_epoch(paths, epoch: int, bar) -> int:
  order = np.random.default_rng(epoch).permutation(len(paths))
  jobs = [(paths[i], epoch * 1_000_003 + int(i)) for i in order]
  done = 0
  batch = []
  for image in map(_pil_one, jobs):
    batch.append(image)
    if len(batch) == BATCH:
      np.stack(batch)
      done += BATCH
      bar.update(BATCH)
      batch = []
  return done


def _ours_epoch(builder, pp: str, epoch: int, bar) -> int:
  import gcp.data
  done = 0
  for batch in gcp.data.train_batches(builder, split="train", pp=pp, per_host_batch=BATCH,
                                      seed=0, epoch=epoch, shuffle_buffer=1024):
    assert batch["image"].shape == (BATCH, SIZE, SIZE, 3)
    done += BATCH
    bar.update(BATCH)
  return done


def _best_rates(pipelines: dict, rounds: int) -> dict:
  """(images/s, images per CPU-second) of each pipeline: the best of `rounds` timed epochs,
  taken in turns, after one warm-up epoch each."""
  from tqdm import tqdm
  for name, run_epoch in pipelines.items():
    with tqdm(desc=f"{name} (warm-up)", unit="img", leave=False) as bar:
      run_epoch(1000, bar)  # an epoch that is not timed
  best = {name: (0.0, 0.0) for name in pipelines}
  with tqdm(total=rounds * len(pipelines), desc="timed epochs", unit="epoch") as outer:
    for epoch in range(rounds):
      for name, run_epoch in pipelines.items():
        with tqdm(desc=name, unit="img", leave=False) as bar:
          wall, cpu = time.perf_counter(), time.process_time()
          done = run_epoch(epoch, bar)
          wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
          best[name] = (max(best[name][0], done / wall), max(best[name][1], done / cpu))
        outer.update()
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=256, help="JPEGs to write")
  parser.add_argument("--links", type=int, default=16, help="times each JPEG is listed")
  parser.add_argument("--rounds", type=int, default=3, help="timed epochs per pipeline")
  parser.add_argument("--cores", type=int, default=1, help="CPUs to pin the process to")
  args = parser.parse_args()

  cpus = sorted(os.sched_getaffinity(0))[:args.cores]
  os.sched_setaffinity(0, cpus)  # before TensorFlow sizes its thread pools
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.path.insert(0, ROOT)
  import gcp.data
  import PIL
  import tensorflow as tf

  with tempfile.TemporaryDirectory() as tmp:
    paths = _write_images(tmp, args.images, args.links)
    kib = np.mean([os.path.getsize(p) for p in paths[::args.links]]) / 2**10
    builder = gcp.data.load_builder(f"folder:{tmp}")
    pp = "inception_crop(224)|flip_lr|normalize('imagenet')"
    rates = _best_rates({
        "PIL + numpy": lambda e, bar: _pil_epoch(paths, e, bar),
        "ours, unfused (decode all, then crop)":
            lambda e, bar: _ours_epoch(builder, "rgb|" + pp, e, bar),
        "ours (fused decode-and-crop)": lambda e, bar: _ours_epoch(builder, pp, e, bar),
    }, args.rounds)
  print(f"machine: {platform.processor() or platform.machine()}, pinned to {len(cpus)} of "
        f"{os.cpu_count()} cores; TensorFlow {tf.__version__}, Pillow {PIL.__version__}")
  print(f"{args.images} JPEGs of 500 x 375 px (quality 90, {kib:.0f} KiB on average), each "
        f"listed {args.links} times: epochs of {len(paths)} images; best of {args.rounds} "
        f"epochs; inception crop 224 + flip + normalise, float32 batches of {BATCH}\n")
  base = rates["PIL + numpy"][1]
  print("| pipeline | images/s (wall) | images/s per core (CPU time) | ratio to PIL + numpy "
        "per core |")
  print("|---|---|---|---|")
  for name, (wall, cpu) in rates.items():
    print(f"| {name} | {wall:.0f} | {cpu:.0f} | {cpu / base:.2f}x |")


if __name__ == "__main__":
  main()
