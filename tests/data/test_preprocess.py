"""Preprocessing ops and the op-string parser."""
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
    ("blur(3)", r"unknown preprocessing op 'blur'; available: \["),
    ("resize(28", r"cannot parse preprocessing op 'resize\(28'"),
    ("normalize('cifar')", r"unknown normalisation preset 'cifar'"),
])
def test_bad_op_strings_say_what_is_wrong(pp, match):
  with pytest.raises(ValueError, match=match):
    preprocess.build(pp)
