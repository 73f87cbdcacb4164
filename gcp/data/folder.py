"""Image folders in the ImageFolder layout (torchvision's; the seed releases' ImageNet).

    --config.data.name=folder:/path/to/dir --config.data.train_split=train \\
    --config.data.eval_split=val

Layout (`LAYOUT` below, shown by every error about it): one folder per split, in it one
folder per class (images may sit in sub-folders of a class folder).

The splits are the top-level folders. Labels number the sorted class-folder names (over
all splits), as torchvision.datasets.ImageFolder numbers them. Images: .jpg, .jpeg, .png,
.bmp, .gif, .webp (by content: a PNG named .JPEG is fine); other files are ignored, with a
warning. An image that fails to decode is skipped and counted in the log.

Small and large folders are told apart by their number of images:

- up to `MAX_DIRECT_IMAGES` (50,000; e.g. the fine-grained sets: CUB-200-2011 has 11,788
  images) the files are read directly, listed afresh at every start;
- a larger folder (ImageNet: 1.28M images) is converted once into a TFDS data set, which
  then trains at full speed from large sequential TFRecord files:

      python -m gcp.data.folder /path/to/imagenet /path/to/tfds_dir

  This writes `/path/to/tfds_dir/gcp_folder/<folder name>/1.0.0/` with a progress bar,
  checking that every image decodes (those that do not are left out and listed). Train
  with the same `--config.data.name=folder:/path/to/imagenet` and
  `--config.data.data_dir=/path/to/tfds_dir`: whenever data_dir holds a converted copy of a
  folder of that name, it is used and the folder itself is not read (it need not even be
  on the machine). After changing the folder, delete the copy and convert again. Any
  folder may be converted, small ones too.
"""
import argparse
import dataclasses
import json
import os
import re
import sys
import types

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

MAX_DIRECT_IMAGES = 50_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
CONVERTED_NAME = "gcp_folder"
CONVERTED_VERSION = "1.0.0"
SOURCE_FILE = "gcp_folder_source.json"

LAYOUT = """\
{root}/
├── train/                  one folder per split
│   ├── n01440764/          one folder per class (labels: the sorted folder names)
│   │   ├── n01440764_10026.JPEG
│   │   └── ...
│   └── n01443537/
│       └── ...
└── val/
    ├── n01440764/
    │   └── ILSVRC2012_val_00000293.JPEG
    └── ..."""


def expected_layout(root: str) -> str:
  return ("Expected the ImageFolder layout (images: "
          f"{', '.join(IMAGE_EXTENSIONS)}):\n\n" + LAYOUT.format(root=root.rstrip("/")))


@dataclasses.dataclass
class Listing:
  """The images of a folder: per split, (path relative to the root, class name) pairs."""
  root: str
  splits: dict[str, list[tuple[str, str]]]
  class_names: list[str]
  ignored: list[str]  # files without an image extension (relative paths)
  truncated: bool = False  # stopped after `limit` images


