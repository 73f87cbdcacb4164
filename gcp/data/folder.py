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

  This writes `/path/to/tfds_dir/gcp_folder/<folder name>_<hash of its path>/1.0.0/` with
  a progress bar, checking that every image decodes (those that do not are left out and
  listed). Train with the same `--config.data.name=folder:/path/to/imagenet` and
  `--config.data.data_dir=/path/to/tfds_dir`. Any folder may be converted, small ones too.

A converted copy belongs to exactly one folder: it is found by the folder's absolute path,
and records the folder's fingerprint, a hash of its images' relative paths, sizes and
modification times (`SOURCE_FILE`; the list itself in `FILES_FILE`). At every start the
folder is listed again (about 9 s for ImageNet's 1.28M files) and the copy is used only
if it matches. One that does not is rebuilt if the folder holds at most `MAX_DIRECT_IMAGES`
images; otherwise the run stops, saying what changed and giving the command above, which
replaces the copy (the new one is written beside it and moved into place when complete).
A folder that is not on the machine at all cannot be checked: its copy is used as it is.
"""
import argparse
import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import sys
import time
import types

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from gcp.data import preprocess

MAX_DIRECT_IMAGES = 50_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
CONVERTED_NAME = "gcp_folder"
CONVERTED_VERSION = "1.0.0"
SOURCE_FILE = "gcp_folder_source.json"  # beside a copy: its folder and fingerprint
FILES_FILE = "gcp_folder_files.tsv.gz"  # beside a copy: "<path>\t<size>\t<mtime_ns>" lines

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
  stats: dict[str, tuple[int, int]]  # relative path -> (size, mtime_ns) of each image
  truncated: bool = False  # stopped after `limit` images


def _subdirs(path: str) -> list[str]:
  with os.scandir(path) as it:
    return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _files(path: str, rel: str):
  """(path relative to the root, `os.DirEntry`) of the files under the folder `path`
  (`rel` from the root): its own files by name, then its sub-folders' likewise; hidden
  entries are skipped, symbolic links followed (one `scandir` per folder and one `stat`
  per image: 7 us per file on a warm cache, of which 4 in `stat`; ImageNet's 1.28M in
  about 9 s)."""
  with os.scandir(path) as it:
    entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
  subdirs = []
  for e in entries:
    if e.is_dir():
      subdirs.append(e)
    else:
      yield f"{rel}/{e.name}", e
  for e in subdirs:
    yield from _files(e.path, f"{rel}/{e.name}")


def scan(root: str, limit: int | None = None) -> Listing:
  """Lists the images of the folder `root`, with their sizes and modification times
  (stops after `limit` images, if given).

  Raises:
    FileNotFoundError: `root` is missing or holds no images in the ImageFolder layout; the
      message shows the expected layout.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f"image folder {root} does not exist. {expected_layout(root)}")
  splits, classes, ignored, stats, count = {}, set(), [], {}, 0
  for split in _subdirs(root):
    files = []
    for name in _subdirs(os.path.join(root, split)):
      classes.add(name)
      for rel, entry in _files(os.path.join(root, split, name), f"{split}/{name}"):
        if not rel.lower().endswith(IMAGE_EXTENSIONS):
          ignored.append(rel)
          continue
        try:
          st = entry.stat()
          stats[rel] = (st.st_size, st.st_mtime_ns)
        except OSError:  # a broken symbolic link: listed, and skipped as undecodable
          stats[rel] = (-1, -1)
        files.append((rel, name))
      if limit is not None and count + len(files) > limit:
        return Listing(root, {**splits, split: files}, sorted(classes), ignored, stats, True)
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
  return Listing(root, splits, names, ignored, stats)


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


