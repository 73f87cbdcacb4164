"""ImageNet from the official tars: the real TFDS `imagenet2012` builder, offline, on tiny
tars written here in the official layout.

The builder needs neither all 1,000 classes nor all 50,000 validation images:
- ILSVRC2012_img_train.tar holds one tar per class (`n01440764.tar`, ...) of JPEGs; the
  label is the inner tar's name, looked up in the 1,000 synsets of TFDS's `labels.txt`, so
  any subset of classes works.
- ILSVRC2012_img_val.tar holds JPEGs; TFDS labels them by zipping their sorted file names
  with the lines of the `validation_labels.txt` it ships (line i: synset of the i-th
  official validation image). The first N official names
  `ILSVRC2012_val_00000001.JPEG` ... therefore get their true labels, which the test reads
  from that same file.
- The test tar (ILSVRC2012_img_test.tar) is optional; TFDS only warns that it is absent.
No checksums are verified for manually placed files, so tiny tars pass.
"""
import io
import os
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds

import gcp.data
from gcp.data import imagenet

SYNSETS = ["n01440764", "n01443537", "n01484850"]
TRAIN_PER_CLASS = 3
NUM_VAL = 7  # not a multiple of the evaluation batch of 4
MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


def _synsets() -> list[str]:
  with open(tfds.core.tfds_path("datasets/imagenet2012/labels.txt")) as f:
    return f.read().split()


def _validation_synsets(n: int) -> list[str]:
  with open(tfds.core.tfds_path("datasets/imagenet2012/validation_labels.txt")) as f:
    return f.read().split()[:n]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, images):
  """(data_dir, validation colours, validation labels) of imagenet2012 prepared from tars."""
  root = tmp_path_factory.mktemp("imagenet")
  manual = root / "tars"
  manual.mkdir()
  colors = images.colors(len(SYNSETS) * TRAIN_PER_CLASS + NUM_VAL)
  outer = io.BytesIO()
  with tarfile.open(fileobj=outer, mode="w") as train:
    for c, synset in enumerate(SYNSETS):
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as tar:
        for i in range(TRAIN_PER_CLASS):
          _add(tar, f"{synset}_{i}.JPEG",
               images.jpeg(colors[c * TRAIN_PER_CLASS + i], (18 + 4 * i, 26)))
      _add(train, f"{synset}.tar", inner.getvalue())
  (manual / imagenet.TRAIN_TAR).write_bytes(outer.getvalue())
  val_colors = colors[-NUM_VAL:]
  with tarfile.open(manual / imagenet.VAL_TAR, "w") as val:
    for i in reversed(range(NUM_VAL)):  # TFDS sorts the names; the tar order is irrelevant
      _add(val, f"ILSVRC2012_val_{i + 1:08d}.JPEG", images.jpeg(val_colors[i], (24, 20)))
  data_dir = root / "tfds"
  data_dir.mkdir()
  assert imagenet.main([str(manual), str(data_dir)]) == 0  # the documented command
  labels = [_synsets().index(s) for s in _validation_synsets(NUM_VAL)]
  return str(data_dir), val_colors, np.array(labels)


def test_builder_serves_the_tars(prepared):
  data_dir, _, _ = prepared
  builder = gcp.data.load_builder("imagenet2012", data_dir)  # prepared: nothing to do
  assert gcp.data.num_classes(builder) == 1000
  assert gcp.data.num_examples(builder, "train") == len(SYNSETS) * TRAIN_PER_CLASS
  assert gcp.data.num_examples(builder, "validation") == NUM_VAL
  assert gcp.data.image_shape(builder, "train", "inception_crop(16)") == (16, 16, 3)


def test_training_batches(prepared):
  builder = gcp.data.load_builder("imagenet2012", prepared[0])
  kw = dict(split="train", pp="inception_crop(16)|flip_lr|normalize('imagenet')",
            per_host_batch=4, seed=0, epoch=0)
  batches = list(gcp.data.train_batches(builder, **kw))
  assert len(batches) == gcp.data.steps_per_epoch(builder, "train", 4) == 2
  for batch in batches:
    assert batch["image"].shape == (4, 16, 16, 3) and batch["image"].dtype == np.float32
    assert set(batch) == {"image", "label"}
    assert set(batch["label"]) <= {_synsets().index(s) for s in SYNSETS}
  again = list(gcp.data.train_batches(builder, **kw))
  np.testing.assert_array_equal(batches[1]["image"], again[1]["image"])


def test_evaluation_yields_every_image_once_padded_and_masked(prepared, images):
  data_dir, colors, labels = prepared
  builder = gcp.data.load_builder("imagenet2012", data_dir)
  pp = "resize_shorter(16)|center_crop(16)|normalize('imagenet')"
  batches = list(gcp.data.eval_batches(builder, split="validation", pp=pp,
                                       per_host_batch=4))
  assert len(batches) == gcp.data.num_eval_batches(builder, "validation", 4) == 2
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, np.arange(8) < NUM_VAL)
  assert all(b["image"].shape == (4, 16, 16, 3) for b in batches)
  image = np.concatenate([b["image"] for b in batches])[mask]
  label = np.concatenate([b["label"] for b in batches])[mask]
  which = images.identify(image, colors, MEAN, STD)
  assert sorted(which) == list(range(NUM_VAL))  # every validation image exactly once
  np.testing.assert_array_equal(label, labels[which])  # with its official label


def test_missing_tars_show_the_layout(tmp_path):
  with pytest.raises(FileNotFoundError) as err:
    gcp.data.load_builder("imagenet2012", str(tmp_path))
  message = str(err.value)
  assert f"{tmp_path}/downloads/manual does not exist" in message
  assert f"├── {imagenet.TRAIN_TAR}" in message and f"└── {imagenet.VAL_TAR}" in message
  assert "python -m gcp.data.imagenet" in message


def test_two_steps_of_training_then_every_image_scored(prepared, tmp_path):
  from gcp import train
  from gcp.config import base_config
  config = base_config()
  config.data.name, config.data.data_dir = "imagenet2012", prepared[0]
  config.data.eval_split = "validation"
  config.data.train_pp = "inception_crop(16)|flip_lr|normalize('imagenet')"
  config.data.eval_pp = "resize_shorter(16)|center_crop(16)|normalize('imagenet')"
  config.model.update(arch="resnet18", width=4, small_input=True, reduction_dim=8)
  config.batch_size = config.eval_batch_size = 8  # 9 training images: one step per epoch
  config.num_epochs, config.log_every_steps = 2, 1
  metrics = train.train_and_evaluate(config, str(tmp_path))
  assert metrics["step"] == 2 and metrics["eval_examples"] == NUM_VAL
  assert np.isfinite(metrics["train_loss"]) and np.isfinite(metrics["eval_loss"])


def test_class_names_are_readable_in_the_tfds_label_order():
  wnids = tfds.builder_cls("imagenet2012").__module__  # the builder's own labels file
  labels = os.path.join(os.path.dirname(sys.modules[wnids].__file__), "labels.txt")
  with open(labels) as f:
    order = f.read().split()
  names = imagenet.class_names()
  assert len(names) == len(order) == 1000 and len(set(names)) == 1000
  assert names[0] == "tench, Tinca tinca" and names[1] == "goldfish, Carassius auratus"
  assert imagenet.readable([order[999], "cat"]) == [names[999], "cat"]
