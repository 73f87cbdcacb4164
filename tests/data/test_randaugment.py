"""RandAugment and RandomErasing (gcp.data.randaugment) against timm's semantics.

Reference for the ops: timm's `auto_augment.py` level functions, transcribed below, applied
with Pillow (the library timm augments with). Our ops reproduce Pillow's integer
arithmetic, so every op, geometric ones included (float64 sampling as Pillow, bilinear
and bicubic), must match Pillow exactly: any difference is a defect.
"""
import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps
import pytest
from scipy import stats
import tensorflow as tf

from gcp.data import preprocess, randaugment

FILL = (124, 116, 104)
RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def timm_op(name, image, magnitude, negate, interpolation):
  """timm's AugmentOp(name, magnitude) on a PIL image, its random sign fixed by `negate`
  (timm's _randomly_negate), hparams img_mean = FILL, interpolation fixed."""
  level = magnitude / 10.0
  sign = -1 if negate else 1
  geometry = dict(fillcolor=FILL, resample=RESAMPLE[interpolation])
  width, height = image.size
  if name == "AutoContrast":
    return ImageOps.autocontrast(image)
  if name == "Equalize":
    return ImageOps.equalize(image)
  if name == "Invert":
    return ImageOps.invert(image)
  if name == "Rotate":
    return image.rotate(sign * level * 30.0, **geometry)
  if name == "PosterizeIncreasing":
    bits = 4 - int(level * 4)
    if bits == 0:  # Pillow >= 13 rejects 0 bits; older Pillow (timm's era) gave black
      return Image.new("RGB", image.size, 0)
    return ImageOps.posterize(image, bits)
  if name == "SolarizeIncreasing":
    return ImageOps.solarize(image, 256 - int(level * 256))
  if name == "SolarizeAdd":
    add = int(level * 110)
    return image.point([min(255, i + add) if i < 128 else i for i in range(256)] * 3)
  if name.endswith("Increasing"):
    factor = max(0.1, 1.0 + sign * level * 0.9)
    enhance = {"ColorIncreasing": ImageEnhance.Color, "ContrastIncreasing":
               ImageEnhance.Contrast, "BrightnessIncreasing": ImageEnhance.Brightness,
               "SharpnessIncreasing": ImageEnhance.Sharpness}[name]
    return enhance(image).enhance(factor)
  shear, pct = sign * level * 0.3, sign * level * 0.45
  matrix = {"ShearX": (1, shear, 0, 0, 1, 0), "ShearY": (1, 0, 0, shear, 1, 0),
            "TranslateXRel": (1, 0, pct * width, 0, 1, 0),
            "TranslateYRel": (1, 0, 0, 0, 1, pct * height)}[name]
  return image.transform(image.size, Image.AFFINE, matrix, **geometry)


def _make_image(h=37, w=53, seed=0):
  """Noise over a gradient, channels in different sub-ranges (so AutoContrast and Equalize
  have work), with a flat patch (interpolation in flat regions must stay exact)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:h, 0:w]
  base = np.stack([20 + 3 * y, 40 + 2 * x, 5 * (x + y) % 256], -1)
  image = np.clip(base + rng.integers(-25, 26, (h, w, 3)), 0, 255)
  image[5:15, 30:45] = (200, 90, 17)
  return image.astype(np.uint8)


IMAGE = _make_image()


@pytest.mark.parametrize("name", randaugment.INCREASING_OPS)
def test_op_matches_timm_on_pillow_exactly(name):
  """Magnitudes 2.7, 9 and 10 (the clip), both signs, and for the geometric ops both of
  timm's interpolations: identical pixels (tolerance 0)."""
  interpolations = (("bicubic", "bilinear") if name in randaugment.GEOMETRIC_OPS
                    else ("bicubic",))
  for magnitude in (2.7, 9.0, 10.0):
    for negate in (False, True):
      for interpolation in interpolations:
        want = np.asarray(timm_op(name, Image.fromarray(IMAGE), magnitude, negate,
                                  interpolation))
        got = randaugment.apply_op(name, tf.constant(IMAGE, tf.float32), magnitude, negate,
                                   fill=FILL, interpolation=interpolation).numpy()
        assert got.dtype == np.float32
        np.testing.assert_array_equal(
            got, want, err_msg=f"{name} m={magnitude} negate={negate} {interpolation}")


def test_ops_change_the_test_image():
  """The comparison above is not vacuous: every op changes the test image."""
  for name in randaugment.INCREASING_OPS:
    got = randaugment.apply_op(name, tf.constant(IMAGE, tf.float32), 9.0).numpy()
    assert (got != IMAGE).mean() > 0.05, name