class FileSource(SplitSource):
  """Images read directly from their files, in place of a TFDS builder: per split, the
  files' paths, their labels and their names in messages.

  `gcp.data.pipeline` reads it through `num_examples(split)`, `read(split, shuffle_seed=)`,
  `preprocessing(pp)` and `info.features`; splits accept the TFDS slicing syntax
  (`train[:10%]`).
  """

  image_shape = (None, None, 3)

  def __init__(self, name: str, files: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
               label: tfds.features.ClassLabel):
    """`files`: split -> (paths, int32 labels, names), arrays of one length per split."""
    self.name = name
    self._files = files
    self._split_infos = {
        split: tfds.core.SplitInfo(name=split, shard_lengths=[len(paths)], num_bytes=0)
        for split, (paths, _, _) in files.items()}
    self.info = types.SimpleNamespace(
        name=name, splits=self._split_infos,
        features=tfds.features.FeaturesDict({"image": tfds.features.Image(), "label": label}))

  @classmethod
  def of_paths(cls, paths: list[str], split: str = "images") -> "FileSource":
    """The image files `paths` as the one split `split`, each labelled by its position in
    `paths` (so that a batch's labels say which files its images are) and named by its
    path."""
    paths = np.array(paths, dtype=str)
    return cls("files", {split: (paths, np.arange(len(paths), dtype=np.int32), paths)},
               tfds.features.ClassLabel(num_classes=len(paths)))

  def read(self, split, *, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """`{"image": the file's path, "label": int32, "name": str}` of `split`; in a random
    order fixed by `shuffle_seed`, else in the order given. The files are read by
    `preprocessing(pp).decode`."""
    parts = [tuple(a[start:end] for a in self._files[name])
             for name, start, end in self._slices(split)]
    paths, labels, names = (np.concatenate(a) for a in zip(*parts))
    if shuffle_seed is not None:
      order = np.random.default_rng(shuffle_seed).permutation(len(names))
      paths, labels, names = paths[order], labels[order], names[order]
    return tf.data.Dataset.from_tensor_slices({"image": paths, "label": labels,
                                               "name": names})

  def preprocessing(self, pp: str):
    """`pp` (a `gcp.data.preprocess.Preprocess`) for the paths `read` yields."""
    return preprocess.build(pp, self.image_shape, files=True)


class FolderSource(FileSource):
  """A small image folder read directly from its files (a `FileSource`); examples are
  named by their paths relative to the root, and listed class by class."""

  SPLITS = "its top-level folders"

  def __init__(self, listing: Listing):
    self.root = listing.root
    ids = {name: i for i, name in enumerate(listing.class_names)}
    prefix = listing.root.rstrip("/") + "/"
    files = {}
    for split, pairs in listing.splits.items():
      names = np.array([p for p, _ in pairs])
      files[split] = (np.char.add(prefix, names), np.array([ids[c] for _, c in pairs],
                                                           np.int32), names)
    super().__init__(f"folder:{listing.root}", files,
                     features(listing.class_names)["label"])


def image_files(path: str) -> list[str]:
  """The images (by extension, `IMAGE_EXTENSIONS`) under the folder `path`, recursively:
  each folder's files by name, then its sub-folders'; hidden entries skipped. Paths
  start with `path`."""
  return [p for p, _ in _files(path, path.rstrip("/"))
          if p.lower().endswith(IMAGE_EXTENSIONS)]


# ----------------------------------------------------------------------- converted copies

def _tfds_root(data_dir: str | None) -> str:
  return os.path.abspath(os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR))


def _absolute(root: str) -> str:
  return os.path.abspath(os.path.expanduser(root))


def _base_name(root: str) -> str:
  """The folder's name, lower case, [a-z0-9_]."""
  name = re.sub(r"[^a-z0-9_]+", "_", os.path.basename(root.rstrip("/")).lower()).strip("_")
  return name or "root"


def config_name(root: str) -> str:
  """The converted copy's TFDS config name: the folder's name (lower case, [a-z0-9_]) and a
  hash of its absolute path, so that each folder has a copy of its own."""
  digest = hashlib.sha256(_absolute(root).encode("utf-8", "surrogateescape")).hexdigest()
  return f"{_base_name(root)}_{digest[:8]}"


def converted_dir(root: str, data_dir: str | None = None) -> str:
  """Where `python -m gcp.data.folder root data_dir` writes its copy of `root`."""
  return os.path.join(_tfds_root(data_dir), CONVERTED_NAME, config_name(root),
                      CONVERTED_VERSION)


