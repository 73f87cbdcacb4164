"""ImageNet-C's corruptions: shape kept, 8-bit values, every severity changes the image,
stronger severities change it more, randomness reproducible per image and seed, the
`corrupt` preprocessing op, frost from a folder of photos, and the corruptions that
departed from ImageNet-C against test ports of its algorithms on 224 px photographs."""
import os

import matplotlib.cbook
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
from scipy import ndimage

from gcp.data import corruptions, preprocess

# Ordered by pixel distance from the clean image (mean |difference|) in ImageNet-C's own
# parameter tables. Not so: frost (the image fades while the frost weight grows: ordered
# by 1 - correlation with the clean image instead), fog (a rougher fractal at severity 4
# than at 3, same amount), glass_blur (one shuffle pass at 2, two at 1; three at 3, two
# at 4: its ordering is checked against ImageNet-C's below), snow (fewer, larger flakes at
# 3 than at 2) and elastic_transform (1-2 are large affine warps, 3-5 local elastic
# ones): for these the test checks that every severity changes the image.
BY_DISTANCE = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur",
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
  assert set(BY_DISTANCE + BY_CORRELATION +
             ("fog", "glass_blur", "snow", "elastic_transform")) == set(corruptions.CORRUPTIONS)


@pytest.mark.parametrize("name", corruptions.CORRUPTIONS)
def test_shape_range_and_change(sweeps, name):
  image, results = sweeps
  for severity, outputs in zip(corruptions.SEVERITIES, results[name]):
    for out in outputs:
      assert out.shape == image.shape and out.dtype == np.float32
      assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 255.0
      np.testing.assert_array_equal(out, np.floor(out))  # 8-bit values, as ImageNet-C's
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
  kernel = corruptions._disk_kernel(2.5, 0.5, 1.0)
  np.testing.assert_allclose(kernel.sum(), 1.0, rtol=1e-6)
  filtered = corruptions._conv_reflect(tf.constant(x, tf.float32), kernel).numpy()
  for c in range(2):  # OpenCV's BORDER_REFLECT_101 is scipy's 'mirror'
    expected = ndimage.correlate(x[..., c], kernel.astype(np.float64), mode="mirror")
    np.testing.assert_allclose(filtered[..., c], expected, atol=1e-5)


def test_frost_dir_only_for_frost_and_with_every_photo(tmp_path):
  with pytest.raises(ValueError, match=r"frost_dir is an option of frost only: write "
                     r"corrupt\('fog', 1\)"):
    preprocess.build(f"corrupt('fog', 1, frost_dir={str(tmp_path)!r})")
  Image.new("RGB", (300, 300)).save(tmp_path / "frost1.png")
  with pytest.raises(ValueError, match="lacks ImageNet-C's frost photos frost2.png, "
                     "frost3.png, frost4.jpg, frost5.jpg"):
    corruptions.corruption("frost", 1, str(tmp_path))


# ------------------------------------------------------- ImageNet-C's algorithms, ported
# Test ports of ImageNet-C's corruptions (`imagenet_c/corruptions.py`) for the five that
# departed from it, on 224 x 224 photographs. np.uint8 truncates, as ImageNet-C's
# `corrupt` does when it returns the image.

def photographs() -> list[np.ndarray]:
  """Three 224 x 224 uint8 photographs from matplotlib's sample photograph (Grace Hopper,
  600 x 512): the whole picture (resized, centre crop), and two full-resolution crops
  (face; uniform and medals)."""
  photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
  photo = photo.convert("RGB")
  whole = np.asarray(photo.resize((224, 262), Image.BILINEAR))[19:243]
  pixels = np.asarray(photo)
  return [whole, pixels[60:284, 150:374], pixels[370:594, 200:424]]


@pytest.fixture(scope="module")
def photos():
  return photographs()


def skimage_gaussian(x, sigma):
  """skimage.filters.gaussian(x, sigma, multichannel=True): edges repeated, 4 sigmas."""
  return ndimage.gaussian_filter(x, (sigma, sigma, 0), mode="nearest", truncate=4.0)