def test_affine_bad_interpolation_says_what_is_wrong():
  with pytest.raises(ValueError, match="unknown interpolation 'nearest'; use one of"):
    randaugment.affine(tf.constant(IMAGE, tf.float32), (1.0, 0.1, 0.0, 0.0, 1.0, 0.0),
                       interpolation="nearest")


# ------------------------------------------------------------------------ RandAugment

PP_TRAIN = ("inception_crop(32)|flip_lr|randaug(2, 9, mstd=0.5)|normalize('imagenet')|"
            "random_erase(0.25)")


def _seeds(n, first=0):
  return [tf.constant([3, s], tf.int64) for s in range(first, first + n)]


def _over_seeds(pre, image, seeds):
  """`pre(image, seed)` for each seed, in a tf.data map (graph mode, as in training)."""
  dataset = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(
      lambda seed: pre(tf.constant(image), seed))
  return np.stack(list(dataset.as_numpy_iterator()))


def _draws(augment, seeds):
  """`augment.draw_layer(seed, 0)` for each seed (tf.data map) as numpy columns."""
  dataset = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(
      lambda seed: augment.draw_layer(seed, 0))
  return [np.array(column) for column in zip(*dataset.as_numpy_iterator())]


def test_layer_draws_are_timms():
  """2000 seeds: op uniform over the 15 (chi-square p > 0.001), applied with probability
  1/2 and signed ops negated with probability 1/2 (+- 4 sd), magnitude N(9, 0.5^2)
  clipped to [0, 10] (Kolmogorov-Smirnov p > 0.001)."""
  op, apply, magnitude, negate = _draws(randaugment.RandAugment(1, 9.0, 0.5), _seeds(2000))
  counts = np.bincount(op, minlength=len(randaugment.INCREASING_OPS))
  assert len(counts) == 15 and stats.chisquare(counts).pvalue > 1e-3
  for flag in (apply, negate):
    assert abs(flag.mean() - 0.5) < 4 * np.sqrt(0.25 / 2000)
  clipped_normal = lambda x: np.where(x >= 10, 1.0, stats.norm(9, 0.5).cdf(x))  # noqa: E731
  assert magnitude.max() == 10 and stats.kstest(magnitude, clipped_normal).pvalue > 1e-3


def test_one_layer_applies_the_drawn_timm_op():
  """randaug with one layer (mstd 0.5), through tf.data (graph mode), over 100 seeds: the
  image if the draw says not to apply, else timm's op (on Pillow) at the drawn magnitude
  and sign, exactly."""
  augment = randaugment.RandAugment(1, 9.0, 0.5)
  seeds = _seeds(100, 5000)
  outs = _over_seeds(augment, IMAGE.astype(np.float32), seeds)
  seen = set()
  for out, op, apply, magnitude, negate in zip(outs, *_draws(augment, seeds)):
    name = randaugment.INCREASING_OPS[op]
    want = (timm_op(name, Image.fromarray(IMAGE), float(magnitude), negate, "bicubic")
            if apply else IMAGE)
    np.testing.assert_array_equal(out, np.asarray(want), err_msg=f"{name} m={magnitude}")
    seen |= {name} if apply else set()
  assert len(seen) >= 10


def test_randaug_range_shape_dtype_and_determinism():
  for dtype in (tf.uint8, tf.float32):
    image = tf.constant(IMAGE, dtype)
    augment = preprocess.build("randaug(2, 9, mstd=0.5)")
    outs = [augment(image, seed).numpy() for seed in _seeds(6)]
    for out in outs:
      assert out.shape == IMAGE.shape and out.dtype == np.float32  # the chain ends float
      assert 0 <= out.min() and out.max() <= 255 and np.array_equal(out, np.round(out))
    np.testing.assert_array_equal(augment(image, _seeds(1)[0]), outs[0])
    assert len({o.tobytes() for o in outs}) >= 5
    first_op_seed = tf.random.experimental.stateless_fold_in(_seeds(1)[0], 0)  # the chain's
    direct = randaugment.RandAugment()(image, first_op_seed)
    assert direct.dtype == dtype  # the op itself keeps the input dtype
    np.testing.assert_array_equal(direct.numpy().astype(np.float32), outs[0])


def test_randaug_rounds_a_float_image_first():
  """A resized (non-integer) image is augmented as the integer image a PIL image holds."""
  augment = randaugment.RandAugment(1, 9.0, 0.0)
  blurred = tf.constant(IMAGE, tf.float32) + 0.3
  for seed in _seeds(5):
    np.testing.assert_array_equal(augment(blurred, seed), augment(tf.constant(IMAGE), seed))


def test_train_chain_in_tf_data_matches_eager():
  """The recipe's chain in a tf.data map (graph mode) gives the eager result seed by seed."""
  pre = preprocess.build(PP_TRAIN)
  seeds = _seeds(4)
  for got, seed in zip(_over_seeds(pre, IMAGE, seeds), seeds):
    assert got.shape == (32, 32, 3)
    np.testing.assert_array_equal(got, pre(tf.constant(IMAGE), seed).numpy())


