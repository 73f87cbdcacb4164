"""Per-image preprocessing ops, composed from a config string (big_vision style).

`build("inception_crop(224)|flip_lr|normalize('imagenet')")` returns `fn(image, seed)`:
`image` is a `[H, W, C]` uint8 (or float) tensor or the encoded file (a scalar string:
JPEG, PNG, BMP, GIF or WebP), `seed` an int `[2]` tensor. Random ops use stateless TF ops seeded
from `seed` and their position in the chain, so an example's augmentation depends only on
(seed, example), which makes resumed runs reproducible.

Encoded images are decoded by the chain itself (`Preprocess.decode`), so that the first op
can be fused with decoding: `inception_crop` on a JPEG samples its window from the JPEG
header (`tf.image.extract_jpeg_shape`) and decodes only that window
(`tf.image.decode_and_crop_jpeg`, which skips the inverse DCT and colour conversion of
the rest): the same window for the same seed as decoding everything and then cropping.
Other formats (PNG, ...) are decoded whole and cropped. Decoding yields C channels, C from
the data set's image shape (3 if unknown), as `Preprocess.decode`.

The pipelines trace the ops as written, without AutoGraph (`without_autograph`): an op
decides on tensor values with TF ops (`tf.cond`, `tf.where`, `tf.switch_case`); its Python
`if` and `for` see static values only (shapes, dtypes, its arguments).
"""
import argparse
import ast
import inspect
import sys
from typing import Callable

import tensorflow as tf

from gcp.data import corruptions, randaugment

_OPS: dict[str, Callable] = {}
_MEAN_STD = {  # in 0-255 units
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255),
                 (0.229 * 255, 0.224 * 255, 0.225 * 255)),
    "inception": ((127.5,) * 3, (127.5,) * 3),  # to [-1, 1]: AugReg ViTs (timm's 0.5, 0.5)
}


def _op(fn):
  _OPS[fn.__name__] = fn
  return fn


@_op
def rgb():
  """Grayscale `[H, W, 1]` -> `[H, W, 3]`; RGB input passes through."""
  return lambda image, seed: (tf.image.grayscale_to_rgb(image)
                              if image.shape[-1] == 1 else image)


@_op
def resize(size):
  """Resize to `size` (int: square, or (h, w)), bilinear with antialiasing."""
  hw = (size, size) if isinstance(size, int) else tuple(size)
  return lambda image, seed: tf.image.resize(image, hw, antialias=True)


@_op
def resize_shorter(size: int):
  """Resize so the shorter side is `size`, keeping the aspect ratio."""
  def fn(image, seed):
    h, w = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
    scale = size / tf.minimum(h, w)
    new_hw = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
    return tf.image.resize(image, new_hw, antialias=True)
  return fn


