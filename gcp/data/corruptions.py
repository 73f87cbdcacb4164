"""ImageNet-C-style corruptions (Hendrycks & Dietterich, ICLR 2019) as TensorFlow image ops.

`corruption(name, severity)` returns `fn(image, seed)` for the input pipeline (the
preprocessing op `corrupt('gaussian_noise', 3)` of `gcp.data.preprocess`): `image` is
`[H, W, C]` in 0-255 (any dtype, a fixed size: put the op after the crop or resize and
before `normalize`), the output float32 in [0, 255] of the same shape. The 15 corruptions of
the benchmark, in its four families (`FAMILIES`), each at severities 1-5.

Parameters are ImageNet-C's (its `corruptions.py`, written for 224 px). Sizes in pixels
(blur radii and sigmas, shuffle distances, elastic displacements) are scaled by side / 224,
so that a 28 px digit is blurred or warped as its 224 px enlargement would be; noise,
colour, zoom and compression parameters apply unchanged, and per-pixel noise (the noise
family, snow's flakes) stays per pixel. Where ImageNet-C needs external tools or assets,
the op is a reimplementation or a stand-in:
- motion_blur (and snow's streaks): ImageMagick's `MotionBlurImage` reimplemented: a
  one-sided line of 2 ceil(radius) + 1 taps with Gaussian weights, offsets rounded to whole
  pixels, in a random direction.
- glass_blur: ImageNet-C swaps each pixel with a random neighbour in a sequential loop;
  here each iteration moves every pixel to a random neighbour at the same maximum distance
  at once.
- fog, frost: the plasma fractal is summed noise octaves whose amplitudes fall as in
  diamond-square (by decay**2 per octave), not the diamond-square recursion. Frost blends
  with a procedural ice texture (a rough fractal, tinted blue-white) instead of ImageNet-C's
  six frost photographs, with ImageNet-C's blend weights.
- defocus_blur: the disk kernel is the disk's pixel coverage (so that radii scaled below a
  pixel still blur); at 224 px this softens the rim of ImageNet-C's hard-edged disk.
- zoom_blur, elastic_transform: bilinear resampling by TF (zoom: half-pixel centres;
  elastic: the affine and elastic displacements are composed and sampled once).
- pixelate: area downsampling, nearest upsampling (PIL's BOX filter both ways).

Randomness: stateless TF ops seeded from `seed` folded with a hash of the image, so each
image gets its own corruption, a fixed function of its content and seed (as ImageNet-C's
stored files are), even where the pipeline hands every example the same seed (evaluation).
"""
import math
from typing import Callable

import numpy as np
import tensorflow as tf

SEVERITIES = (1, 2, 3, 4, 5)
_REFERENCE_SIDE = 224  # ImageNet-C's parameters are for 224 x 224 images

# ImageNet-C's parameters, severities 1-5.
_PARAMS = {
    "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],                        # std
    "shot_noise": [60, 25, 12, 5, 3],                                        # photons
    "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],                         # fraction
    "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],     # radius, alias
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
    "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],          # radius, sigma
    "zoom_blur": [np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01),
                  np.arange(1, 1.21, 0.02), np.arange(1, 1.26, 0.02),
                  np.arange(1, 1.31, 0.03)],
    "snow": [(0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
             (0.55, 0.3, 4, 0.9, 12, 8, 0.7), (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
             (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)],
    "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],   # image, frost
    "fog": [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)],        # amount, decay
    "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
    "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
    # alpha, sigma, affine jitter, as multiples of 244 px (ImageNet-C's own constant).
    "elastic_transform": [(2, 0.7, 0.1), (2, 0.08, 0.2), (0.05, 0.01, 0.02),
                          (0.07, 0.01, 0.02), (0.12, 0.01, 0.02)],
    "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
    "jpeg_compression": [25, 18, 15, 10, 7],                                 # quality
}

FAMILIES = {
    "noise": ("gaussian_noise", "shot_noise", "impulse_noise"),
    "blur": ("defocus_blur", "glass_blur", "motion_blur", "zoom_blur"),
    "weather": ("snow", "frost", "fog", "brightness"),
    "digital": ("contrast", "elastic_transform", "pixelate", "jpeg_compression"),
}
CORRUPTIONS = tuple(name for names in FAMILIES.values() for name in names)


