"""ImageNet-C's corruptions (Hendrycks & Dietterich, ICLR 2019) as TensorFlow image ops.

`corruption(name, severity)` returns `fn(image, seed)` for the input pipeline (the
preprocessing op `corrupt('gaussian_noise', 3)` of `gcp.data.preprocess`): `image` is
`[H, W, C]` in 0-255 (any dtype, a fixed size: put the op after the crop or resize and
before `normalize`), the output float32 of the same shape holding whole numbers 0-255. The
15 corruptions of the benchmark, in its four families (`FAMILIES`), each at severities 1-5.

They follow ImageNet-C's code (the `imagenet-c` package, `corruptions.py`), and on 224 x 224
images give its pixels: the same algorithms and parameters, 8-bit images in and out (the
input rounded to whole numbers, as the PIL image ImageNet-C corrupts; the output truncated,
as its `np.uint8`), Pillow's BOX resampling (its fixed-point arithmetic) for pixelate,
libjpeg's encoding and Pillow's decoding (the accurate integer IDCT) for jpeg_compression,
ImageNet-C's disk kernel for defocus_blur (smoothed by `cv2.GaussianBlur`, edges mirrored,
so that the kernel sums to 1.013 at severity 4), its diamond-square plasma fractal for fog,
and glass_blur's sequential in-place copy (below). Except:
- Random draws come from TF's stateless generators seeded from `seed` folded with a hash of
  the image, not numpy's global stream: the same distributions, other draws. Each image gets
  its own corruption, a fixed function of its content and seed (as ImageNet-C's stored files
  are), even where the pipeline hands every example the same seed (evaluation).
- Frost blends a procedural ice texture (the plasma fractal, tinted blue-white) by default:
  ImageNet-C's six frost photographs are not in any package. `frost_dir` names a folder
  holding them (`frost1.png` ... `frost5.jpg`, from ImageNet-C's repository) for the exact
  corruption: one of the first five (ImageNet-C draws `randint(5)`, never `frost6.jpg`),
  a random 224 x 224 window, ImageNet-C's blend weights.
- motion_blur (and snow's streaks): ImageMagick's `MotionBlurImage` reimplemented: a
  one-sided line of 2 ceil(radius) + 1 taps with Gaussian weights, offsets rounded to whole
  pixels, in a random direction.
- zoom_blur, elastic_transform: bilinear resampling by TF (zoom: half-pixel centres;
  elastic: the affine and elastic displacements are composed and sampled once), where
  ImageNet-C uses scipy's `zoom` and OpenCV's `warpAffine` then scipy's `map_coordinates`.
- ImageNet-C's released data set stores each corrupted image as a JPEG of quality 85
  (`make_imagenet_c.py`); the ops here give the corruption's pixels before that encoding.
- Other sizes than 224 px: sizes in pixels (blur radii and sigmas, glass_blur's shuffle
  distance, elastic displacements, frost's window) are scaled by side / 224, so that a
  28 px digit is blurred or warped as its 224 px enlargement would be; noise, colour, zoom
  and compression parameters apply unchanged, and per-pixel noise (the noise family, snow's
  flakes) stays per pixel. glass_blur's distance is rounded to whole pixels (at least 1);
  defocus_blur's disk is supersampled (ceil(224 / side) samples per pixel and axis) so that
  radii scaled below a pixel still blur; fog's fractal is cut from the power-of-two square
  just covering the image (ImageNet-C cuts 224 x 224 from 256 x 256); frost's window spans
  224 photo pixels along the image's shorter side and is resized to the image.

glass_blur (`_glass_shuffle`): ImageNet-C blurs, truncates to 8 bits, then for each
iteration visits the pixels (h, w), d < h, w <= 224 - d (H - d, W - d here), from the
bottom-right to the top-left and runs `x[h, w], x[h + dy, w + dx] = x[h + dy, w + dx],
x[h, w]` with dx, dy drawn from [-d, d - 1]. On numpy views that "swap" is a copy: the
second assignment writes back the value just copied. So values travel along chains (a pixel
may copy a pixel processed just before it), and drift by half a pixel towards the
bottom-right on average. The op computes the same copies for all pixels at once by pointer
jumping, in TF ops: 6-12 ms per 224 px image on one CPU core (2-3 passes), where the
bilinear shuffle it replaced took 14-20 ms (ImageNet-C's Python loop: 0.4 s a pass).
"""
import functools
import math
import os
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
    "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2),           # sigma,
                   (1.5, 4, 2)],                                   # distance, iterations
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

