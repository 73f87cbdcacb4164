"""timm's RandAugment (`rand-m9-mstd0.5-inc1`) and RandomErasing in stateless TensorFlow.

The DeiT and Moment Probing recipes augment with timm (PIL images). The image ops here
reproduce timm's ops on Pillow, including Pillow's integer arithmetic (lookup tables,
truncating casts, the 16-bit fixed-point grey level, float32 blends and 3x3 filter,
float64 affine sampling with its half-pixel convention and edge clamping), so that an
op at a given magnitude gives Pillow's pixels; `tests/data/test_randaugment.py` checks
each against Pillow.

Images are `[H, W, 3]` with values in 0-255 (before `normalize`); every op returns
integer-valued float32 in 0-255, as a PIL image would hold. All randomness is stateless
and drawn from the `[2]` int seed, so an example's augmentation depends only on it.
"""
import math

import tensorflow as tf

IMG_MEAN = (124, 116, 104)  # timm's img_mean for ImageNet: round(255 * mean); geometric fill
_LEVEL_DENOM = 10.0  # magnitudes are on a 0-10 scale
_TRANSLATE_PCT = 0.45  # timm's translate_pct: TranslateXRel / YRel move by up to 45%
_OP_PROB = 0.5  # each chosen op is applied with this probability (timm's rand_augment_ops)
INTERPOLATIONS = ("bilinear", "bicubic")

# timm's _RAND_INCREASING_TRANSFORMS, in its order (the op index is drawn over this list).
INCREASING_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
    "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
    "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel")
GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def _float64(x):
  """`x` as a float64 tensor (a Python float directly: tf.cast would round it to float32)."""
  return tf.cast(x, tf.float64) if isinstance(x, tf.Tensor) else tf.constant(x, tf.float64)


# ----------------------------------------------------------------------------- point ops

def _lut(image, lut):
  """Per-channel lookup: `lut` `[3, 256]` (int) applied to the integer-valued `image`."""
  index = tf.cast(image, tf.int32) + tf.constant([0, 256, 512])
  return tf.cast(tf.gather(tf.reshape(lut, [-1]), index), tf.float32)


def _histogram(image):
  """Per-channel histogram `[3, 256]` (int32) of the integer-valued `image`."""
  index = tf.cast(image, tf.int32) + tf.constant([0, 256, 512])
  counts = tf.math.bincount(tf.reshape(index, [-1]), minlength=768, maxlength=768)
  return tf.reshape(counts, [3, 256])


def auto_contrast(image):
  """ImageOps.autocontrast: each channel's [min, max] stretched to [0, 255] by
  int(x * scale + offset) in float64, as Pillow builds its table; flat channels kept."""
  lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float64)
  hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float64)
  scale = 255.0 / tf.maximum(hi - lo, 1.0)
  stretched = tf.floor(tf.cast(image, tf.float64) * scale + -lo * scale)
  return tf.where(hi > lo, tf.cast(tf.clip_by_value(stretched, 0, 255), tf.float32), image)