# ----------------------------------------------------------------------------- helpers

def _uniform(shape, seed, low=0.0, high=1.0):
  return tf.random.stateless_uniform(shape, seed, low, high)


def _split(seed, n: int):
  return [tf.random.experimental.stateless_fold_in(seed, i) for i in range(n)]


def _fold_index(i: np.ndarray, n: int, mode: str) -> np.ndarray:
  """Indices outside [0, n) mapped inside, any distance out: 'nearest' repeats the edge,
  'reflect' mirrors about the edge (d c b a | a b c d | d c b a: scipy's 'reflect'),
  'reflect101' about the edge pixel (c b | a b c d | c b: OpenCV's BORDER_REFLECT_101)."""
  if mode == "nearest" or n == 1:
    return np.clip(i, 0, n - 1)
  if mode == "reflect101":
    i = np.mod(i, 2 * n - 2)
    return np.where(i >= n, 2 * n - 2 - i, i)
  i = np.mod(i, 2 * n)
  return np.where(i >= n, 2 * n - 1 - i, i)


def _gaussian_matrix(n: int, sigma: float, mode: str, truncate: float = 4.0) -> np.ndarray:
  """`[n, n]` matrix B with B @ signal = the signal blurred by a Gaussian of `sigma` pixels
  (scipy.ndimage.gaussian_filter1d's kernel and boundary `mode`), for any sigma."""
  if sigma <= 0:
    return np.eye(n, dtype=np.float32)
  radius = int(truncate * sigma + 0.5)
  offsets = np.arange(-radius, radius + 1)
  weights = np.exp(-0.5 * (offsets / sigma) ** 2)
  weights /= weights.sum()
  matrix = np.zeros((n, n), np.float64)
  rows = np.repeat(np.arange(n), len(offsets))
  cols = _fold_index(np.arange(n)[:, None] + offsets[None], n, mode).ravel()
  np.add.at(matrix, (rows, cols), np.tile(weights, n))
  return matrix.astype(np.float32)


def _gaussian_blur(x, sigma: float, mode: str = "nearest", truncate: float = 4.0):
  """`[H, W, C]` blurred by a Gaussian of `sigma` pixels along both axes (skimage's
  `gaussian`), as two matrix products."""
  h, w = x.shape[0], x.shape[1]
  rows = tf.constant(_gaussian_matrix(h, sigma, mode, truncate))
  cols = tf.constant(_gaussian_matrix(w, sigma, mode, truncate))
  return tf.einsum("wv,hvc->hwc", cols, tf.einsum("hk,kwc->hwc", rows, x))


def _shift(x, dy, dx):
  """`x[clip(i + dy), clip(j + dx)]`: a whole-pixel shift, edges repeated."""
  h, w = x.shape[0], x.shape[1]
  rows = tf.clip_by_value(tf.range(h) + dy, 0, h - 1)
  cols = tf.clip_by_value(tf.range(w) + dx, 0, w - 1)
  return tf.gather(tf.gather(x, rows, axis=0), cols, axis=1)


def _motion_blur(x, radius: float, sigma: float, angle):
  """ImageMagick's MotionBlurImage: `2 ceil(radius) + 1` taps at whole-pixel offsets
  round(i (cos a, sin a)), i = 0, 1, ..., weighted exp(-i^2 / 2 sigma^2); `angle` in
  degrees (a tensor)."""
  taps = 2 * math.ceil(radius) + 1
  weights = np.exp(-np.arange(taps) ** 2 / (2 * max(sigma, 1e-6) ** 2))
  weights /= weights.sum()
  radians = angle * (math.pi / 180)
  out = tf.zeros_like(x)
  for i, weight in enumerate(weights):
    dx = tf.cast(tf.math.ceil(i * tf.cos(radians) - 0.5), tf.int32)
    dy = tf.cast(tf.math.ceil(i * tf.sin(radians) - 0.5), tf.int32)
    out += float(weight) * _shift(x, dy, dx)
  return out