# What results computed with these ops say about them (`gcp.analysis.robustness`).
STATEMENT = ("the corruptions follow ImageNet-C (Hendrycks & Dietterich, ICLR 2019) except "
             "where the docstring of gcp.data.corruptions says otherwise")
# ImageNet-C's frost photographs; it draws one of the first five (`randint(5)`).
FROST_PHOTOS = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")


def frost_source(frost_dir: str | None = None) -> str:
  """Which frost `corruption('frost', s, frost_dir)` blends in, for result files."""
  if frost_dir is None:
    return "procedural ice texture (the default; not ImageNet-C's photographs)"
  return f"ImageNet-C's frost photographs from {os.path.abspath(frost_dir)}"


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
  """ImageNet-C's `plasma_fractal`: a `[size, size]` (a power of two) diamond-square
  height map in [0, 1] on a torus. Each halving of the step sets the squares' centres to
  the mean of their 4 corners, then the diamonds' centres (edge midpoints) to the mean of
  their 2 corners and 2 centres, each plus wibble * uniform(-wibble, wibble); wibble starts
  at 100 and is divided by `decay` per step."""
  corners, wibble = tf.zeros([1, 1]), 100.0
  for key in _split(seed, int(math.log2(size))):
    m = corners.shape[0]
    square_key, top_key, left_key = _split(key, 3)

    def wibbled(total, key):
      return total / 4 + wibble * _uniform([m, m], key, -wibble, wibble)  # noqa: B023
    below = tf.roll(corners, -1, axis=0)
    centres = wibbled(corners + below + tf.roll(corners + below, -1, axis=1), square_key)
    # (i s, j s + s/2): corners left and right, centres above and below; (i s + s/2, j s):
    # corners above and below, centres left and right.
    top = wibbled(corners + tf.roll(corners, -1, axis=1) + centres +
                  tf.roll(centres, 1, axis=0), top_key)
    left = wibbled(corners + below + centres + tf.roll(centres, 1, axis=1), left_key)
    even_rows = tf.reshape(tf.stack([corners, top], -1), [m, 2 * m])
    odd_rows = tf.reshape(tf.stack([left, centres], -1), [m, 2 * m])
    corners = tf.reshape(tf.stack([even_rows, odd_rows], 1), [2 * m, 2 * m])
    wibble /= decay
  corners -= tf.reduce_min(corners)
  return corners / tf.reduce_max(corners)


def _fractal_map(x, decay: float, seed):
  """A plasma fractal covering `x`'s `[H, W]`: cut from a power-of-two square, as
  ImageNet-C cuts 224 x 224 from 256 x 256."""
  h, w = x.shape[0], x.shape[1]
  size = 2 ** max(1, math.ceil(math.log2(max(h, w))))
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


