"""Classify image files with a trained or converted model.

  python -m gcp.predict runs/my_images photo.jpg more_photos/ 'shots/*.png'
  python -m gcp.predict pretrained:fast-mpn-cov/resnet50 photos/ --top_k 3 --output top3.csv
  python -m gcp.predict converted/r50_dropcov photos/ --ten_crop --flip --output preds.json

SRC is whatever `python main.py --mode=eval` scores: a workdir, its checkpoints/ folder,
one step's folder, the output of `python -m gcp.convert`, or pretrained:NAME. IMAGES are
image files, folders (searched recursively for .jpg, .jpeg, .png, .bmp, .gif, .webp) and
globs (quote them; ** recurses); each folder's and glob's images are taken in sorted order.

Images are prepared as evaluation prepares them: the checkpoint's evaluation
preprocessing (its run's config.data.eval_pp; a converted model's, its family's),
--eval_pp to override it, through the tf.data pipeline of `--mode=eval`. --ten_crop
replaces its final centre crop by ten_crop (the mean logits of 10 views); --flip averages
the logits of each image and its mirror (default: as the run evaluated, config.eval_flip).
Probabilities are the softmax of those logits. Batches are sharded over every device JAX
sees.

Prints the top-k classes of each image, or with --output writes CSV (one row per image:
path, class_1, probability_1, class_2, ...) or JSON (the predictions, the checkpoint and
the preprocessing). An image that cannot be read is named and skipped; the exit code is
non-zero only when no image could be classified.

In Python: `gcp.predict.predict(src, images) -> [(path, [(class, probability), ...])]`.
"""
import os
import sys

if __name__ == "__main__":
  # As main.py: jaxlib's CPU eigh (the CPU path of the iSQRT and eig heads) is faster with
  # one OpenBLAS thread; set before it loads.
  os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from gcp import reporting  # noqa: E402  (before TensorFlow loads: it sets up the console)

if __name__ == "__main__":
  reporting.quiet_console(sys.argv)

import argparse  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import glob  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402
import numpy as np  # noqa: E402

from gcp import data, inference, runtime, train  # noqa: E402
from gcp.data import folder, preprocess  # noqa: E402
from gcp.workdir import write_atomic  # noqa: E402
import gcp.pretrained  # noqa: E402,F401  (registers the sources pretrained:NAME)

OUTPUT_FORMATS = (".csv", ".json")
_SPLIT = "images"  # the one split of the files classified
_GLOB = re.compile(r"[*?[]")

# (path, [(class name, probability), ...] best first)
Prediction = tuple[str, list[tuple[str, float]]]


def image_paths(images: str | list[str]) -> list[str]:
  """The image files that `images` name, in order, each once: a file as it is (whatever
  its name), a folder's images (`gcp.data.folder.IMAGE_EXTENSIONS`, recursively) and a
  glob's matching images (`**` recurses; a matched folder's images), each folder's and
  glob's sorted. An entry that matches nothing is reported (a warning) and skipped.

  Raises:
    FileNotFoundError: nothing matched; the message says why for each entry.
  """
  found, unmatched = {}, []
  for entry in [images] if isinstance(images, str) else images:
    path = os.path.expanduser(entry)
    if os.path.isfile(path):
      matched = [path]
    elif os.path.isdir(path):
      matched = folder.image_files(path)
      why = f"the folder {entry} holds no images ({', '.join(folder.IMAGE_EXTENSIONS)})"
    elif _GLOB.search(path):
      matched = [f for m in sorted(glob.glob(path, recursive=True))
                 for f in (folder.image_files(m) if os.path.isdir(m) else
                           [m] if m.lower().endswith(folder.IMAGE_EXTENSIONS) else [])]
      why = f"the pattern {entry!r} matches no images"
    else:
      matched, why = [], f"{entry}: no such file or folder"
    if not matched:
      unmatched.append(why)
    for f in matched:
      found.setdefault(os.path.abspath(f), f)
  if not found:
    raise FileNotFoundError(f"no images to classify: {'; '.join(unmatched) or 'none given'}")
  for why in unmatched:
    reporting.warn(why)
  return list(found.values())


def ten_crop_preprocessing(pp: str) -> str:
  """`pp` with its last `center_crop(S)` replaced by `ten_crop(S)` (10-crop testing).

  Raises:
    ValueError: `pp` has no `center_crop`.
  """
  ops = pp.split("|")
  crops = [i for i, op in enumerate(ops)
           if op.strip() and preprocess.parse_op(op)[0] == "center_crop"]
  if not crops:
    raise ValueError(
        f"ten_crop (--ten_crop) replaces the last center_crop(S) of the evaluation "
        f"preprocessing by ten_crop(S), but {pp!r} has none: give an eval_pp (--eval_pp) "
        "with one, e.g. \"resize_shorter(256)|center_crop(224)|normalize('imagenet')\"")
  ops[crops[-1]] = "ten_crop" + ops[crops[-1]].strip()[len("center_crop"):]
  return "|".join(ops)