def _subdirs(path: str) -> list[str]:
  with os.scandir(path) as it:
    return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def scan(root: str, limit: int | None = None) -> Listing:
  """Lists the images of the folder `root` (stops after `limit` images, if given).

  Raises:
    FileNotFoundError: `root` is missing or holds no images in the ImageFolder layout; the
      message shows the expected layout.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f"image folder {root} does not exist. {expected_layout(root)}")
  splits, classes, ignored, count = {}, set(), [], 0
  for split in _subdirs(root):
    files = []
    for name in _subdirs(os.path.join(root, split)):
      classes.add(name)
      for dirpath, dirnames, filenames in os.walk(os.path.join(root, split, name),
                                                  followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, root)
        for f in sorted(filenames):
          if f.startswith("."):
            continue
          if f.lower().endswith(IMAGE_EXTENSIONS):
            files.append((os.path.join(rel, f), name))
          else:
            ignored.append(os.path.join(rel, f))
      if limit is not None and count + len(files) > limit:
        return Listing(root, {**splits, split: files}, sorted(classes), ignored, True)
    if files:
      splits[split] = files
      count += len(files)
  if not splits:
    found = _subdirs(root)
    what = (f"its folders ({', '.join(found[:5])}{', ...' if len(found) > 5 else ''}) hold "
            "no class folders with images" if found else "it has no sub-folders")
    raise FileNotFoundError(f"image folder {root} holds no images: {what}. "
                            f"{expected_layout(root)}")
  if ignored:
    logging.warning("%s: ignored %d file(s) without an image extension (%s), e.g. %s",
                    root, len(ignored), " ".join(IMAGE_EXTENSIONS), ignored[0])
  names = sorted(classes)
  for split, files in splits.items():
    missing = classes - {c for _, c in files}
    if missing:
      logging.warning("%s: split %r has no images of %d of the %d classes (e.g. %s)",
                      root, split, len(missing), len(names), sorted(missing)[0])
  return Listing(root, splits, names, ignored)


def features(class_names: list[str], file_name: bool = False) -> tfds.features.FeaturesDict:
  spec = {"image": tfds.features.Image(),
          "label": tfds.features.ClassLabel(names=class_names)}
  if file_name:
    spec["file_name"] = tfds.features.Text()
  return tfds.features.FeaturesDict(spec)


class SplitSource:
  """What a data source read from its own files shares: `name`, `_split_infos` (split ->
  `tfds.core.SplitInfo`) set by the subclass, and TFDS split slicing (`train[:10%]`,
  `tfds.split_for_jax_process`) over them. `SPLITS` says where the splits come from."""
  SPLITS = "its splits"

  def _slices(self, split) -> list[tuple[str, int, int]]:
    if not hasattr(split, "to_absolute"):
      split = tfds.core.ReadInstruction.from_spec(split)
    try:
      instructions = split.to_absolute(self._split_infos)
    except ValueError as e:
      raise ValueError(f"{self.name}: {e} (the splits are {self.SPLITS}: "
                       f"{', '.join(self._split_infos)})") from None
    return [(a.splitname, a.from_ or 0,
             self._split_infos[a.splitname].num_examples if a.to is None else a.to)
            for a in instructions]

  def num_examples(self, split) -> int:
    return sum(end - start for _, start, end in self._slices(split))


class FolderSource(SplitSource):
  """A small image folder read directly from its files, in place of a TFDS builder.

  `gcp.data.pipeline` reads it through `num_examples(split)`, `read(split, shuffle_seed=)`
  and `info.features`; splits accept the TFDS slicing syntax (`train[:10%]`).
  """

  image_shape = (None, None, 3)
  SPLITS = "its top-level folders"

  def __init__(self, listing: Listing):
    self.root = listing.root
    self.name = f"folder:{listing.root}"
    ids = {name: i for i, name in enumerate(listing.class_names)}
    self._files = {
        split: (np.array([os.path.join(listing.root, p) for p, _ in files]),
                np.array([ids[c] for _, c in files], np.int32))
        for split, files in listing.splits.items()}
    self._split_infos = {
        split: tfds.core.SplitInfo(name=split, shard_lengths=[len(paths)], num_bytes=0)
        for split, (paths, _) in self._files.items()}
    self.info = types.SimpleNamespace(name=self.name, features=features(listing.class_names),
                                      splits=self._split_infos)

  def read(self, split, *, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """`{"image": encoded bytes, "label": int32}` of `split`; in a random order fixed by
    `shuffle_seed`, else in the listing order (class by class)."""
    parts = [tuple(a[start:end] for a in self._files[name])
             for name, start, end in self._slices(split)]
    paths = np.concatenate([p for p, _ in parts])
    labels = np.concatenate([l for _, l in parts])
    if shuffle_seed is not None:
      order = np.random.default_rng(shuffle_seed).permutation(len(paths))
      paths, labels = paths[order], labels[order]
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    return ds.map(lambda path, label: {"image": tf.io.read_file(path), "label": label},
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _tfds_root(data_dir: str | None) -> str:
  return os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)


def config_name(root: str) -> str:
  """The converted copy's TFDS config name: the folder's name, lower case, [a-z0-9_]."""
  name = re.sub(r"[^a-z0-9_]+", "_", os.path.basename(root.rstrip("/")).lower()).strip("_")
  return name or "root"


def converted_dir(root: str, data_dir: str | None = None) -> str:
  """Where `python -m gcp.data.folder root data_dir` writes its copy of `root`."""
  return os.path.join(_tfds_root(data_dir), CONVERTED_NAME, config_name(root),
                      CONVERTED_VERSION)


def load(root: str, data_dir: str | None = None, max_direct: int = MAX_DIRECT_IMAGES):
  """The converted copy of the folder `root` in `data_dir` if there is one, else the
  folder itself (a `FolderSource`) if it holds at most `max_direct` images.

  Raises:
    FileNotFoundError: no copy, and the folder is missing or empty (the message shows the
      expected layout).
    ValueError: no copy, and the folder is larger than `max_direct` (the message gives the
      conversion command).
  """
  root = os.path.abspath(os.path.expanduser(root))
  copy = converted_dir(root, data_dir)
  if os.path.exists(os.path.join(copy, "dataset_info.json")):
    builder = tfds.builder_from_directory(copy)
    source = _read_source(copy)
    if source and source != root:
      logging.warning("using %s, converted from %s, for the folder %s", copy, source, root)
    return builder
  listing = scan(root, limit=max_direct)
  if listing.truncated:
    raise ValueError(
        f"image folder {root} holds more than {max_direct:,} images: convert it once into "
        f"a TFDS data set, which is read much faster, with\n\n"
        f"  python -m gcp.data.folder {root} {_tfds_root(data_dir)}\n\n"
        f"then keep config.data.name='folder:{root}' and set "
        f"config.data.data_dir={_tfds_root(data_dir)!r}")
  return FolderSource(listing)


def _checked_examples(listing: Listing, split: str, ids: dict, stats: dict, bar):
  """(key, example) of the images of `split` that decode; the others listed in stats."""
  from gcp.data import preprocess
  files = listing.splits[split]
  paths = [os.path.join(listing.root, rel) for rel, _ in files]

  def load_and_check(i, path):
    data = tf.io.read_file(path)
    shape = tf.shape(preprocess.decode(data, 3))  # raises if the image does not decode
    return i, data, shape

  ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
  ds = ds.map(load_and_check, num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True).ignore_errors().prefetch(64)
  bad, expected = [], 0
  for i, data, _ in ds.as_numpy_iterator():
    bad.extend(files[j][0] for j in range(expected, i))
    bar.update(i + 1 - expected)
    expected = i + 1
    if bad:
      bar.set_postfix(skipped=len(bad), refresh=False)
    rel, name = files[i]
    yield rel, {"image": data, "label": ids[name], "file_name": rel}
  bad.extend(files[j][0] for j in range(expected, len(files)))
  bar.update(len(files) - expected)
  stats[split] = {"images": len(files) - len(bad), "skipped": bad}


def convert(root: str, data_dir: str | None = None, *, file_format: str = "tfrecord",
            progress: bool = True) -> dict:
  """Writes the folder `root` as the TFDS data set `converted_dir(root, data_dir)`.

  Images are stored as they are (no re-encoding) after a check that they decode; those
  that do not are left out, logged and returned. Returns `{split: {"images": n, "skipped":
  [relative paths]}}`.
  """
  import tqdm
  root = os.path.abspath(os.path.expanduser(root))
  target = converted_dir(root, data_dir)
  if os.path.exists(os.path.join(target, "dataset_info.json")):
    raise FileExistsError(f"{target} already holds a converted copy: delete it to convert "
                          f"{root} again")
  listing = scan(root)
  ids = {name: i for i, name in enumerate(listing.class_names)}
  total = sum(len(f) for f in listing.splits.values())
  stats = {}
  bar = tqdm.tqdm(total=total, unit="img", desc=f"converting {os.path.basename(root)}",
                  disable=not progress, dynamic_ncols=True)
  os.makedirs(_tfds_root(data_dir), exist_ok=True)
  tfds_bars = tfds.core.utils.tqdm_utils._active  # pylint: disable=protected-access
  tfds.disable_progress_bar()  # ours counts images over all splits
  try:
    tfds.dataset_builders.store_as_tfds_dataset(
        name=CONVERTED_NAME, version=CONVERTED_VERSION, config=config_name(root),
        features=features(listing.class_names, file_name=True),
        split_datasets={split: _checked_examples(listing, split, ids, stats, bar)
                        for split in listing.splits},
        data_dir=_tfds_root(data_dir), file_format=file_format,
        description=f"The image folder {root} (ImageFolder layout), converted by "
                    "gcp.data.folder; images stored as they were.")
  finally:
    tfds.display_progress_bar(tfds_bars)
    bar.close()
  _write_source(target, root)
  for split, s in stats.items():
    if s["skipped"]:
      logging.warning("%s/%s: skipped %d image(s) that do not decode: %s%s", root, split,
                      len(s["skipped"]), ", ".join(s["skipped"][:10]),
                      " ..." if len(s["skipped"]) > 10 else "")
  return stats


def _write_source(target: str, root: str) -> None:
  """Records the source folder beside the copy (read back by `load`)."""
  with open(os.path.join(target, SOURCE_FILE), "w") as f:
    json.dump({"source": root}, f)


def _read_source(target: str) -> str | None:
  try:
    with open(os.path.join(target, SOURCE_FILE)) as f:
      return json.load(f)["source"]
  except (OSError, ValueError, KeyError):
    return None


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gcp.data.folder",
      description="Convert an image folder (ImageFolder layout) into a TFDS data set once, "
                  "for fast training with --config.data.name=folder:SOURCE "
                  "--config.data.data_dir=DATA_DIR.",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=expected_layout("SOURCE"))
  parser.add_argument("source", help="the image folder (one sub-folder per split)")
  parser.add_argument("data_dir", nargs="?", default=None,
                      help=f"TFDS data directory for the copy (default: "
                           f"{tfds.core.constants.DATA_DIR})")
  parser.add_argument("--file_format", default="tfrecord",
                      choices=("tfrecord", "array_record"))
  args = parser.parse_args(argv)
  try:
    stats = convert(args.source, args.data_dir, file_format=args.file_format)
  except (FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  root = os.path.abspath(os.path.expanduser(args.source))
  for split, s in stats.items():
    print(f"{split}: {s['images']:,} images" +
          (f", {len(s['skipped'])} skipped (do not decode)" if s["skipped"] else ""))
  print(f"wrote {converted_dir(root, args.data_dir)}\ntrain with "
        f"--config.data.name=folder:{root} "
        f"--config.data.data_dir={_tfds_root(args.data_dir)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