def _disk_kernel(radius: float, alias_blur: float, scale: float) -> np.ndarray:
  """ImageNet-C's defocus kernel `disk(radius, alias_blur)` at `scale` times its size: the
  pixels of a `2 half + 1` square (half = 8, or the radius beyond 8) whose centres lie in
  the disk, normalised, then smoothed by `cv2.GaussianBlur` (3 x 3, or 5 x 5 beyond radius
  8; sigma `alias_blur`; edges mirrored about the edge pixel, which adds mass where the disk
  touches the square's edge: the kernel sums to 1.013 at radius 8). Below `scale` 1 each
  pixel is the disk's coverage of ceil(1 / scale)^2 samples, so that small radii blur."""
  reach = 8 if radius <= 8 else radius
  taps = 3 if radius <= 8 else 5
  half = math.ceil(reach * scale)
  samples = max(1, math.ceil(1 / scale))
  sub = (np.arange(samples) + 0.5) / samples - 0.5
  grid = np.arange(-half, half + 1)
  ys = grid[:, None, None, None] + sub[None, None, :, None]
  xs = grid[None, :, None, None] + sub[None, None, None, :]
  kernel = (ys ** 2 + xs ** 2 <= (radius * scale) ** 2).mean(axis=(2, 3))
  kernel /= kernel.sum()
  sigma = max(alias_blur * scale, 1e-6)
  weights = np.exp(-0.5 * ((np.arange(taps) - taps // 2) / sigma) ** 2)
  weights /= weights.sum()
  # The Gaussian along each axis as a matrix on the mirrored square (cv2's separable blur).
  size = 2 * half + 1
  blur = np.zeros((size, size))
  rows = np.repeat(np.arange(size), taps)
  cols = _fold_index(np.arange(size)[:, None] + np.arange(taps) - taps // 2, size,
                     "reflect101").ravel()
  np.add.at(blur, (rows, cols), np.tile(weights, size))
  return (blur @ kernel @ blur.T).astype(np.float32)


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


def _glass_shuffle(x, dy, dx, distance: int):
  """One pass of ImageNet-C's glass_blur shuffle on `x` `[H, W, C]`: for the pixels (i, j),
  distance < i <= H - distance and distance < j <= W - distance, in reverse row-major order,
  `x[i, j] = x[i + dy[i, j], j + dx[i, j]]` in place (`dy`, `dx`: int32 `[H, W]` in
  [-distance, distance - 1]; see the module docstring).

  At once: a pixel ends with the final value of its source if the source was written
  before it (a processed pixel later in row-major order), else with the source's value
  before the pass. As a pointer per pixel: p < N, the final value of pixel p (a chain to
  follow); p >= N, the value of pixel p - N before the pass (resolved). Pointer doubling
  (`p = p[p]` where p < N) carries every pointer to the end of its chain (chains climb in
  row-major order, so they end; at 224 px 4 doublings suffice)."""
  h, w = x.shape[0], x.shape[1]
  n = h * w

  def processed(i, j):
    return (i > distance) & (i <= h - distance) & (j > distance) & (j <= w - distance)
  rows, cols = np.meshgrid(np.arange(h, dtype=np.int32), np.arange(w, dtype=np.int32),
                           indexing="ij")
  index = rows * w + cols
  inside = processed(rows, cols)
  source = tf.where(inside, index + dy * w + dx, index)
  written = inside & processed(rows + dy, cols + dx) & (source > index)
  pointer = tf.reshape(tf.where(written, source, source + n), [n])
  pointer, = tf.while_loop(
      lambda p: tf.reduce_any(p < n),
      lambda p: (tf.where(p < n, tf.gather(p, tf.minimum(p, n - 1)), p),), (pointer,))
  return tf.reshape(tf.gather(tf.reshape(x, [n, -1]), pointer - n), x.shape)


_PIL_PRECISION = 22  # Pillow's 8-bit resampling: fixed point with 22 fractional bits


@functools.lru_cache(maxsize=None)
def _box_matrix(n_in: int, n_out: int) -> np.ndarray:
  """Pillow's BOX resampling of `n_in` pixels to `n_out` as `[n_out, n_in]` integer weights
  (float64) in its fixed point (`precompute_coeffs`, `normalize_coeffs_8bpc`): output
  pixel i averages the input pixels whose centres fall in (i s - s/2, i s + s/2] around its
  centre (i + 1/2) s, s = n_in / n_out; upsampling picks one input pixel."""
  scale = n_in / n_out
  filter_scale = max(scale, 1.0)
  support = 0.5 * filter_scale
  matrix = np.zeros((n_out, n_in))
  for i in range(n_out):
    centre = (i + 0.5) * scale
    low = max(int(centre - support + 0.5), 0)
    high = min(int(centre + support + 0.5), n_in)
    t = (np.arange(low, high) - centre + 0.5) * (1.0 / filter_scale)
    weights = ((t > -0.5) & (t <= 0.5)).astype(np.float64)
    if weights.sum():
      weights /= weights.sum()
    matrix[i, low:high] = np.floor(0.5 + weights * 2 ** _PIL_PRECISION)
  return matrix


def _pil_box_resize(pixels, height: int, width: int):
  """`Image.resize((width, height), Image.BOX)` of 8-bit `pixels` `[H, W, C]` (whole
  numbers, float32): the horizontal pass, rounded to 8 bits, then the vertical pass."""
  def one_pass(x, matrix, axis):
    if (matrix.max(1) == 2 ** _PIL_PRECISION).all():  # each output copies one input pixel
      return tf.gather(x, matrix.argmax(1), axis=axis)
    equation = "hk,kwc->hwc" if axis == 0 else "wv,hvc->hwc"
    total = tf.einsum(equation, tf.constant(matrix), tf.cast(x, tf.float64))
    rounded = tf.floor((total + 2 ** (_PIL_PRECISION - 1)) / 2 ** _PIL_PRECISION)
    return tf.cast(tf.clip_by_value(rounded, 0, 255), tf.float32)
  x = one_pass(pixels, _box_matrix(pixels.shape[1], width), 1)
  return one_pass(x, _box_matrix(pixels.shape[0], height), 0)


@functools.lru_cache(maxsize=None)
def _frost_photos(frost_dir: str) -> tuple[np.ndarray, np.ndarray]:
  """ImageNet-C's frost photos in `frost_dir` as (uint8 `[5, H, W, 3]`, zero-padded to the
  largest; int32 `[5, 2]` their heights and widths), decoded as OpenCV reads them (JPEG
  with the accurate integer IDCT)."""
  missing = [name for name in FROST_PHOTOS
             if not os.path.isfile(os.path.join(frost_dir, name))]
  if missing:
    raise ValueError(
        f"frost_dir {frost_dir!r} lacks ImageNet-C's frost photos {', '.join(missing)}: "
        f"it must hold {', '.join(FROST_PHOTOS)} (ImageNet-C's frost images, "
        "github.com/hendrycks/robustness, ImageNet-C/imagenet_c/imagenet_c/frost/), or "
        "leave frost_dir unset for the procedural frost")
  photos = []
  with tf.init_scope():  # eager, even if called while a pipeline function is traced
    for name in FROST_PHOTOS:
      data = tf.io.read_file(os.path.join(frost_dir, name))
      photo = (tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
               if name.endswith(".jpg") else tf.io.decode_png(data, channels=3))
      photos.append(photo.numpy())
  sizes = np.array([p.shape[:2] for p in photos], np.int32)
  stack = np.zeros((len(photos), *sizes.max(0), 3), np.uint8)
  for i, photo in enumerate(photos):
    stack[i, :photo.shape[0], :photo.shape[1]] = photo
  return stack, sizes


def _frost_window(x, frost_dir: str, seed, scale: float):
  """A random window of one of ImageNet-C's frost photos (`randint(5)`; top-left corner
  `randint(0, size - window)` per axis), covering side / `scale` photo pixels per image
  side, resized to `x`'s `[H, W]`, in [0, 1] with `x`'s channels."""
  stack, sizes = _frost_photos(frost_dir)
  h, w = x.shape[0], x.shape[1]
  window = (round(h / scale), round(w / scale))
  small = [name for name, size in zip(FROST_PHOTOS, sizes) if (size <= window).any()]
  if small:
    raise ValueError(f"frost photos {', '.join(small)} in {frost_dir!r} are not larger than "
                     f"the {window[0]} x {window[1]} window a {h} x {w} image needs: use "
                     "ImageNet-C's photos (at least 224 px larger each way)")
  photo_key, y_key, x_key = _split(seed, 3)

  def draw(key, n):  # uniform in 0..n-1
    return tf.minimum(tf.cast(tf.floor(_uniform([], key) * tf.cast(n, tf.float32)), tf.int32),
                      n - 1)
  which = draw(photo_key, len(FROST_PHOTOS))
  size = tf.gather(tf.constant(sizes), which)
  top, left = draw(y_key, size[0] - window[0]), draw(x_key, size[1] - window[1])
  crop = tf.slice(tf.gather(tf.constant(stack), which), [top, left, 0], [*window, 3])
  crop = tf.cast(crop, tf.float32) / 255.0
  if window != (h, w):
    crop = tf.image.resize(crop, (h, w), method="bilinear", antialias=True)
  return crop if x.shape[-1] == 3 else _gray(crop)


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
  return _conv_reflect(x, _disk_kernel(radius, alias, scale))


def _glass_blur(x, params, seed, scale):
  """Blur, truncate to 8 bits, shuffle `iterations` times by whole pixels, blur."""
  sigma, distance, iterations = params
  distance = max(1, round(distance * scale))
  h, w = x.shape[0], x.shape[1]
  x = tf.floor(_gaussian_blur(x, sigma * scale) * 255.0)
  for key in _split(seed, iterations):
    dy, dx = tf.unstack(tf.random.stateless_uniform([2, h, w], key, -distance, distance,
                                                    tf.int32))
    x = _glass_shuffle(x, dy, dx, distance)
  return _gaussian_blur(x / 255.0, sigma * scale)


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


def _frost(x, params, seed, scale, frost_dir=None):
  image_weight, frost_weight = params
  if frost_dir is None:
    tint = [0.8, 0.9, 1.0] if x.shape[-1] == 3 else [0.9]
    ice = _fractal_map(x, 1.3, seed) * tf.constant(tint)
  else:
    ice = _frost_window(x, frost_dir, seed, scale)
  return image_weight * x + frost_weight * ice


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
  """Pillow's BOX filter down to `factor` times the size and back."""
  h, w = x.shape[0], x.shape[1]
  pixels = tf.round(x * 255.0)
  small = _pil_box_resize(pixels, max(1, int(h * factor)), max(1, int(w * factor)))
  return _pil_box_resize(small, h, w) / 255.0


def _jpeg_compression(x, quality, seed, scale):
  """Pillow's JPEG round trip: libjpeg at `quality` (4:2:0 chroma), decoded with the
  accurate integer IDCT (TF's default, the fast one, differs by up to a level)."""
  pixels = tf.cast(tf.round(x * 255.0), tf.uint8)
  decoded = tf.io.decode_jpeg(tf.io.encode_jpeg(pixels, quality=quality),
                              channels=x.shape[-1], dct_method="INTEGER_ACCURATE")
  return tf.reshape(tf.cast(decoded, tf.float32), x.shape) / 255.0


_FUNCTIONS = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise, "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur, "motion_blur": _motion_blur_op, "zoom_blur": _zoom_blur,
    "snow": _snow, "frost": _frost, "fog": _fog, "brightness": _brightness,
    "contrast": _contrast, "elastic_transform": _elastic_transform,
    "pixelate": _pixelate, "jpeg_compression": _jpeg_compression,
}


def corruption(name: str, severity: int, frost_dir: str | None = None) -> Callable:
  """`fn(image, seed) -> float32 image` applying corruption `name` (one of `CORRUPTIONS`) at
  `severity` (1-5) to a `[H, W, C]` (C = 1 or 3) image in 0-255 of a fixed size; `seed` an
  int `[2]` tensor. The output holds ImageNet-C's 8-bit values (whole numbers 0-255).

  `frost_dir`: for frost only, a folder holding ImageNet-C's frost photos (`FROST_PHOTOS`)
  to blend in instead of the procedural texture (`frost_source` says which was used)."""
  if name not in _FUNCTIONS:
    raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
  if severity not in SEVERITIES:
    raise ValueError(f"corruption severity must be one of {SEVERITIES}, got {severity!r}")
  fn, params = _FUNCTIONS[name], _PARAMS[name][severity - 1]
  if frost_dir is not None:
    if name != "frost":
      raise ValueError(f"frost_dir is an option of frost only: write "
                       f"corrupt({name!r}, {severity}) without it")
    _frost_photos(frost_dir)  # a missing photo fails here, not inside the pipeline
    fn = functools.partial(fn, frost_dir=frost_dir)

  def apply(image, seed):
    if not image.shape.is_fully_defined() or image.shape[-1] not in (1, 3):
      raise ValueError(
          f"corrupt({name!r}, {severity}) needs a fixed-size image [H, W, 1 or 3], got "
          f"shape {image.shape}: put it after an op that fixes the size (e.g. "
          "center_crop(224) or resize(28)) and before normalize")
    # ImageNet-C corrupts 8-bit images (PIL) and stores 8-bit ones (np.uint8 truncates).
    x = tf.round(tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 255.0)) / 255.0
    content = tf.strings.to_hash_bucket_fast(tf.io.serialize_tensor(x), 2**31 - 1)
    key = tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), content)
    scale = min(image.shape[0], image.shape[1]) / _REFERENCE_SIDE
    return tf.floor(tf.clip_by_value(fn(x, params, key, scale), 0.0, 1.0) * 255.0)
  return apply