def load(source: str, *, ten_crop: bool = False, flip: bool | None = None,
         eval_pp: str | None = None, step: int | None = None,
         weights: str | None = None) -> inference.Classifier:
  """The image classifier saved at `source` (`gcp.inference.load`, whose arguments these
  are), its evaluation preprocessing 10-cropped if `ten_crop` (`ten_crop_preprocessing`).

  Raises:
    FileNotFoundError: no checkpoint at `source`.
    ValueError: a video model; `ten_crop` without a centre crop to replace; a damaged
      checkpoint (`CheckpointError`); unknown `weights`.
  """
  classifier = inference.load(source, step=step, eval_pp=eval_pp, flip=flip, weights=weights)
  if classifier.video:
    raise ValueError(
        f"the checkpoint at {source} is a video model ({classifier.spec['arch']}): "
        "gcp.predict classifies images. Score videos with python main.py --mode=eval "
        f"--config.init_from={source} --config.data.name=frames:/path/to/frame_store")
  if ten_crop:
    classifier = dataclasses.replace(classifier,
                                     eval_pp=ten_crop_preprocessing(classifier.eval_pp))
  return classifier


def classify(classifier: inference.Classifier, paths: list[str], *, top_k: int = 5,
             batch_size: int = 64, skipped: list | None = None) -> list[Prediction]:
  """The `top_k` most probable classes of each image file of `paths`, with their
  probabilities, in the order of `paths` (the files that could not be read left out).

  The images go through `gcp.data.eval_batches`, evaluation's pipeline, with
  `classifier.eval_pp`, in batches of `batch_size` images (at most the number of images)
  rounded up to a multiple of the device count and sharded over the devices; the last
  batch is padded, so one shape is compiled. Probabilities are the softmax of
  `classifier.logits` (views and, with `classifier.flip`, mirrors averaged).

  `skipped`: a list to which the paths of the files that could not be read or decoded are
  appended; None: they are reported (a warning).

  One process: on several hosts, each would read only its part of the files.

  Raises:
    ValueError: `top_k` or `batch_size` below 1; the preprocessing does not parse or does
      not end in a fixed size; no file could be read.
  """
  if top_k < 1 or batch_size < 1:
    raise ValueError(f"top_k={top_k} and batch_size={batch_size} must be at least 1")
  if not paths:
    raise ValueError("no images to classify")
  files = folder.FileSource.of_paths(paths, _SPLIT)
  data.image_shape(files, _SPLIT, classifier.eval_pp)  # ops that parse, a fixed size
  mesh = train.make_mesh()
  devices = mesh.devices.size
  per_batch = math.ceil(min(batch_size, len(paths)) / devices) * devices
  variables = jax.device_put(classifier.variables, NamedSharding(mesh, P()))
  probabilities = jax.jit(lambda variables, images: jax.nn.softmax(
      classifier.logits(images, variables).astype(jnp.float32)))
  total = data.num_eval_batches(files, _SPLIT, per_batch)
  bar = reporting.progress_bar(total, 0, desc=f"predict {classifier.spec['arch']}+"
                               f"{classifier.spec['head']}") if total > 1 else None
  dropped, found = [], {}
  for batch in data.eval_batches(files, split=_SPLIT, pp=classifier.eval_pp,
                                 per_host_batch=per_batch, skipped=dropped):
    mask = batch["mask"]
    if mask.any():  # (all-padding batches follow images that did not decode)
      images = train.shard_batch({"image": batch["image"]}, mesh)["image"]
      probs = jax.device_get(probabilities(variables, images))
      found.update(zip(batch["label"][mask].tolist(), probs[mask]))
    if bar is not None:
      bar.update()
  if bar is not None:
    bar.close()
  if not found:
    raise ValueError(data.describe_skipped("no image could be classified", dropped))
  if skipped is None:
    if dropped:
      reporting.warn(data.describe_skipped("predict", dropped))
  else:
    skipped.extend(dropped)
  k = min(top_k, len(classifier.class_names))
  results = []
  for i in sorted(found):
    best = np.argsort(-found[i], kind="stable")[:k]
    results.append((paths[i], [(classifier.class_names[c], float(found[i][c])) for c in best]))
  return results


def predict(source: str, images: str | list[str], *, top_k: int = 5, batch_size: int = 64,
            ten_crop: bool = False, flip: bool | None = None, eval_pp: str | None = None,
            step: int | None = None, weights: str | None = None,
            skipped: list | None = None) -> list[Prediction]:
  """The `top_k` classes of the images `images` names, with their probabilities, as the
  checkpoint at `source` classifies them: `[(path, [(class name, probability), ...])]`,
  best first, in the order of `images`.

    from gcp.predict import predict
    for path, top in predict("runs/my_images", ["photos/", "more/*.jpg"], top_k=3):
      print(path, top[0])

  Args:
    source: a workdir, checkpoint directory, step folder, converted checkpoint or
      `pretrained:NAME`.
    images: image files, folders and globs (`image_paths`).
    ten_crop, flip, eval_pp, step, weights: as `load`.
    top_k, batch_size, skipped: as `classify`.

  Raises:
    FileNotFoundError: no checkpoint at `source`, or no images.
    ValueError: what `load` and `classify` raise.
  """
  paths = image_paths(images)
  classifier = load(source, ten_crop=ten_crop, flip=flip, eval_pp=eval_pp, step=step,
                    weights=weights)
  return classify(classifier, paths, top_k=top_k, batch_size=batch_size, skipped=skipped)