def equalize(image):
  """ImageOps.equalize: per channel, step = (n - count of the last used level) // 255 and
  x -> (step // 2 + #pixels below x) // step, clipped to 255; identity if step is 0."""
  hist = _histogram(image)
  used = hist > 0
  last = tf.gather(hist, 255 - tf.argmax(tf.reverse(tf.cast(used, tf.int32), [1]), axis=1,
                                         output_type=tf.int32), axis=1, batch_dims=1)
  step = (tf.reduce_sum(hist, axis=1) - last) // 255
  below = tf.cumsum(hist, axis=1, exclusive=True)
  lut = tf.minimum((step[:, None] // 2 + below) // tf.maximum(step[:, None], 1), 255)
  identity = tf.broadcast_to(tf.range(256), [3, 256])
  lut = tf.where((step > 0)[:, None], lut, identity)  # step 0 also covers <= 1 used level
  return _lut(image, lut)


def invert(image):
  return 255.0 - image


def posterize(image, bits):
  """Keep the `bits` (int, 0-8) most significant bits. Pillow >= 13 rejects bits = 0,
  which timm's PosterizeIncreasing reaches at magnitude 10: older Pillow (timm's and
  DeiT's) masked everything to 0, as here."""
  step = tf.cast(2 ** (8 - tf.cast(bits, tf.int32)), tf.float32)
  return tf.floor(image / step) * step


def solarize(image, threshold):
  """Invert the values >= `threshold`."""
  return tf.where(image < tf.cast(threshold, tf.float32), image, 255.0 - image)


def solarize_add(image, add, threshold=128):
  """timm's solarize_add: values below `threshold` get `add`, capped at 255."""
  return tf.where(image < threshold, tf.minimum(image + tf.cast(add, tf.float32), 255.0),
                  image)


# ------------------------------------------------------------------------- enhance ops

def _blend(degenerate, image, factor):
  """Image.blend(degenerate, image, factor): in float32 (Pillow's blend takes a C float),
  clipped and truncated to integers."""
  factor = tf.cast(factor, tf.float32)
  return tf.floor(tf.clip_by_value(degenerate + factor * (image - degenerate), 0.0, 255.0))


def _grey(image):
  """Pillow's RGB -> L: (19595 R + 38470 G + 7471 B + 2^15) >> 16, as `[H, W, 1]`."""
  rgb = tf.cast(image, tf.int32)
  weighted = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
  return tf.cast(tf.bitwise.right_shift(weighted, 16), tf.float32)[..., None]


def color(image, factor):
  """ImageEnhance.Color: blend from the grey image (0 grey, 1 unchanged, > 1 boosted)."""
  return _blend(tf.broadcast_to(_grey(image), tf.shape(image)), image, factor)


def contrast(image, factor):
  """ImageEnhance.Contrast: blend from the flat image of the rounded mean grey level."""
  grey = tf.cast(_grey(image), tf.float64)
  mean = tf.floor(tf.reduce_sum(grey) / tf.cast(tf.size(grey), tf.float64) + 0.5)
  return _blend(tf.cast(mean, tf.float32), image, factor)


def brightness(image, factor):
  """ImageEnhance.Brightness: blend from black."""
  return _blend(0.0, image, factor)


def _smooth(image):
  """ImageFilter.SMOOTH (3x3 [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13) in Pillow's float32
  order with its +0.5 rounding; the one-pixel border is copied unchanged."""
  side, centre = tf.constant(1 / 13, tf.float32), tf.constant(5 / 13, tf.float32)

  def row(r, weight):  # one kernel row along x, interior columns
    return (r[:, :-2] * side + r[:, 1:-1] * weight) + r[:, 2:] * side

  total = ((0.5 + row(image[2:], side)) + row(image[1:-1], centre)) + row(image[:-2], side)
  interior = tf.floor(tf.clip_by_value(total, 0.0, 255.0))
  border = tf.pad(tf.zeros_like(interior, tf.bool), [[1, 1], [1, 1], [0, 0]],
                  constant_values=True)
  return tf.where(border, image, tf.pad(interior, [[1, 1], [1, 1], [0, 0]]))


def sharpness(image, factor):
  """ImageEnhance.Sharpness: blend from the smoothed image (> 1 sharpens)."""
  return _blend(_smooth(image), image, factor)


# ---------------------------------------------------------------------- geometric ops

def _check_interpolation(interpolation):
  if interpolation not in INTERPOLATIONS:
    raise ValueError(f"unknown interpolation {interpolation!r}; use one of {INTERPOLATIONS}")


def _linear(v1, v2, d):
  """Pillow's transform bilinear between v1 and v2 at offset `d`."""
  return v1 + (v2 - v1) * d


def _cubic(v1, v2, v3, v4, d):
  """Pillow's transform bicubic (a = -1) between v2 and v3 at offset `d`, in its order."""
  p2 = -v1 + v3
  p3 = 2.0 * (v1 - v2) + v3 - v4
  p4 = -v1 + v2 - v3 + v4
  return v2 + d * (p2 + d * (p3 + d * p4))


def affine(image, matrix, fill=IMG_MEAN, interpolation="bicubic"):
  """Image.transform(size, AFFINE, matrix, resample, fillcolor=fill): output pixel (x, y)
  samples the input at (a x' + b y' + c, d x' + e y' + f), x' = x + 0.5, y' = y + 0.5,
  `matrix` = (a, b, c, d, e, f) (float64 scalars). Sample points outside the image get
  `fill`; the interpolation taps clamp to the edge. Float64 throughout, as Pillow."""
  _check_interpolation(interpolation)
  a, b, c, d, e, f = (_float64(m) for m in matrix)
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  ys, xs = tf.meshgrid(tf.range(tf.cast(h, tf.float64)) + 0.5,
                       tf.range(tf.cast(w, tf.float64)) + 0.5, indexing="ij")
  u, v = a * xs + b * ys + c, d * xs + e * ys + f  # [H, W] input coordinates
  inside = (u >= 0) & (u < tf.cast(w, tf.float64)) & (v >= 0) & (v < tf.cast(h, tf.float64))
  u, v = u - 0.5, v - 0.5
  x0, y0 = tf.floor(u), tf.floor(v)
  taps = tf.range(-1, 3) if interpolation == "bicubic" else tf.range(0, 2)
  cols = tf.clip_by_value(tf.cast(x0, tf.int32)[..., None] + taps, 0, w - 1)  # [H, W, T]
  rows = tf.clip_by_value(tf.cast(y0, tf.int32)[..., None] + taps, 0, h - 1)
  values = tf.gather(tf.reshape(tf.cast(image, tf.float32), [h * w, -1]),
                     rows[..., :, None] * w + cols[..., None, :])  # [H, W, T, T, C]
  values = tf.cast(values, tf.float64)  # gathering float32 is twice as fast; still exact
  # Along x within each tap row, then along y. Offsets broadcast to full shape once: TF's
  # same-shape elementwise ops are much faster than broadcasting ones.
  interpolate = _cubic if interpolation == "bicubic" else _linear
  by_col = tf.unstack(values, axis=3)  # T x [H, W, T, C]
  dx = tf.broadcast_to((u - x0)[..., None, None], tf.shape(by_col[0]))
  by_row = tf.unstack(interpolate(*by_col, dx), axis=2)  # T x [H, W, C]
  dy = tf.broadcast_to((v - y0)[..., None], tf.shape(by_row[0]))
  sampled = interpolate(*by_row, dy)
  sampled = tf.cast(tf.floor(tf.clip_by_value(sampled, 0.0, 255.0)), tf.float32)
  fill = tf.broadcast_to(tf.constant(fill, tf.float32), tf.shape(sampled))
  return tf.where(inside[..., None], sampled, fill)


def _rotation(degrees, height, width):
  """Pillow's matrix of Image.rotate(degrees) (counter-clockwise about the centre)."""
  cx, cy = width / 2, height / 2
  angle = -tf.math.floormod(degrees, 360.0) * (math.pi / 180)
  # Pillow rounds cos and sin to 15 decimals (round(x, 15)): it moves a few samples.
  cos, sin = (tf.round(t * 1e15) / 1e15 for t in (tf.cos(angle), tf.sin(angle)))
  return (cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy)


def affine_matrix(name, image_shape, magnitude, negate=False):
  """The Pillow affine matrix (for `affine`) of timm's geometric op `name` (one of
  `GEOMETRIC_OPS`) at `magnitude` on an image of `image_shape` `[H, W, C]`: rotation by
  30 level degrees, shear by 0.3 level, translation (the image moves left / up) by 0.45
  level of the width / height, level = magnitude / 10, sign flipped by `negate`."""
  level = _float64(magnitude) / _LEVEL_DENOM  # as timm's (level / 10) * ...
  signed = lambda value: tf.where(negate, -value, value)  # noqa: E731
  height, width = tf.unstack(tf.cast(image_shape[:2], tf.float64))
  if name == "Rotate":
    return _rotation(signed(level * 30.0), height, width)
  if name == "ShearX":
    return (1.0, signed(level * 0.3), 0.0, 0.0, 1.0, 0.0)
  if name == "ShearY":
    return (1.0, 0.0, 0.0, signed(level * 0.3), 1.0, 0.0)
  if name == "TranslateXRel":
    return (1.0, 0.0, signed(level * _TRANSLATE_PCT) * width, 0.0, 1.0, 0.0)
  if name == "TranslateYRel":
    return (1.0, 0.0, 0.0, 0.0, 1.0, signed(level * _TRANSLATE_PCT) * height)
  raise ValueError(f"unknown geometric op {name!r}; ops: {GEOMETRIC_OPS}")


# ----------------------------------------------------------------------- RandAugment

def apply_op(name, image, magnitude, negate=False, *, fill=IMG_MEAN, interpolation="bicubic"):
  """timm's AugmentOp(`name`) at `magnitude` (0-10): its level-to-argument mapping, then
  the op. `negate` (bool) flips the sign of the signed ops' argument (timm's random sign).
  `image`: `[H, W, 3]` integer values in 0-255, float32."""
  if name not in INCREASING_OPS:
    raise ValueError(f"unknown RandAugment op {name!r}; ops: {INCREASING_OPS}")
  if name in GEOMETRIC_OPS:
    return affine(image, affine_matrix(name, tf.shape(image), magnitude, negate), fill,
                  interpolation)
  level = _float64(magnitude) / _LEVEL_DENOM
  if name == "AutoContrast":
    return auto_contrast(image)
  if name == "Equalize":
    return equalize(image)
  if name == "Invert":
    return invert(image)
  if name == "PosterizeIncreasing":
    return posterize(image, 4 - tf.cast(tf.floor(level * 4.0), tf.int32))
  if name == "SolarizeIncreasing":
    return solarize(image, 256.0 - tf.floor(level * 256.0))
  if name == "SolarizeAdd":
    return solarize_add(image, tf.floor(level * 110.0))
  # Color, Contrast, Brightness, Sharpness: factor 1 +- 0.9 level
  factor = tf.maximum(1.0 + tf.where(negate, -level, level) * 0.9, 0.1)
  enhance = {"ColorIncreasing": color, "ContrastIncreasing": contrast,
             "BrightnessIncreasing": brightness, "SharpnessIncreasing": sharpness}[name]
  return enhance(image, factor)


class RandAugment:
  """timm's `rand-m{magnitude}-n{num_layers}-mstd{mstd}-inc1`: `num_layers` ops drawn
  uniformly (with replacement) from `INCREASING_OPS`, each applied with probability 1/2
  at magnitude N(magnitude, mstd^2) clipped to [0, 10], signed ops with a random sign.

  `__call__(image, seed)`: `image` `[H, W, 3]` in 0-255 (uint8 or float; a float image,
  e.g. after a resize, is first rounded to integers, as it would be as a PIL image),
  `seed` int `[2]`; returns the same shape and dtype. `fill`: colour of the geometric
  ops' uncovered area (timm: round(255 * normalisation mean)); `interpolation` of the
  geometric ops: DeiT's `--train-interpolation` is bicubic (Pillow's a = -1 kernel).
  """

  def __init__(self, num_layers=2, magnitude=9.0, mstd=0.5, *, fill=IMG_MEAN,
               interpolation="bicubic"):
    if not 0 <= magnitude <= _LEVEL_DENOM:
      raise ValueError(f"RandAugment magnitude {magnitude} is outside timm's 0-10 scale")
    if mstd < 0 or num_layers < 0:
      raise ValueError(f"RandAugment needs num_layers >= 0 and mstd >= 0, "
                       f"got num_layers={num_layers}, mstd={mstd}")
    _check_interpolation(interpolation)
    if len(fill) != 3:
      raise ValueError(f"fill must be an RGB triple, got {fill!r}")
    self.num_layers, self.magnitude, self.mstd = num_layers, float(magnitude), float(mstd)
    self.geometry = dict(fill=tuple(fill), interpolation=interpolation)

  def draw_layer(self, seed, layer: int):
    """The random choices of layer `layer` for the example seed `seed`: `(op, apply,
    magnitude, negate)`: the index into INCREASING_OPS (uniform), whether to apply it
    (probability 1/2), the magnitude (float32) and the sign of a signed op's argument."""
    op_key, apply_key, magnitude_key, sign_key = tf.unstack(
        tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(seed, layer), 4))
    op = tf.random.stateless_uniform([], op_key, 0, len(INCREASING_OPS), tf.int32)
    apply = tf.random.stateless_uniform([], apply_key) < _OP_PROB
    magnitude = self.magnitude + self.mstd * tf.random.stateless_normal([], magnitude_key)
    negate = tf.random.stateless_uniform([], sign_key) < 0.5
    return op, apply, tf.clip_by_value(magnitude, 0.0, _LEVEL_DENOM), negate

  def _apply(self, image, op, apply, magnitude, negate):
    """Op number `op` of INCREASING_OPS if `apply`. The geometric ops share one affine
    branch (each op only sets the matrix): it keeps the traced graph half as large."""
    others = [name for name in INCREASING_OPS if name not in GEOMETRIC_OPS]
    branch_of_op = tf.constant([others.index(name) if name in others else len(others)
                                for name in INCREASING_OPS])
    matrix_of_op = tf.constant([GEOMETRIC_OPS.index(name) if name in GEOMETRIC_OPS else 0
                                for name in INCREASING_OPS])
    matrices = tf.stack([tf.stack([_float64(m) for m in affine_matrix(
        name, tf.shape(image), magnitude, negate)]) for name in GEOMETRIC_OPS])  # [5, 6]

    def other(name):
      return lambda: apply_op(name, image, magnitude, negate, **self.geometry)

    def geometric():
      return affine(image, tf.unstack(matrices[matrix_of_op[op]]), **self.geometry)
    # An index past the branches (op not applied) takes the default branch: unchanged.
    return tf.switch_case(tf.where(apply, branch_of_op[op], len(others) + 1),
                          [other(name) for name in others] + [geometric],
                          default=lambda: image)

  @tf.autograph.experimental.do_not_convert  # graph code already: converting only slows tracing
  def __call__(self, image, seed):
    if image.shape.rank != 3 or image.shape[-1] != 3:
      raise ValueError(f"randaug takes one RGB image [H, W, 3], got shape {image.shape}; "
                       f"put 'rgb' before it for grey images")
    dtype = image.dtype
    image = tf.round(tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 255.0))
    for layer in range(self.num_layers):
      image = self._apply(image, *self.draw_layer(seed, layer))
    return tf.cast(image, dtype)