def _zoom_centre(x, factor: float):
  """ImageNet-C's clipped_zoom: the central 1/factor of the image enlarged back to full
  size (bilinear)."""
  h, w = x.shape[0], x.shape[1]
  ch, cw = math.ceil(h / factor), math.ceil(w / factor)
  top, left = (h - ch) // 2, (w - cw) // 2
  crop = x[top:top + ch, left:left + cw]
  zh, zw = round(ch * factor), round(cw * factor)
  zoomed = tf.image.resize(crop, (zh, zw), method="bilinear")
  top, left = (zh - h) // 2, (zw - w) // 2
  return zoomed[top:top + h, left:left + w]


def _plasma(size: int, decay: float, seed):
  """`[size, size]` fractal noise in [0, 1]: octaves of uniform noise on 2, 4, 8, ... grid
  points per side, bilinearly enlarged, amplitude falling by decay**2 per octave (as
  diamond-square's `wibble * uniform(-wibble, wibble)` does)."""
  octaves = max(1, math.ceil(math.log2(size)))
  total = tf.zeros([size, size, 1])
  for k, key in enumerate(_split(seed, octaves)):
    points = 2 ** (k + 1)
    noise = _uniform([points, points, 1], key, -1.0, 1.0)
    total += decay ** (-2.0 * k) * tf.image.resize(noise, (size, size), method="bilinear")
  total -= tf.reduce_min(total)
  return (total / tf.maximum(tf.reduce_max(total), 1e-12))[..., 0]


def _fractal_map(x, decay: float, seed):
  """A plasma fractal covering `x`'s `[H, W]`: cut from a power-of-two square, as
  ImageNet-C cuts 224 x 224 from 256 x 256."""
  h, w = x.shape[0], x.shape[1]
  size = 2 ** math.ceil(math.log2(max(h, w)))
  return _plasma(size, decay, seed)[:h, :w, None]


def _gray(x):
  """Luma (ITU-R 601, OpenCV's RGB2GRAY) `[H, W, 1]`; a 1-channel image is its own."""
  if x.shape[-1] == 3:
    return tf.tensordot(x, tf.constant([0.299, 0.587, 0.114]), axes=1)[..., None]
  return x


def _sample_bilinear(x, ys, xs):
  """`x` at real coordinates (`ys`, `xs`: `[H, W]`), bilinear, mirrored at the edges
  (scipy map_coordinates(order=1, mode='reflect'))."""
  h, w = x.shape[0], x.shape[1]

  def fold(i, n):
    i = tf.math.floormod(i, 2 * n)
    return tf.where(i >= n, 2 * n - 1 - i, i)
  y0, x0 = tf.floor(ys), tf.floor(xs)
  wy, wx = (ys - y0)[..., None], (xs - x0)[..., None]
  y0, x0 = tf.cast(y0, tf.int32), tf.cast(x0, tf.int32)

  def at(yi, xi):
    return tf.gather_nd(x, tf.stack([fold(yi, h), fold(xi, w)], axis=-1))
  top = (1 - wx) * at(y0, x0) + wx * at(y0, x0 + 1)
  bottom = (1 - wx) * at(y0 + 1, x0) + wx * at(y0 + 1, x0 + 1)
  return (1 - wy) * top + wy * bottom


def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
  """The defocus kernel: the pixel coverage of a disk of `radius` pixels (8 x 8 samples per
  pixel), normalised and blurred by a 3 x 3 Gaussian of `alias_blur` (ImageNet-C's
  `disk`)."""
  half = 8 if radius <= 8 else math.ceil(radius)
  sub = (np.arange(8) + 0.5) / 8 - 0.5
  grid = np.arange(-half, half + 1)
  ys = (grid[:, None, None, None] + sub[None, None, :, None])
  xs = (grid[None, :, None, None] + sub[None, None, None, :])
  kernel = (ys ** 2 + xs ** 2 <= radius ** 2).mean(axis=(2, 3))
  if kernel.sum() == 0:  # a radius too small to cover any sample: the centre pixel
    kernel[half, half] = 1.0
  kernel /= kernel.sum()
  taps = np.exp(-0.5 * (np.arange(-1, 2) / max(alias_blur, 1e-6)) ** 2)
  taps /= taps.sum()
  padded = np.pad(kernel, 1)
  kernel = sum(taps[i] * taps[j] * padded[i:i + kernel.shape[0], j:j + kernel.shape[1]]
               for i in range(3) for j in range(3))
  return kernel.astype(np.float32)