@_op
def center_crop(size: int):
  """Central `size` x `size` crop."""
  def fn(image, seed):
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    return tf.image.crop_to_bounding_box(image, (h - size) // 2, (w - size) // 2, size, size)
  return fn


@_op
def random_crop(size: int, pad: int = 0):
  """Zero-pad by `pad` on every side, then a random `size` x `size` crop."""
  def fn(image, seed):
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    return tf.image.stateless_random_crop(image, [size, size, tf.shape(image)[-1]], seed)
  return fn


def inception_window(image_shape, seed, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """The random-resized-crop window `[y, x, h, w]` (int32) of an image of shape `[H, W, C]`
  by TF's `sample_distorted_bounding_box`: aspect ratio (w / h) uniform in `ratio`, then
  the height uniform between those of the areas `scale` (fractions of the image) at that
  ratio, up to 100 attempts, else the whole image. (Uniform heights favour small crops: the
  mean area fraction is about 0.37 for a 4:3 image, against about 0.43 for torchvision's
  RandomResizedCrop, which draws areas uniformly, ratios log-uniformly, 10 attempts.)"""
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape, tf.zeros([0, 0, 4], tf.float32), seed=seed,
      area_range=scale, aspect_ratio_range=ratio, min_object_covered=0.0,
      use_image_if_no_bounding_boxes=True)
  return tf.cast(tf.concat([begin[:2], crop_size[:2]], 0), tf.int32)


def decode(data, channels: int = 3):
  """Encoded JPEG / PNG / BMP / GIF (first frame) / WebP -> `[H, W, channels]` uint8."""
  image = tf.io.decode_image(data, channels=channels, dtype=tf.uint8,
                             expand_animations=False)
  image.set_shape([None, None, channels])
  return image


@_op
def inception_crop(size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """Random-resized crop: area fraction in `scale`, aspect ratio in `ratio`, to `size`.

  Fused with decoding when it comes first in the chain (see the module docstring)."""
  def crop(image, seed):
    y, x, h, w = tf.unstack(inception_window(tf.shape(image), seed, scale, ratio))
    return image[y:y + h, x:x + w]

  def fn(image, seed):
    return tf.image.resize(crop(image, seed), (size, size))

  def decode_and_crop(data, seed, channels):
    def jpeg():
      window = inception_window(tf.image.extract_jpeg_shape(data), seed, scale, ratio)
      return tf.image.decode_and_crop_jpeg(data, window, channels=channels)
    image = tf.cond(tf.io.is_jpeg(data), jpeg,
                    lambda: crop(decode(data, channels), seed))
    image.set_shape([None, None, channels])
    return image

  fn.fused = (decode_and_crop, lambda image, seed: tf.image.resize(image, (size, size)))
  return fn


@_op
def ten_crop(size: int):
  """10-crop test view `[10, size, size, C]`: the centre and corner crops, then mirrored.

  torchvision's TenCrop order: centre, top left, top right, bottom left, bottom right, then
  the same five mirrored. The model's logits are averaged over the views
  (`gcp.train.make_eval_step`)."""
  def fn(image, seed):
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    corners = [((h - size) // 2, (w - size) // 2), (0, 0), (0, w - size), (h - size, 0),
               (h - size, w - size)]
    crops = tf.stack([tf.image.crop_to_bounding_box(image, y, x, size, size)
                      for y, x in corners])
    return tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)
  return fn


@_op
def three_crop(size: int):
  """3-crop test view `[3, size, size, C]`: start, centre and end of the longer side.

  The video models' test view (TSN / TSM at 256, after `resize_shorter(size)`): `size` x
  `size` crops left, centre, right (top, centre, bottom if portrait), centred on the other
  side."""
  def fn(image, seed):
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    wide = w >= h
    y, x = (h - size) // 2, (w - size) // 2
    corners = [(tf.where(wide, y, 0), tf.where(wide, 0, x)), (y, x),
               (tf.where(wide, y, h - size), tf.where(wide, w - size, x))]
    return tf.stack([tf.image.crop_to_bounding_box(image, y, x, size, size)
                     for y, x in corners])
  return fn


@_op
def flip_lr():
  """Horizontal flip with probability 1/2."""
  return lambda image, seed: tf.image.stateless_random_flip_left_right(image, seed)


@_op
def randaug(num_layers: int = 2, magnitude: float = 9, mstd: float = 0.5, *,
            fill=randaugment.IMG_MEAN, interpolation: str = "bicubic"):
  """timm's RandAugment `rand-m{magnitude}-n{num_layers}-mstd{mstd}-inc1` (before normalize).

  On 0-255 images; `fill` is timm's img_mean (the default is ImageNet's; (128, 128, 128)
  for `normalize('inception')`). See `gcp.data.randaugment.RandAugment`."""
  return randaugment.RandAugment(num_layers, magnitude, mstd, fill=fill,
                                 interpolation=interpolation)


@_op
def random_erase(prob: float = 0.25, min_area: float = 0.02, max_area: float = 1 / 3,
                 min_aspect: float = 0.3):
  """timm's RandomErasing(prob, mode='pixel'): a box of N(0, 1) noise, after `normalize`.
  See `gcp.data.randaugment.RandomErasing`."""
  return randaugment.RandomErasing(prob, min_area, max_area, min_aspect)


@_op
def corrupt(name: str, severity: int, frost_dir: str | None = None):
  """ImageNet-C corruption `name` at `severity` 1-5 (after the crop, before normalize).

  On fixed-size 0-255 images (`gcp.data.corruptions` lists the names); `frost_dir`: a
  folder of ImageNet-C's frost photos, for `corrupt('frost', s, frost_dir='...')`."""
  return corruptions.corruption(name, severity, frost_dir)


def mean_std(mean="imagenet", std=None) -> tuple:
  """`(mean, std)` of `normalize`'s arguments: a preset's by name, else as given."""
  if isinstance(mean, str):
    if mean not in _MEAN_STD:
      raise ValueError(f"unknown normalisation preset {mean!r}; presets: {list(_MEAN_STD)}")
    return _MEAN_STD[mean]
  return mean, std


@_op
def normalize(mean="imagenet", std=None):
  """(x - mean) / std per channel, in 0-255 units; `normalize('imagenet')` for the presets."""
  mean, std = mean_std(mean, std)
  mean = tf.constant(mean, tf.float32, shape=[len(mean)] if hasattr(mean, "__len__") else [])
  std = tf.constant(std, tf.float32, shape=[len(std)] if hasattr(std, "__len__") else [])

  def fn(image, seed):
    image = tf.cast(image, tf.float32)
    channels = image.shape[-1]
    if image.shape.rank != 3 or channels is None or mean.shape not in ([], [channels]):
      return (image - mean) / std  # e.g. 3 means on a gray image: broadcast to 3 channels
    # As [H, W * C] minus a [W * C] row: many times faster than broadcasting along C.
    shape = tf.shape(image)
    rows = tf.reshape(image, [shape[0], shape[1] * channels])
    per_channel = lambda v: tf.tile(tf.broadcast_to(v, [channels]), [shape[1]])  # noqa: E731
    return tf.reshape((rows - per_channel(mean)) / per_channel(std), shape)
  return fn


def parse_op(op: str) -> tuple[str, list, dict]:
  """One op of a preprocessing string, `name` or `name(literal args)`, as (name, args,
  kwargs); also parses `gcp.data.video`'s frame-sampling ops."""
  try:
    node = ast.parse(op.strip(), mode="eval").body
    if isinstance(node, ast.Name):
      name, args, kwargs = node.id, [], {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
      name = node.func.id
      args = [ast.literal_eval(a) for a in node.args]
      kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    else:
      raise ValueError
  except (SyntaxError, ValueError):
    raise ValueError(f"cannot parse preprocessing op {op!r}: write name or "
                     f"name(literal args), e.g. 'random_crop(28, pad=2)'") from None
  return name, args, kwargs


def signature(fn: Callable, name: str | None = None) -> str:
  """How an op is written in a preprocessing string: `name(arg, arg=default, ...)`, or
  just `name` if it takes no arguments (floats rounded to 4 decimals)."""
  def literal(value):
    if isinstance(value, float):
      return repr(round(value, 4))
    if isinstance(value, tuple):
      return "(" + ", ".join(map(literal, value)) + ("," if len(value) == 1 else "") + ")"
    return repr(value)

  params, star = [], False
  for p in inspect.signature(fn).parameters.values():
    if p.kind is p.KEYWORD_ONLY and not star:
      params.append("*")
      star = True
    params.append(p.name if p.default is p.empty else f"{p.name}={literal(p.default)}")
  name = name or fn.__name__
  return f"{name}({', '.join(params)})" if params else name


def make_op(ops: dict[str, Callable], op: str, what: str = "preprocessing op") -> Callable:
  """The op `op` (a string `name(args)`) of the registry `ops`; a ValueError naming the op,
  and its signature or the available ones, if it is unknown or its arguments do not fit."""
  name, args, kwargs = parse_op(op)
  if name not in ops:
    raise ValueError(f"unknown {what} {name!r}; available: {', '.join(sorted(ops))}")
  try:
    return ops[name](*args, **kwargs)
  except TypeError as e:
    raise ValueError(f"{what} {op.strip()!r}: {e}; write it as "
                     f"{signature(ops[name], name)}") from None


def without_autograph(fn: Callable) -> Callable:
  """`fn` for `tf.data` (`Dataset.map`, `scan`) or `tf.function`, traced as written. gcp's
  preprocessing decides on tensors with TF ops (`tf.cond`, `tf.where`) and branches in
  Python only on static values (shapes, dtypes, the config), so AutoGraph's rewriting of
  its source would change nothing; skipping it spares a launch ~0.4 s."""
  return tf.autograph.experimental.do_not_convert(fn)


def _parse(op: str) -> Callable:
  return make_op(_OPS, op)


class Preprocess:
  """The ops of one preprocessing string; `__call__(image, seed) -> float32 image`.

  In two stages for encoded images: `decode(data, seed)` (which may raise on a corrupt
  file; the pipeline drops those) and `finish(image, seed)` (the rest of the chain).
  With `files`, encoded images are given as the paths of their files, read by `decode`
  (so that a file that cannot be read is dropped like one that does not decode).
  """

  def __init__(self, ops: list[Callable], stored_shape=None, files: bool = False):
    self._ops = ops
    self._shape = tuple(stored_shape) if stored_shape is not None else (None, None, 3)
    self._channels = self._shape[-1] or 3
    self._fused = getattr(ops[0], "fused", None) if ops else None
    self._files = files

  @staticmethod
  def _seed(seed, i):
    return tf.random.experimental.stateless_fold_in(seed, i)

  def decode(self, data, seed):
    """Encoded bytes (or their file) -> uint8 `[h, w, C]`: decoded, or decoded and cropped
    by a fused op."""
    if self._files:
      data = tf.io.read_file(data)
    if self._fused:
      return self._fused[0](data, self._seed(seed, 0), self._channels)
    image = decode(data, self._channels)
    image.set_shape(self._shape)
    return image

  def finish(self, image, seed):
    """The rest of the chain, on the output of `decode`."""
    for i, op in enumerate(self._ops):
      if i == 0 and self._fused:
        op = self._fused[1]
      image = op(image, self._seed(seed, i))
    return tf.cast(image, tf.float32)

  def __call__(self, image, seed):
    if image.dtype == tf.string:
      return self.finish(self.decode(image, seed), seed)
    for i, op in enumerate(self._ops):
      image = op(image, self._seed(seed, i))
    return tf.cast(image, tf.float32)


def build(pp: str, stored_shape=None, files: bool = False) -> Preprocess:
  """Composes the ops of `pp` ("op1|op2(args)|...") into `fn(image, seed) -> float32 image`.

  `stored_shape`: the `(H, W, C)` of the data set's images (None entries where they vary),
  used when `image` is encoded: decoded to C channels (default 3) with that static shape.
  `files`: encoded images are given as file paths (`Preprocess`).
  """
  return Preprocess([_parse(op) for op in pp.split("|") if op.strip()], stored_shape, files)


def op_table() -> str:
  """Every op of a preprocessing string as a markdown table (`--list`; the README's): the
  ops of this module, then a frame store's sampling ops (`gcp.data.video`), which come
  first in its strings. The descriptions are the first lines of the ops' docstrings."""
  from gcp.data import video  # pylint: disable=import-outside-toplevel  (video builds on this)
  rows = [(signature(fn, name), fn.__doc__.strip().splitlines()[0])
          for name, fn in sorted(_OPS.items())]
  rows += [(signature(fn, name), "Frame stores, first op. " + fn.__doc__.strip().splitlines()[0])
           for name, fn in sorted(video.SAMPLINGS.items())]
  cell = lambda text: text.replace("|", "\\|")  # noqa: E731  (a | inside a table cell)
  return "\n".join(["| op | what it does |", "|---|---|"] +
                   [f"| `{sig}` | {cell(doc)} |" for sig, doc in rows]) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gcp.data.preprocess",
      description="The ops of preprocessing strings (config.data.train_pp, eval_pp), "
                  "joined by '|', e.g. \"inception_crop(224)|flip_lr|normalize('imagenet')\".")
  parser.add_argument("--list", action="store_true",
                      help="print every op with its signature as a markdown table")
  args = parser.parse_args(argv)
  if not args.list:
    parser.print_help()
    return 1
  sys.stdout.write(op_table())
  return 0


if __name__ == "__main__":
  sys.exit(main())