# --------------------------------------------------------------------------- output

def format_table(results: list[Prediction]) -> str:
  """Each image's path, then its classes with their probabilities, one per line."""
  return "\n".join(f"{path}\n" + "\n".join(f"  {p:8.2%}  {name}" for name, p in top)
                   for path, top in results)


def to_csv(results: list[Prediction]) -> str:
  """One row per image: `path, class_1, probability_1, class_2, probability_2, ...`."""
  k = max(len(top) for _, top in results)
  out = io.StringIO()
  writer = csv.writer(out, lineterminator="\n")
  writer.writerow(["path"] + [f"{what}_{i}" for i in range(1, k + 1)
                              for what in ("class", "probability")])
  writer.writerows([path, *(x for pair in top for x in pair)] for path, top in results)
  return out.getvalue()


def to_json(results: list[Prediction], classifier: inference.Classifier,
            skipped: list[str]) -> str:
  """The predictions (`{"path", "classes": [{"class", "probability"}]}` per image) with
  the checkpoint, the preprocessing and the files skipped."""
  return json.dumps({
      "checkpoint": classifier.source, "step": classifier.step, "weights": classifier.weights,
      "eval_pp": classifier.eval_pp, "flip": classifier.flip,
      "predictions": [{"path": path, "classes": [{"class": name, "probability": p}
                                                 for name, p in top]}
                      for path, top in results],
      "skipped": skipped}, indent=2)


# --------------------------------------------------------------------------- command line

def _positive(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
  return value


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m gcp.predict",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
  parser.add_argument("source", metavar="SRC", help="the checkpoint: a workdir, checkpoint "
                      "directory, step folder, converted checkpoint or pretrained:NAME")
  parser.add_argument("images", metavar="IMAGES", nargs="+",
                      help="image files, folders (recursively) and globs")
  parser.add_argument("--top_k", "--top-k", type=_positive, default=5,
                      help="classes shown per image (default: 5)")
  parser.add_argument("--batch_size", "--batch-size", type=_positive, default=64,
                      help="images per batch, rounded up to a multiple of the devices "
                      "(default: 64); --ten_crop computes 10 views of each, --flip twice as "
                      "many")
  parser.add_argument("--ten_crop", "--ten-crop", action="store_true",
                      help="10-crop testing: the preprocessing's centre crop becomes "
                      "ten_crop")
  parser.add_argument("--flip", action=argparse.BooleanOptionalAction,
                      help="average the logits of each image and its mirror (default: as "
                      "the run evaluated, config.eval_flip; off for converted models)")
  parser.add_argument("--eval_pp", "--eval-pp", metavar="PP",
                      help="the preprocessing after decoding (default: the checkpoint's "
                      "evaluation preprocessing)")
  parser.add_argument("--step", type=int, help="which checkpoint (default: the latest)")
  parser.add_argument("--weights", choices=inference.WEIGHTS,
                      help="the run's EMA or trained parameters (default: the EMA if kept)")
  parser.add_argument("--output", "-o", metavar="FILE",
                      help="write the predictions to FILE, .csv or .json, instead of "
                      "printing them")
  parser.add_argument("-v", "--verbosity", type=int, default=0,
                      help="1: show library logs and tracebacks")
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  suffix = os.path.splitext(args.output or "")[1].lower()
  if args.output and suffix not in OUTPUT_FORMATS:
    parser.error(f"--output {args.output}: unknown format {suffix or '(no suffix)'!r}; "
                 f"name the file {' or '.join(OUTPUT_FORMATS)}")
  skipped = []
  try:
    paths = image_paths(args.images)
    classifier = load(args.source, ten_crop=args.ten_crop, flip=args.flip,
                      eval_pp=args.eval_pp, step=args.step, weights=args.weights)
    results = classify(classifier, paths, top_k=args.top_k, batch_size=args.batch_size,
                       skipped=skipped)
  except (FileNotFoundError, ValueError) as e:
    if args.verbosity:
      raise
    print(f"error: {e}\n(-v 1 shows the traceback)", file=sys.stderr)
    return 1
  if skipped:
    reporting.warn(data.describe_skipped("predict", skipped))
  if args.output is None:
    print(format_table(results))
    return 0
  write_atomic(args.output, to_csv(results) if suffix == ".csv" else
               to_json(results, classifier, skipped))
  print(f"wrote the top {len(results[0][1])} classes of {len(results)} image(s) to "
        f"{args.output}")
  return 0


if __name__ == "__main__":
  runtime.exit_quickly(main())