class RandomErasing:
  """timm's `RandomErasing(probability, mode='pixel', max_count=1)` of a normalised image:
  with probability `prob`, up to 10 attempts draw an area fraction uniform in
  [min_area, max_area] and a log aspect ratio (h / w) uniform in
  [log min_aspect, -log min_aspect]; h and w are the rounded sides; the first attempt
  that fits (h < H, w < W) fills a uniformly placed h x w box with N(0, 1) noise.

  `__call__(image, seed)`: `image` `[H, W, C]` float (after `normalize`), `seed` int `[2]`.
  """

  _ATTEMPTS = 10

  def __init__(self, prob=0.25, min_area=0.02, max_area=1 / 3, min_aspect=0.3):
    if not 0 <= prob <= 1 or not 0 < min_area <= max_area <= 1 or not 0 < min_aspect <= 1:
      raise ValueError(f"RandomErasing needs 0 <= prob <= 1, 0 < min_area <= max_area <= 1 "
                       f"and 0 < min_aspect <= 1, got prob={prob}, min_area={min_area}, "
                       f"max_area={max_area}, min_aspect={min_aspect}")
    self.prob, self.min_area, self.max_area = prob, min_area, max_area
    self.log_aspect = (math.log(min_aspect), -math.log(min_aspect))

  def box(self, shape, seed):
    """`(erase, top, left, height, width)` (bool, int32 scalars) for an image `shape`."""
    gate_key, area_key, aspect_key, place_key = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4))
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    area = tf.random.stateless_uniform([self._ATTEMPTS], area_key, self.min_area,
                                       self.max_area) * h * w
    aspect = tf.exp(tf.random.stateless_uniform([self._ATTEMPTS], aspect_key,
                                                *self.log_aspect))
    heights, widths = tf.round(tf.sqrt(area * aspect)), tf.round(tf.sqrt(area / aspect))
    fits = (heights < h) & (widths < w)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    height, width = heights[first], widths[first]
    place = tf.random.stateless_uniform([2], place_key)  # randint(0, H - h), inclusive
    top = tf.cast(tf.floor(place[0] * (h - height + 1)), tf.int32)
    left = tf.cast(tf.floor(place[1] * (w - width + 1)), tf.int32)
    erase = (tf.random.stateless_uniform([], gate_key) < self.prob) & tf.reduce_any(fits)
    return erase, top, left, tf.cast(height, tf.int32), tf.cast(width, tf.int32)

  def __call__(self, image, seed):
    if not image.dtype.is_floating:
      raise ValueError(f"random_erase fills with N(0, 1) noise, so it belongs after "
                       f"normalize(...) on a float image; got {image.dtype.name}")
    box_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(image)
    erase, top, left, height, width = self.box(shape, box_seed)

    def erased():  # noise for the box only, drawn only when erasing (it costs more)
      noise = tf.random.stateless_normal([height, width, shape[2]], noise_seed,
                                         dtype=image.dtype)
      margins = [[top, shape[0] - top - height], [left, shape[1] - left - width], [0, 0]]
      inside = tf.pad(tf.ones_like(noise, tf.bool), margins)
      return tf.where(inside, tf.pad(noise, margins), image)
    return tf.cond(erase, erased, lambda: image)
