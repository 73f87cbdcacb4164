"""ImageNet-1k (ILSVRC 2012) from the official tars, as the TFDS data set `imagenet2012`.

Download the two tars from image-net.org (registration needed) into one directory:

    /path/to/tars/
    ├── ILSVRC2012_img_train.tar    138 GB: n01440764.tar, n01443537.tar, ... (one tar of
    │                               JPEGs per class synset, 1,281,167 images)
    └── ILSVRC2012_img_val.tar      6.3 GB: ILSVRC2012_val_00000001.JPEG ... _00050000.JPEG

and prepare the TFDS data set once (it reads the tars, writes about 150 GB of TFRecords
under DATA_DIR/imagenet2012/5.1.0/ and takes hours; nothing is downloaded):

    python -m gcp.data.imagenet /path/to/tars /path/to/tensorflow_datasets

which is `tfds build imagenet2012 --manual_dir=/path/to/tars --data_dir=...` with a check
of the layout first (TFDS needs the `importlib_resources` package for this step; it is a
dependency of gcp). Then train and evaluate with

    python main.py --config configs/imagenet.py --config.data.data_dir=/path/to/tensorflow_datasets

(splits `train` and `validation`; labels 0-999 in the sorted order of the synset ids, as
torchvision's ImageFolder numbers them). TFDS takes the validation labels from the file
`validation_labels.txt` it ships: line i is the synset of the i-th validation image in
sorted file-name order. If the tars are instead in `DATA_DIR/downloads/manual/`, the
first training run prepares the data set itself (on process 0; other hosts wait).
"""
import argparse
import collections
import functools
import os
import sys

import tensorflow_datasets as tfds

# WordNet id and lemmas of each class, in imagenet2012's label order (sources in the file).
CLASSES_FILE = os.path.join(os.path.dirname(__file__), "imagenet2012_classes.tsv")
TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"

LAYOUT = f"""\
{{manual_dir}}/
├── {TRAIN_TAR}    one tar per class: n01440764.tar, n01443537.tar, ...
│                                 (each holding that class's JPEGs)
└── {VAL_TAR}      ILSVRC2012_val_00000001.JPEG ... ILSVRC2012_val_00050000.JPEG"""


@functools.cache
def _lemmas() -> dict[str, str]:
  """WordNet id -> its lemmas; two synsets share theirs ('crane', 'maillot'): those get
  their id too, so that every name is unique."""
  with open(CLASSES_FILE) as f:
    pairs = [line.rstrip("\n").split("\t", 1) for line in f if not line.startswith("#")]
  count = collections.Counter(lemma for _, lemma in pairs)
  return {wnid: lemma if count[lemma] == 1 else f"{lemma} ({wnid})" for wnid, lemma in pairs}


def class_names() -> list[str]:
  """The 1,000 ImageNet classes, readable ("tench, Tinca tinca"), in the order of TFDS
  imagenet2012's labels (its sorted WordNet ids, as ImageFolder numbers the release
  models' outputs)."""
  return list(_lemmas().values())


def readable(names: list[str]) -> list[str]:
  """`names` with ImageNet WordNet ids ("n01440764") replaced by their lemmas."""
  lemmas = _lemmas()
  return [lemmas.get(name, name) for name in names]


def default_manual_dir(builder) -> str:
  """TFDS's default manual directory: `<data_dir>/downloads/manual`."""
  return os.path.join(builder.data_dir_root, "downloads", "manual")


def expected_layout(manual_dir: str) -> str:
  return LAYOUT.format(manual_dir=manual_dir.rstrip("/"))


def check_manual_dir(manual_dir: str, data_dir: str | None = None) -> None:
  """Raises FileNotFoundError, showing the expected layout and the prepare command, unless
  `manual_dir` holds both official tars."""
  missing = [t for t in (TRAIN_TAR, VAL_TAR)
             if not os.path.isfile(os.path.join(manual_dir, t))]
  if not missing:
    return
  where = ("does not exist" if not os.path.isdir(manual_dir)
           else f"lacks {' and '.join(missing)}")
  raise FileNotFoundError(
      f"imagenet2012 is not prepared{f' in {data_dir}' if data_dir else ''}, and its "
      f"manual directory {manual_dir} {where}. TFDS prepares it once from the official "
      f"tars (from image-net.org), laid out as\n\n{expected_layout(manual_dir)}\n\n"
      f"with: python -m gcp.data.imagenet /path/to/tars "
      f"{data_dir or '/path/to/tensorflow_datasets'}")


def prepare(manual_dir: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """Prepares `imagenet2012` in `data_dir` (default: TFDS's) from the tars in `manual_dir`
  (no-op if it is prepared already). Returns the builder."""
  builder = tfds.builder("imagenet2012", data_dir=data_dir)
  if builder.is_prepared():
    return builder
  check_manual_dir(manual_dir, data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gcp.data.imagenet",
      description="Prepare the TFDS data set imagenet2012 once from the official tars.",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="MANUAL_DIR layout:\n\n" + expected_layout("MANUAL_DIR"))
  parser.add_argument("manual_dir", help="directory holding the two official tars")
  parser.add_argument("data_dir", nargs="?", default=None,
                      help=f"TFDS data directory (default: {tfds.core.constants.DATA_DIR})")
  args = parser.parse_args(argv)
  try:
    builder = prepare(args.manual_dir, args.data_dir)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  splits = ", ".join(f"{name}: {info.num_examples:,}"
                     for name, info in builder.info.splits.items())
  print(f"imagenet2012 is prepared in {builder.data_dir} ({splits}); train with "
        f"--config.data.data_dir={builder.data_dir_root}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