def command(root: str, data_dir: str | None = None) -> str:
  """The command that converts `root` into `data_dir` (or rebuilds its copy there)."""
  return (f"python -m gcp.data.folder {shlex.quote(_absolute(root))} "
          f"{shlex.quote(_tfds_root(data_dir))}")


def _file_lines(listing: Listing) -> list[str]:
  """`<relative path>\t<size>\t<mtime_ns>` of each image, sorted: what is fingerprinted."""
  return [f"{rel}\t{size}\t{mtime}\n" for rel, (size, mtime) in sorted(listing.stats.items())]


def _digest(lines: list[str]) -> str:
  return hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def fingerprint(listing: Listing) -> str:
  """sha256 of the folder's images: their relative paths, sizes and modification times."""
  return _digest(_file_lines(listing))


def _write_record(target: str, root: str, listing: Listing) -> None:
  """Records beside the copy `target` its folder `root` and the folder's images as listed."""
  lines = _file_lines(listing)
  with gzip.open(os.path.join(target, FILES_FILE), "wt", encoding="utf-8",
                 errors="surrogateescape") as f:
    f.writelines(lines)
  with open(os.path.join(target, SOURCE_FILE), "w") as f:
    json.dump({"source": root, "fingerprint": _digest(lines), "images": len(lines),
               "converted": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)


def _read_record(target: str) -> dict:
  try:
    with open(os.path.join(target, SOURCE_FILE)) as f:
      record = json.load(f)
    return record if isinstance(record, dict) else {}
  except (OSError, ValueError):
    return {}


def _changes(target: str, listing: Listing) -> str:
  """What differs between the images listed now and those the copy `target` recorded:
  `images: 2 added, 1 removed`."""
  recorded = {}
  try:
    with gzip.open(os.path.join(target, FILES_FILE), "rt", encoding="utf-8",
                   errors="surrogateescape") as f:
      for line in f:
        rel, size, mtime = line.rstrip("\n").rsplit("\t", 2)
        recorded[rel] = (int(size), int(mtime))
  except (OSError, ValueError, EOFError):
    return "its list of the folder's files is missing or damaged"
  now = listing.stats
  counts = {"added": len(now.keys() - recorded.keys()),
            "removed": len(recorded.keys() - now.keys()),
            "modified (size or time)": sum(now[k] != recorded[k]
                                           for k in now.keys() & recorded.keys())}
  changed = [f"{n:,} {what}" for what, n in counts.items() if n]
  return f"images: {', '.join(changed)}" if changed else "its recorded fingerprint differs"


def _mismatch(target: str, root: str, listing: Listing) -> str | None:
  """Why the copy `target` does not match the folder `root` as listed now (None: it
  does)."""
  record = _read_record(target)
  if "fingerprint" not in record:
    return ("it records no fingerprint of its folder (written by an earlier version of "
            "gcp)")
  if record.get("source") != root:
    return f"it was converted from {record.get('source')}"
  if record["fingerprint"] == fingerprint(listing):
    return None
  return (f"{_changes(target, listing)} since it was converted "
          f"({record.get('converted', 'at an unknown time')})")


def _has_copy(target: str) -> bool:
  return os.path.exists(os.path.join(target, "dataset_info.json"))


def _earlier_copy(root: str, data_dir: str | None) -> str:
  """A note on a copy of `root` written by an earlier version of gcp (found by the
  folder's name only, so never used), or ""."""
  old = os.path.join(_tfds_root(data_dir), CONVERTED_NAME, _base_name(root),
                     CONVERTED_VERSION)
  if not _has_copy(old) or _read_record(old).get("source", root) != root:
    return ""
  return (f" (the copy {old} was written by an earlier version of gcp, which did not tie "
          f"a copy to its folder: it is not used; delete it)")


def load(root: str, data_dir: str | None = None, max_direct: int = MAX_DIRECT_IMAGES):
  """The folder `root`: its converted copy in `data_dir` if there is one and it matches the
  folder (or the folder is not on this machine), else the folder itself (a
  `FolderSource`) if it holds at most `max_direct` images. A copy that does not match a
  folder of at most `max_direct` images is rebuilt first (by process 0).

  Raises:
    FileNotFoundError: no copy, and the folder is missing or empty (the message shows the
      expected layout).
    ValueError: the folder is larger than `max_direct`, and it has no copy, or its copy
      does not match it (the message says what changed and gives the command that
      converts it).
  """
  root = _absolute(root)
  target = converted_dir(root, data_dir)
  if not _has_copy(target):
    listing = scan(root, limit=max_direct)
    if listing.truncated:
      raise ValueError(
          f"image folder {root} holds more than {max_direct:,} images: convert it once into "
          f"a TFDS data set, which is read much faster, with\n\n  {command(root, data_dir)}"
          f"\n\nthen keep config.data.name='folder:{root}' and set "
          f"config.data.data_dir={_tfds_root(data_dir)!r}{_earlier_copy(root, data_dir)}")
    return FolderSource(listing)
  if not os.path.isdir(root):
    logging.info("image folder %s is not on this machine: using its converted copy %s "
                 "without checking that it matches the folder", root, target)
    return tfds.builder_from_directory(target)
  listing = scan(root)
  mismatch = _mismatch(target, root, listing)
  if mismatch is None:
    return tfds.builder_from_directory(target)
  if len(listing.stats) > max_direct:
    raise ValueError(
        f"the converted copy {target} of the image folder {root} does not match the "
        f"folder: {mismatch}. A copy that does not match its folder is never used. Rebuild "
        f"it ({len(listing.stats):,} images; the new copy replaces the old one once it is "
        f"complete) with\n\n  {command(root, data_dir)}\n")
  logging.warning("rebuilding the converted copy %s of the image folder %s: %s", target,
                  root, mismatch)
  on_first_process(lambda: convert(root, data_dir, listing=listing), f"rebuilt {target}")
  return tfds.builder_from_directory(target)


def _checked_examples(listing: Listing, split: str, ids: dict, stats: dict, bar):
  """(key, example) of the images of `split` that decode; the others listed in stats."""
  files = listing.splits[split]
  paths = [os.path.join(listing.root, rel) for rel, _ in files]

  def load_and_check(i, path):
    data = tf.io.read_file(path)
    shape = tf.shape(preprocess.decode(data, 3))  # raises if the image does not decode
    return i, data, shape

  ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
  ds = ds.map(preprocess.without_autograph(load_and_check), num_parallel_calls=tf.data.AUTOTUNE,
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


@contextlib.contextmanager
def quiet_tfds():
  """Silences TFDS's messages and progress bars (while it writes a copy, they name the
  temporary folder, and our progress bar and summary say what it did)."""
  logger = logging.get_absl_logger()
  level = logger.level
  logger.setLevel("ERROR")
  bars = tfds.core.utils.tqdm_utils._active  # pylint: disable=protected-access
  tfds.disable_progress_bar()
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.display_progress_bar(bars)
    logger.setLevel(level)


def convert(root: str, data_dir: str | None = None, *, file_format: str = "tfrecord",
            progress: bool = True, listing: Listing | None = None) -> dict:
  """Writes the folder `root` as the TFDS data set `converted_dir(root, data_dir)`, with
  the folder's fingerprint; an earlier copy there is replaced once the new one is complete
  (it is written beside it first, so an interrupted conversion leaves no partial copy).

  Images are stored as they are (no re-encoding) after a check that they decode; those
  that do not are left out, logged and returned. `listing`: the folder as `scan` listed it
  (default: listed here). Returns `{split: {"images": n, "skipped": [relative paths]}}`.
  """
  import tqdm
  root = _absolute(root)
  target = converted_dir(root, data_dir)
  listing = listing or scan(root)
  ids = {name: i for i, name in enumerate(listing.class_names)}
  total = sum(len(f) for f in listing.splits.values())
  stats = {}
  partial = os.path.join(_tfds_root(data_dir), CONVERTED_NAME, f".{config_name(root)}.partial")
  shutil.rmtree(partial, ignore_errors=True)  # left by a conversion that was killed
  bar = tqdm.tqdm(total=total, unit="img", desc=f"converting {os.path.basename(root)}",
                  disable=not progress, dynamic_ncols=True)
  try:
    with quiet_tfds():  # our bar counts images over all splits
      tfds.dataset_builders.store_as_tfds_dataset(
          name=CONVERTED_NAME, version=CONVERTED_VERSION, config=config_name(root),
          features=features(listing.class_names, file_name=True),
          split_datasets={split: _checked_examples(listing, split, ids, stats, bar)
                          for split in listing.splits},
          data_dir=partial, file_format=file_format,
          description=f"The image folder {root} (ImageFolder layout), converted by "
                      "gcp.data.folder; images stored as they were.")
    written = os.path.join(partial, CONVERTED_NAME, config_name(root), CONVERTED_VERSION)
    _write_record(written, root, listing)
    replace_dir(written, target)
  finally:
    bar.close()
    shutil.rmtree(partial, ignore_errors=True)
  for split, s in stats.items():
    if s["skipped"]:
      logging.warning("%s/%s: skipped %d image(s) that do not decode: %s%s", root, split,
                      len(s["skipped"]), ", ".join(s["skipped"][:10]),
                      " ..." if len(s["skipped"]) > 10 else "")
  return stats


# ------------------------------------------------------- helpers of the data sources' files

def replace_dir(new: str, target: str) -> None:
  """Moves the complete folder `new` to `target`, replacing the folder there if any.
  Readers find the old folder or the new one, never a mix: the old one is renamed away
  first (a crash between the two renames leaves no `target`, and the old folder as
  `<target>.old`, which the next replacement removes)."""
  old = target.rstrip("/") + ".old"
  shutil.rmtree(old, ignore_errors=True)
  os.makedirs(os.path.dirname(target), exist_ok=True)
  if os.path.lexists(target):
    os.rename(target, old)
  os.rename(new, target)
  shutil.rmtree(old, ignore_errors=True)


def on_first_process(fn, what: str) -> None:
  """Runs `fn` (which writes to a data directory all hosts share) on process 0 only; the
  other processes wait until it is done."""
  import jax  # pylint: disable=import-outside-toplevel
  if jax.process_index() == 0:
    fn()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(what)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gcp.data.folder",
      description="Convert an image folder (ImageFolder layout) into a TFDS data set once, "
                  "for fast training with --config.data.name=folder:SOURCE "
                  "--config.data.data_dir=DATA_DIR. A copy that no longer matches its "
                  "folder (images added, removed or modified) is replaced; one that "
                  "matches is kept.",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=expected_layout("SOURCE"))
  parser.add_argument("source", help="the image folder (one sub-folder per split)")
  parser.add_argument("data_dir", nargs="?", default=None,
                      help=f"TFDS data directory for the copy (default: "
                           f"{tfds.core.constants.DATA_DIR})")
  parser.add_argument("--file_format", default="tfrecord",
                      choices=("tfrecord", "array_record"))
  args = parser.parse_args(argv)
  root = _absolute(args.source)
  target = converted_dir(root, args.data_dir)
  train = (f"train with --config.data.name=folder:{shlex.quote(root)} "
           f"--config.data.data_dir={shlex.quote(_tfds_root(args.data_dir))}")
  try:
    listing = scan(root)
    if _has_copy(target):
      mismatch = _mismatch(target, root, listing)
      if mismatch is None:
        print(f"{target} is up to date: it matches the {len(listing.stats):,} images of "
              f"{root}\n{train}")
        return 0
      print(f"replacing {target}: {mismatch}")
    stats = convert(root, args.data_dir, file_format=args.file_format, listing=listing)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  for split, s in stats.items():
    print(f"{split}: {s['images']:,} images" +
          (f", {len(s['skipped'])} skipped (do not decode)" if s["skipped"] else ""))
  print(f"wrote {target}\n{train}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