@pytest.mark.parametrize("pp, match", [
    ("randaug(2, 12)", r"magnitude 12 is outside timm's 0-10 scale"),
    ("randaug(2, 9, mstd=-1)", r"needs num_layers >= 0 and mstd >= 0"),
    ("randaug(interpolation='nearest')", r"unknown interpolation 'nearest'"),
    ("random_erase(1.5)", r"RandomErasing needs 0 <= prob <= 1"),
])
def test_bad_arguments_say_what_is_wrong(pp, match):
  with pytest.raises(ValueError, match=match):
    preprocess.build(pp)


# -------------------------------------------------------------------- RandomErasing

ERASE_HW = (64, 96)


def _normalised(seed=1):
  return np.random.default_rng(seed).normal(3.0, 0.1, (*ERASE_HW, 3)).astype(np.float32)


def _box(changed):
  """(top, bottom, left, right) of the changed pixels; asserts they fill that rectangle."""
  rows, cols = np.nonzero(changed)
  top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
  assert changed[top:bottom, left:right].all() and changed.sum() == (bottom - top) * (right - left)
  return top, bottom, left, right


def _timm_erase_boxes(n, rng, h, w):
  """(height, width) of n boxes of timm's RandomErasing._erase (probability 1, count 1),
  in numpy; an image none of whose 10 attempts fits is left out, as it has no box."""
  boxes = []
  while len(boxes) < n:
    for _ in range(10):
      target = rng.uniform(0.02, 1 / 3) * h * w
      aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
      bh, bw = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
      if bw < w and bh < h:
        boxes.append((bh, bw))
        break
  return np.array(boxes)


def test_random_erase_one_box_of_noise_as_timms():
  """prob 1: exactly one rectangle changes, to N(0, 1) noise (mean, sd within 0.02 over
  > 10^5 values); its sides are the rounded sides of an area in [0.02, 1/3] of the image
  at an aspect ratio in [0.3, 1/0.3]; over 150 seeds, its area fraction and log aspect
  ratio are distributed as timm's algorithm's (numpy, 20000 draws: two-sample
  Kolmogorov-Smirnov p > 0.001) and its place is uniform (mean offset 1/2 +- 4 se)."""
  image = _normalised()
  h, w = ERASE_HW
  boxes, places, noise = [], [], []
  for out in _over_seeds(preprocess.build("random_erase(1.0)"), image, _seeds(150)):
    top, bottom, left, right = _box((out != image).any(-1))
    bh, bw = bottom - top, right - left
    assert (bh + .5) * (bw + .5) >= 0.02 * h * w and (bh - .5) * (bw - .5) <= h * w / 3
    assert (bh + .5) / (bw - .5) >= 0.3 and (bh - .5) / (bw + .5) <= 1 / 0.3
    boxes.append((bh, bw))
    places.append((top / (h - bh), left / (w - bw)))  # fits: bh < h, bw < w
    noise.append(out[top:bottom, left:right].ravel())
  boxes, reference = np.array(boxes), _timm_erase_boxes(20000, np.random.default_rng(0), h, w)
  for statistic in (lambda b: b[:, 0] * b[:, 1], lambda b: np.log(b[:, 0] / b[:, 1])):
    assert stats.ks_2samp(statistic(boxes), statistic(reference)).pvalue > 1e-3
  # randint(0, H - h): the relative offsets are (nearly) uniform on [0, 1]
  places = np.array(places)
  assert (places.min(0) < 0.1).all() and (places.max(0) > 0.9).all()
  assert (np.abs(places.mean(0) - 0.5) < 4 * 0.29 / np.sqrt(150)).all()
  noise = np.concatenate(noise)
  assert abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02


def test_random_erase_probability_and_determinism():
  image = _normalised()
  for out in _over_seeds(preprocess.build("random_erase(0.0)"), image, _seeds(20)):
    np.testing.assert_array_equal(out, image)
  erase = preprocess.build("random_erase(0.25)")
  outs = _over_seeds(erase, image, _seeds(200, 100))
  erased = [not np.array_equal(out, image) for out in outs]
  assert 0.15 < np.mean(erased) < 0.35  # binomial(200, 1/4): sd 0.031
  np.testing.assert_array_equal(outs[:3], _over_seeds(erase, image, _seeds(3, 100)))


def test_random_erase_before_normalize_says_what_is_wrong():
  with pytest.raises(ValueError, match=r"belongs after normalize\(...\)"):
    randaugment.RandomErasing(1.0)(tf.constant(IMAGE), _seeds(1)[0])  # uint8
