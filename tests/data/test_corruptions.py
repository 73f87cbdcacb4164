"""ImageNet-C-style corruptions: shape and range kept, every severity changes the image,
stronger severities change it more, randomness reproducible per image and seed, and the
`corrupt` preprocessing op."""
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from gcp.data import corruptions, preprocess

# Ordered by pixel distance from the clean image (mean |difference|) in ImageNet-C's own
# parameter tables. Not so: frost (the image fades while the frost weight grows: ordered
# by 1 - correlation with the clean image instead), fog (a rougher fractal at severity 4
# than at 3, same amount), snow (fewer, larger flakes at 3 than at 2) and
# elastic_transform (1-2 are large affine warps, 3-5 local elastic ones): for these three
# the test checks that every severity changes the image.
BY_DISTANCE = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur",
               "motion_blur", "zoom_blur", "brightness", "contrast", "pixelate",
               "jpeg_compression")
BY_CORRELATION = ("frost",)
SEEDS = (0, 1, 2)


def natural_image(size=64, seed=0) -> np.ndarray:
  """A smooth colour image (upsampled noise plus a gradient) in [20, 250], `[size, size,
  3]`: structure at several scales, like a photograph, unlike white noise."""
  rng = np.random.default_rng(seed)
  coarse = rng.normal(size=(1, size // 8 + 2, size // 8 + 2, 3))
  x = tf.image.resize(coarse, (size, size), method="bicubic")[0].numpy()
  x = (x - x.min()) / (x.max() - x.min()) * 200 + 20 + np.linspace(0, 30, size)[None, :, None]
  return np.clip(x, 0, 255).astype(np.float32)


def corrupt(image, name, severity, seed):
  return corruptions.corruption(name, severity)(tf.constant(image),
                                                tf.constant([seed, 7], tf.int64)).numpy()


@pytest.fixture(scope="module")
def sweeps():
  """{corruption: [per severity: [per seed: corrupted image]]} of one 64 px image."""
  image = natural_image()
  return image, {name: [[corrupt(image, name, s, seed) for seed in SEEDS]
                        for s in corruptions.SEVERITIES]
                 for name in corruptions.CORRUPTIONS}


def test_families_cover_imagenet_c():
  assert sum(len(v) for v in corruptions.FAMILIES.values()) == 15
  assert set(BY_DISTANCE + BY_CORRELATION + ("fog", "snow", "elastic_transform")) == set(
      corruptions.CORRUPTIONS)


@pytest.mark.parametrize("name", corruptions.CORRUPTIONS)
def test_shape_range_and_change(sweeps, name):
  image, results = sweeps
  for severity, outputs in zip(corruptions.SEVERITIES, results[name]):
    for out in outputs:
      assert out.shape == image.shape and out.dtype == np.float32
      assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 255.0
    # Every severity changes the image: by more than 0.2 grey levels on average.
    assert np.mean([np.abs(o - image).mean() for o in outputs]) > 0.2, (name, severity)


@pytest.mark.parametrize("name", BY_DISTANCE + BY_CORRELATION)
def test_monotone_in_severity(sweeps, name):
  image, results = sweeps
  if name in BY_DISTANCE:
    change = lambda out: np.abs(out - image).mean()  # noqa: E731
  else:
    change = lambda out: 1 - np.corrcoef(out.ravel(), image.ravel())[0, 1]  # noqa: E731
  means = [np.mean([change(o) for o in outputs]) for outputs in results[name]]
  assert all(b >= a for a, b in zip(means, means[1:])), (name, means)


def test_gray_images_keep_one_channel():
  digit = np.zeros((28, 28, 1), np.float32)
  digit[6:22, 12:16] = 255.0
  for name in corruptions.CORRUPTIONS:
    out = corrupt(digit, name, 5, 0)
    assert out.shape == (28, 28, 1) and 0.0 <= out.min() and out.max() <= 255.0, name


def test_randomness_is_per_image_and_seed():
  image = natural_image()
  first = corrupt(image, "gaussian_noise", 3, 0)
  np.testing.assert_array_equal(first, corrupt(image, "gaussian_noise", 3, 0))
  assert not np.array_equal(first, corrupt(image, "gaussian_noise", 3, 1))
  # The evaluation pipeline gives every example the same seed: another image still gets
  # other noise (the op folds in a hash of the image).
  other = natural_image(seed=1)
  noise = lambda x: corrupt(x, "gaussian_noise", 1, 0) - x  # noqa: E731
  middle = (slice(16, 48), slice(16, 48))  # clear of clipping at 0 and 255
  assert np.abs(noise(image)[middle] - noise(other)[middle]).mean() > 5.0


def test_corrupt_preprocessing_op():
  image = natural_image()
  fn = preprocess.build("corrupt('contrast', 4)|normalize(127.5, 127.5)")
  out = fn(tf.constant(image), tf.constant([3, 4], tf.int64)).numpy()
  expected = (corrupt(image, "contrast", 4, 0) - 127.5) / 127.5  # contrast draws nothing
  np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)


def test_bad_arguments_name_the_fix():
  with pytest.raises(ValueError, match="unknown corruption 'rain'; valid: gaussian_noise"):
    preprocess.build("corrupt('rain', 1)")
  with pytest.raises(ValueError, match=r"severity must be one of \(1, 2, 3, 4, 5\), got 6"):
    corruptions.corruption("fog", 6)
  fn = tf.function(corruptions.corruption("fog", 1),
                   input_signature=[tf.TensorSpec([None, None, 3]), tf.TensorSpec([2], tf.int64)])
  with pytest.raises(ValueError, match="needs a fixed-size image.*center_crop"):
    fn.get_concrete_function()


@pytest.mark.parametrize("mode, sigma", [("nearest", 1.5), ("reflect", 0.7),
                                         ("reflect", 40.0)])  # 40: wider than the image
def test_gaussian_blur_matches_scipy(mode, sigma):
  x = np.random.default_rng(0).uniform(size=(20, 17, 3)).astype(np.float32)
  expected = ndimage.gaussian_filter(x.astype(np.float64), (sigma, sigma, 0), mode=mode,
                                     truncate=3.0)
  out = corruptions._gaussian_blur(tf.constant(x), sigma, mode, truncate=3.0).numpy()
  np.testing.assert_allclose(out, expected, atol=1e-5)  # float32 matrix products


def test_bilinear_sampling_and_filtering_match_scipy():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(9, 11, 2))
  ys, xs = rng.uniform(-3, 12, size=(2, 9, 11))  # inside and outside the image
  out = corruptions._sample_bilinear(tf.constant(x, tf.float32), tf.constant(ys, tf.float32),
                                     tf.constant(xs, tf.float32)).numpy()
  for c in range(2):
    expected = ndimage.map_coordinates(x[..., c], [ys, xs], order=1, mode="reflect")
    np.testing.assert_allclose(out[..., c], expected, atol=1e-5)
  kernel = corruptions._disk_kernel(2.5, 0.5)
  np.testing.assert_allclose(kernel.sum(), 1.0, rtol=1e-6)
  filtered = corruptions._conv_reflect(tf.constant(x, tf.float32), kernel).numpy()
  for c in range(2):  # OpenCV's BORDER_REFLECT_101 is scipy's 'mirror'
    expected = ndimage.correlate(x[..., c], kernel.astype(np.float64), mode="mirror")
    np.testing.assert_allclose(filtered[..., c], expected, atol=1e-5)