def cv2_gaussian_blur(x, ksize, sigma):
  """cv2.GaussianBlur(x, (ksize, ksize), sigma): cv2.getGaussianKernel's taps along each
  axis, edges mirrored about the edge pixel (BORDER_REFLECT_101: scipy's 'mirror')."""
  taps = np.exp(-(np.arange(ksize) - ksize // 2) ** 2 / (2 * sigma ** 2))
  taps /= taps.sum()
  return ndimage.correlate1d(ndimage.correlate1d(x, taps, 0, mode="mirror"), taps, 1,
                             mode="mirror")


def defocus_blur_reference(x, severity):
  """ImageNet-C's defocus_blur: the pixels of a 17 x 17 square (or 2 radius + 1 beyond
  radius 8) inside the disk, normalised, cv2-Gaussian-smoothed; cv2.filter2D per channel
  (edges BORDER_REFLECT_101)."""
  radius, alias = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
  grid = np.arange(-8, 9) if radius <= 8 else np.arange(-radius, radius + 1)
  ys, xs = np.meshgrid(grid, grid)
  disk = (xs ** 2 + ys ** 2 <= radius ** 2).astype(np.float32)
  kernel = cv2_gaussian_blur(disk / disk.sum(), 3 if radius <= 8 else 5, alias)
  out = np.stack([ndimage.correlate(x[..., c] / 255.0, kernel.astype(np.float64),
                                    mode="mirror") for c in range(3)], -1)
  return np.uint8(np.clip(out, 0, 1) * 255)


def pixelate_reference(x, severity):
  """ImageNet-C's pixelate: Pillow's BOX resize to int(224 c) and back."""
  c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
  small = Image.fromarray(x).resize((int(224 * c), int(224 * c)), Image.BOX)
  return np.asarray(small.resize((224, 224), Image.BOX))


def jpeg_reference(x, severity, tmp_path):
  """ImageNet-C's jpeg_compression: Pillow saves at the quality and reads back."""
  path = os.path.join(tmp_path, f"q{severity}.jpg")
  Image.fromarray(x).save(path, "JPEG", quality=[25, 18, 15, 10, 7][severity - 1])
  return np.asarray(Image.open(path))


def plasma_fractal_reference(rng, decay, size=256):
  """ImageNet-C's plasma_fractal: diamond-square on a `size` x `size` torus, wibble 100
  divided by `decay` per step; new points are the mean of their 4 neighbours plus
  wibble * uniform(-wibble, wibble) (squares' centres, then the edge midpoints)."""
  height = np.zeros((size, size))
  step, wibble = size, 100.0
  while step >= 2:
    half = step // 2
    at = np.arange(0, size, step)

    def value(*points):
      mean = sum(height[np.ix_(rows % size, cols % size)] for rows, cols in points) / 4
      return mean + wibble * rng.uniform(-wibble, wibble, mean.shape)  # noqa: B023
    mid = at + half
    height[np.ix_(mid, mid)] = value((at, at), (at + step, at), (at, at + step),
                                     (at + step, at + step))
    height[np.ix_(at, mid)] = value((at, at), (at, at + step), (at - half, mid), (mid, mid))
    height[np.ix_(mid, at)] = value((at, at), (at + step, at), (mid, at - half), (mid, mid))
    step, wibble = half, wibble / decay
  height -= height.min()
  return height / height.max()


def fog_reference(x, severity, rng):
  amount, decay = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
  x = x / 255.0
  peak = x.max()
  x = x + amount * plasma_fractal_reference(rng, decay)[:224, :224, None]
  return np.uint8(np.clip(x * peak / (peak + amount), 0, 1) * 255)


def glass_shuffle_reference(x, distance, dy, dx):
  """ImageNet-C's pixel "swap", in place, as it runs: from the bottom-right to the
  top-left, a tuple assignment on numpy views (which copies rather than swaps)."""
  for h in range(x.shape[0] - distance, distance, -1):
    for w in range(x.shape[1] - distance, distance, -1):
      source = h + dy[h, w], w + dx[h, w]
      x[h, w], x[source] = x[source], x[h, w]
  return x


def glass_blur_reference(x, severity, rng):
  sigma, distance, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2),
                                 (1.5, 4, 2)][severity - 1]
  x = np.uint8(skimage_gaussian(x / 255.0, sigma) * 255)
  for _ in range(iterations):
    dy, dx = rng.integers(-distance, distance, size=(2, *x.shape[:2]))  # randint(-d, d)
    glass_shuffle_reference(x, distance, dy, dx)
  return np.uint8(np.clip(skimage_gaussian(x / 255.0, sigma), 0, 1) * 255)


def psnr(a, b):
  return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b) ** 2))


def test_glass_shuffle_is_imagenet_c_sequential_copy():
  """The same offsets give the same pixels, bit for bit, as ImageNet-C's loop (values
  travel along chains of copies; rows 0..d and the last d - 1 stay)."""
  rng = np.random.default_rng(0)
  for distance in (1, 2, 4):
    x = rng.integers(0, 256, (31, 26, 3)).astype(np.uint8)
    dy, dx = rng.integers(-distance, distance, size=(2, 31, 26))
    expected = glass_shuffle_reference(x.copy(), distance, dy, dx)
    got = corruptions._glass_shuffle(tf.constant(x, tf.float32), tf.constant(dy, tf.int32),
                                     tf.constant(dx, tf.int32), distance).numpy()
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(expected, x)