def _conv_reflect(x, kernel: np.ndarray):
  """`[H, W, C]` filtered by a 2-D `kernel` (the same on every channel), edges mirrored
  excluding the edge pixel (OpenCV's BORDER_REFLECT_101)."""
  k = kernel.shape[0] // 2
  h, w = x.shape[0], x.shape[1]
  rows = tf.constant(_fold_index(np.arange(-k, h + k), h, "reflect101"))
  cols = tf.constant(_fold_index(np.arange(-k, w + k), w, "reflect101"))
  padded = tf.gather(tf.gather(x, rows, axis=0), cols, axis=1)
  channels = x.shape[-1]
  filt = tf.constant(np.tile(kernel[:, :, None, None], (1, 1, channels, 1)))
  return tf.nn.depthwise_conv2d(padded[None], filt, [1, 1, 1, 1], "VALID")[0]


# ------------------------------------------------------------------------- corruptions
# Each takes x in [0, 1] `[H, W, C]` float32, its parameters for one severity, a seed and
# the pixel scale (side / 224); the result is clipped to [0, 1] by `corruption`.

def _gaussian_noise(x, std, seed, scale):
  return x + std * tf.random.stateless_normal(tf.shape(x), seed)


def _shot_noise(x, photons, seed, scale):
  return tf.random.stateless_poisson(tf.shape(x), seed, x * photons, tf.float32) / photons


def _impulse_noise(x, amount, seed, scale):
  """Salt and pepper on each value (skimage random_noise 's&p'): a fraction `amount` set
  to 0 or 1, half each."""
  flip, salt = _split(seed, 2)
  flipped = _uniform(tf.shape(x), flip) <= amount
  salted = _uniform(tf.shape(x), salt) <= 0.5
  return tf.where(flipped, tf.cast(salted, tf.float32), x)


def _defocus_blur(x, params, seed, scale):
  radius, alias = params
  return _conv_reflect(x, _disk_kernel(radius * scale, alias * scale))


def _glass_blur(x, params, seed, scale):
  sigma, max_delta, iterations = params
  h, w = x.shape[0], x.shape[1]
  x = _gaussian_blur(x, sigma * scale)
  grid_y, grid_x = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32),
                               indexing="ij")
  delta = max_delta * scale
  for key in _split(seed, iterations):
    ky, kx = _split(key, 2)
    x = _sample_bilinear(x, grid_y + _uniform([h, w], ky, -delta, delta),
                         grid_x + _uniform([h, w], kx, -delta, delta))
  return _gaussian_blur(x, sigma * scale)


def _motion_blur_op(x, params, seed, scale):
  radius, sigma = params
  return _motion_blur(x, radius * scale, sigma * scale, _uniform([], seed, -45.0, 45.0))


def _zoom_blur(x, factors, seed, scale):
  total = x + sum(_zoom_centre(x, float(f)) for f in factors)
  return total / (len(factors) + 1)


def _snow(x, params, seed, scale):
  loc, spread, zoom, threshold, radius, sigma, blend = params
  layer_key, angle_key = _split(seed, 2)
  h, w = x.shape[0], x.shape[1]
  layer = loc + spread * tf.random.stateless_normal([h, w, 1], layer_key)
  layer = _zoom_centre(layer, zoom)
  layer = tf.clip_by_value(tf.where(layer < threshold, 0.0, layer), 0.0, 1.0)
  layer = _motion_blur(layer, radius * scale, sigma * scale,
                       _uniform([], angle_key, -135.0, -45.0))
  x = blend * x + (1 - blend) * tf.maximum(x, _gray(x) * 1.5 + 0.5)
  return x + layer + tf.reverse(layer, axis=[0, 1])


def _frost(x, params, seed, scale):
  image_weight, frost_weight = params
  ice = _fractal_map(x, 1.3, seed)
  tint = [0.8, 0.9, 1.0] if x.shape[-1] == 3 else [0.9]
  return image_weight * x + frost_weight * ice * tf.constant(tint)


def _fog(x, params, seed, scale):
  amount, decay = params
  peak = tf.reduce_max(x)
  x = x + amount * _fractal_map(x, decay, seed)
  return x * peak / (peak + amount)


