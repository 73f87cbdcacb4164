"""Preprocessing ops and the op-string parser."""
import os

import numpy as np
import pytest
import tensorflow as tf

from gcp.data import preprocess

IMAGE = tf.constant(np.random.default_rng(0).integers(0, 256, (40, 60, 3)), tf.uint8)
SEED = tf.constant([1, 2], tf.int64)


def run(pp, image=IMAGE, seed=SEED):
  return preprocess.build(pp)(image, seed).numpy()


def test_normalize_imagenet():
  got = run("normalize('imagenet')")
  mean = np.array([0.485, 0.456, 0.406]) * 255
  std = np.array([0.229, 0.224, 0.225]) * 255
  np.testing.assert_allclose(got, (IMAGE.numpy() - mean) / std, rtol=1e-5, atol=1e-5)


def test_eval_resize_shorter_then_center_crop():
  got = run("resize_shorter(32)|center_crop(32)")
  assert got.shape == (32, 32, 3)


def test_ten_crop_views_are_centre_corners_and_mirrors():
  image = np.arange(6 * 8, dtype=np.float32).reshape(6, 8, 1)
  views = preprocess.build("ten_crop(4)")(tf.constant(image), tf.zeros([2], tf.int64)).numpy()
  assert views.shape == (10, 4, 4, 1)
  for view, (y, x) in zip(views[:5], [(1, 2), (0, 0), (0, 4), (2, 0), (2, 4)]):
    np.testing.assert_array_equal(view, image[y:y + 4, x:x + 4])
  np.testing.assert_array_equal(views[5:], views[:5, :, ::-1])


def test_random_crop_with_padding_is_a_shifted_window():
  image = tf.reshape(tf.range(1, 28 * 28 + 1, dtype=tf.float32), (28, 28, 1))
  got = run("random_crop(28, pad=2)", image)
  padded = np.pad(image.numpy(), ((2, 2), (2, 2), (0, 0)))
  windows = [padded[i:i + 28, j:j + 28] for i in range(5) for j in range(5)]
  assert any(np.array_equal(got, w) for w in windows)


def test_random_ops_are_deterministic_in_the_seed():
  pp = "inception_crop(24)|flip_lr"
  np.testing.assert_array_equal(run(pp), run(pp))
  others = [run(pp, seed=tf.constant([1, s], tf.int64)) for s in range(3, 8)]
  assert any(not np.array_equal(run(pp), o) for o in others)
  assert run(pp).shape == (24, 24, 3)


def test_rgb_repeats_gray():
  gray = tf.constant(np.arange(12, dtype=np.uint8).reshape(2, 6, 1))
  got = run("rgb", gray)
  assert got.shape == (2, 6, 3)
  np.testing.assert_array_equal(got[..., 0], got[..., 2])


@pytest.mark.parametrize("pp, match", [
    ("blur(3)", r"unknown preprocessing op 'blur'; available: center_crop, corrupt, "),
    ("resize(28", r"cannot parse preprocessing op 'resize\(28'"),
    ("normalize('cifar')", r"unknown normalisation preset 'cifar'"),
])
def test_bad_op_strings_say_what_is_wrong(pp, match):
  with pytest.raises(ValueError, match=match):
    preprocess.build(pp)


# ------------------------------------------------------------- fused decode-and-crop

def _smooth_jpeg(h=75, w=100):
  y, x = np.mgrid[0:h, 0:w]
  pixels = np.stack([y * 3, x * 2, x + y], -1).astype(np.uint8)
  return tf.io.encode_jpeg(pixels, quality=95), pixels


def test_fused_inception_crop_shape_range_and_determinism():
  data, _ = _smooth_jpeg()
  pre = preprocess.build("inception_crop(24)|flip_lr")
  got = pre(data, SEED).numpy()
  assert got.shape == (24, 24, 3) and got.dtype == np.float32
  assert 0 <= got.min() and got.max() <= 255
  np.testing.assert_array_equal(got, pre(data, SEED).numpy())
  assert not np.array_equal(got, pre(data, tf.constant([1, 3], tf.int64)).numpy())


def test_fused_crop_is_the_unfused_crop():
  """Same window for the same seed: decode-then-crop and decode-the-window agree to JPEG
  rounding; a PNG (not fusable) goes through the unfused op exactly."""
  data, pixels = _smooth_jpeg()
  png = tf.io.encode_png(pixels)
  pre = preprocess.build("inception_crop(32)|flip_lr")
  for s in range(12):
    seed = tf.constant([5, s], tf.int64)
    unfused = pre(tf.io.decode_jpeg(data), seed).numpy()
    assert np.abs(pre(data, seed).numpy() - unfused).mean() < 0.1
    np.testing.assert_array_equal(pre(png, seed).numpy(), pre(tf.constant(pixels), seed))


def test_fused_crop_distribution_matches_the_unfused_op():
  """Area fraction and aspect ratio of the decoded windows over many seeds: as the unfused
  op's windows, within scale 0.08-1 and ratio 3/4-4/3 (or the whole image). (TF's sampler
  draws the height uniformly, so the mean area fraction is below torchvision's 0.43: about
  0.37 here.)"""
  data, _ = _smooth_jpeg(120, 160)
  pre = preprocess.build("inception_crop(16)")
  fused, unfused = [], []
  for s in range(300):
    seed = tf.constant([7, s], tf.int64)
    fused.append(pre.decode(data, seed).shape[:2])  # the window decode_and_crop decoded
    window = preprocess.inception_window(tf.constant([120, 160, 3]),
                                         tf.random.experimental.stateless_fold_in(seed, 0))
    unfused.append(window.numpy()[2:])
  fused, unfused = np.array(fused, float), np.array(unfused, float)
  area = fused.prod(1) / (120 * 160)
  assert abs(area.mean() - unfused.prod(1).mean() / (120 * 160)) < 0.01
  np.testing.assert_array_equal(fused, unfused)  # indeed the same window seed by seed
  assert 0.3 < area.mean() < 0.45 and area.min() >= 0.075 and area.max() <= 1
  ratio = fused[:, 1] / fused[:, 0]
  partial = area < 1
  assert (ratio[partial] > 0.7).all() and (ratio[partial] < 1.4).all()


def test_encoded_images_decode_to_the_stored_shape():
  gray = tf.io.encode_png(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28, 1) % 251)
  pre = preprocess.build("rgb", stored_shape=(28, 28, 1))
  out = pre(gray, SEED)
  assert out.shape == (28, 28, 3)
  assert preprocess.build("resize_shorter(16)|center_crop(16)")(
      _smooth_jpeg()[0], SEED).shape == (16, 16, 3)


def test_readme_lists_every_op_as_the_list_command_prints_them(capsys):
  readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
  begin = "<!-- op table: python -m gcp.data.preprocess --list"
  start = readme.index("\n", readme.index(begin)) + 1
  assert preprocess.main(["--list"]) == 0
  printed = capsys.readouterr().out
  assert readme[start:readme.index("<!-- end of op table -->")].strip() == printed.strip(), (
      "the README's op table is out of date: paste the output of "
      "python -m gcp.data.preprocess --list")
  assert printed.count("\n| `") == len(preprocess._OPS) + 2  # + the 2 frame samplings