@pytest.mark.parametrize("name", ["defocus_blur", "pixelate", "jpeg_compression"])
def test_deterministic_corruptions_match_imagenet_c(photos, name, tmp_path):
  """ImageNet-C's pixels at every severity: pixelate and jpeg_compression bit for bit,
  defocus_blur but for float rounding (a level on 2 % of the values at severity 1, whose
  kernel is 29 equal weights). The issue asked for 1 level on average; the old ops were
  0.3-2 levels off."""
  reference = {"defocus_blur": defocus_blur_reference, "pixelate": pixelate_reference,
               "jpeg_compression": lambda x, s: jpeg_reference(x, s, tmp_path)}[name]
  for severity in corruptions.SEVERITIES:
    for photo in photos:
      difference = np.abs(corrupt(photo, name, severity, 0) - reference(photo, severity))
      assert difference.max() <= 1 and difference.mean() <= 0.05, (
          name, severity, difference.max(), difference.mean())


@pytest.mark.parametrize("name, draws", [("fog", 12), ("glass_blur", 1)])
def test_random_corruptions_match_imagenet_c(photos, name, draws):
  """Mean PSNR to the clean photo within 1 dB of ImageNet-C's at every severity (a fog's
  PSNR varies by 1.2 dB from draw to draw, a glass blur's by 0.05 dB), and the severities
  in ImageNet-C's order where its PSNRs are 0.5 dB apart or more (fog 3 and 4, glass blur
  3 and 5 are as strong)."""
  reference = {"fog": fog_reference, "glass_blur": glass_blur_reference}[name]
  rng = np.random.default_rng(0)
  ours, theirs = [], []
  for severity in corruptions.SEVERITIES:
    ours.append(np.mean([psnr(corrupt(photo, name, severity, seed), photo)
                         for photo in photos for seed in range(draws)]))
    theirs.append(np.mean([psnr(reference(photo, severity, rng), photo)
                           for photo in photos for _ in range(draws)]))
  np.testing.assert_allclose(ours, theirs, atol=1.0, err_msg=name)
  for i in range(5):
    for j in range(5):
      if theirs[i] >= theirs[j] + 0.5:
        assert ours[i] > ours[j], (name, i + 1, j + 1, ours, theirs)


def test_fog_on_imagenet_c_draws_is_imagenet_c(photos, monkeypatch):
  """Fed the uniform draws of ImageNet-C's plasma fractal (in its order: squares' centres,
  then the two sets of edge midpoints, per step), fog gives ImageNet-C's pixels (float32
  against float64: a level here and there)."""
  rng = np.random.default_rng(1)
  for severity in corruptions.SEVERITIES:
    draws = []

    class Recorder:
      @staticmethod
      def uniform(low, high, shape):
        draws.append(rng.uniform(-1.0, 1.0, shape))
        return draws[-1] * high
    expected = fog_reference(photos[1], severity, Recorder())
    monkeypatch.setattr(corruptions, "_uniform", lambda shape, key, low, high: tf.constant(
        draws.pop(0) * high, tf.float32))
    difference = np.abs(corrupt(photos[1], "fog", severity, 0) - expected)
    assert not draws and difference.max() <= 1 and difference.mean() < 0.01, severity


def test_frost_from_imagenet_c_photos(photos, tmp_path):
  """ImageNet-C's frost: one of frost1-5 (never frost6), a window cut at a random corner
  in [0, size - 224) per axis, blended with ImageNet-C's weights; JPEG photos decoded as
  Pillow (and OpenCV) decode them."""
  names = corruptions.FROST_PHOTOS + ("frost6.jpg",)
  rng = np.random.default_rng(0)
  for index, name in enumerate(names):  # noise: every window tells where it was cut
    Image.fromarray(rng.integers(0, 256, (230 + 4 * index, 250 - 3 * index, 3), np.uint8)
                    ).save(tmp_path / name, quality=95)
  frost = [np.asarray(Image.open(tmp_path / name)).astype(np.float64) for name in names]
  image = photos[0]

  def blend(index, top, left, rows=224, cols=224):  # ImageNet-C's frost at severity 5
    window = frost[index][top:top + rows, left:left + cols]
    return np.uint8(np.clip(0.6 * image[:rows, :cols] + 0.75 * window, 0, 255))
  seen = set()
  for seed in range(8):
    out = corruptions.corruption("frost", 5, str(tmp_path))(
        tf.constant(image), tf.constant([seed, 7], tf.int64)).numpy()
    fits = [(index, top, left) for index, photo in enumerate(frost)
            for top in range(photo.shape[0] - 223) for left in range(photo.shape[1] - 223)
            if np.abs(out[:2, :2] - blend(index, top, left, 2, 2)).max() <= 1 and
            np.abs(out - blend(index, top, left)).max() <= 1]
    assert len(fits) == 1, fits
    (index, top, left), = fits
    assert index < 5 and top < frost[index].shape[0] - 224 and left < frost[index].shape[1] - 224
    seen.add(index)
  assert len(seen) > 1
  assert corruptions.frost_source(str(tmp_path)).startswith("ImageNet-C's frost photographs")
  small = corruptions.corruption("frost", 2, str(tmp_path))(  # a 224 px window resized
      tf.constant(natural_image()), tf.constant([0, 1], tf.int64)).numpy()
  assert small.shape == (64, 64, 3) and np.array_equal(small, np.floor(small))