def _brightness(x, shift, seed, scale):
  if x.shape[-1] != 3:
    return x + shift  # a gray value is its own HSV value
  hsv = tf.image.rgb_to_hsv(x)
  hsv = tf.concat([hsv[..., :2], tf.clip_by_value(hsv[..., 2:] + shift, 0.0, 1.0)], -1)
  return tf.image.hsv_to_rgb(hsv)


def _contrast(x, factor, seed, scale):
  means = tf.reduce_mean(x, axis=(0, 1), keepdims=True)
  return (x - means) * factor + means


def _elastic_transform(x, params, seed, scale):
  """A random affine map (three control points jittered), then a smooth random
  displacement field, composed and sampled once (bilinear, mirrored edges)."""
  alpha, sigma, jitter = (p * 244 * scale for p in params)
  # Smoothed unit noise has amplitude ~ 1 / sigma (2-D), so alpha * noise displaces by
  # ~ alpha / sigma pixels: alpha scales twice for displacements to scale once.
  alpha *= scale
  affine_key, dx_key, dy_key = _split(seed, 3)
  h, w = x.shape[0], x.shape[1]
  cx, cy, side = w // 2, h // 2, min(h, w) // 3
  src = tf.constant([[cx + side, cy + side], [cx + side, cy - side],
                     [cx - side, cy - side]], tf.float32)
  dst = src + _uniform([3, 2], affine_key, -jitter, jitter)
  # dst = [src, 1] @ m: m maps source to destination points; sample at its inverse.
  m = tf.linalg.solve(tf.concat([src, tf.ones([3, 1])], 1), dst)
  inverse = tf.linalg.inv(tf.concat([tf.transpose(m), tf.constant([[0.0, 0.0, 1.0]])], 0))

  def displacement(key):
    noise = _uniform([h, w, 1], key, -1.0, 1.0)
    return alpha * _gaussian_blur(noise, sigma, mode="reflect", truncate=3.0)[..., 0]
  grid_y, grid_x = tf.meshgrid(tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32),
                               indexing="ij")
  px, py = grid_x + displacement(dx_key), grid_y + displacement(dy_key)
  sx = inverse[0, 0] * px + inverse[0, 1] * py + inverse[0, 2]
  sy = inverse[1, 0] * px + inverse[1, 1] * py + inverse[1, 2]
  return _sample_bilinear(x, sy, sx)


def _pixelate(x, factor, seed, scale):
  h, w = x.shape[0], x.shape[1]
  small = tf.image.resize(x, (max(1, int(h * factor)), max(1, int(w * factor))),
                          method="area")
  return tf.image.resize(small, (h, w), method="nearest")


def _jpeg_compression(x, quality, seed, scale):
  return tf.image.adjust_jpeg_quality(x, quality)


_FUNCTIONS = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise, "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur, "motion_blur": _motion_blur_op, "zoom_blur": _zoom_blur,
    "snow": _snow, "frost": _frost, "fog": _fog, "brightness": _brightness,
    "contrast": _contrast, "elastic_transform": _elastic_transform,
    "pixelate": _pixelate, "jpeg_compression": _jpeg_compression,
}


def corruption(name: str, severity: int) -> Callable:
  """`fn(image, seed) -> float32 image in [0, 255]` applying corruption `name` (one of
  `CORRUPTIONS`) at `severity` (1-5) to a `[H, W, C]` (C = 1 or 3) image in 0-255 of a
  fixed size; `seed` an int `[2]` tensor."""
  if name not in _FUNCTIONS:
    raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
  if severity not in SEVERITIES:
    raise ValueError(f"corruption severity must be one of {SEVERITIES}, got {severity!r}")
  fn, params = _FUNCTIONS[name], _PARAMS[name][severity - 1]

  def apply(image, seed):
    if not image.shape.is_fully_defined() or image.shape[-1] not in (1, 3):
      raise ValueError(
          f"corrupt({name!r}, {severity}) needs a fixed-size image [H, W, 1 or 3], got "
          f"shape {image.shape}: put it after an op that fixes the size (e.g. "
          "center_crop(224) or resize(28)) and before normalize")
    x = tf.cast(image, tf.float32) / 255.0
    content = tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(x), 2**31 - 1)
    key = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), content)
    scale = min(image.shape[0], image.shape[1]) / _REFERENCE_SIDE
    return tf.clip_by_value(fn(x, params, key, scale), 0.0, 1.0) * 255.0
  return apply
