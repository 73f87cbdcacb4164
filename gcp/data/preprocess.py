"""Per-image preprocessing ops, composed from a config string (big_vision style).

`build("inception_crop(224)|flip_lr|normalize('imagenet')")` returns `fn(image, seed)`:
`image` is a `[H, W, C]` uint8 (or float) tensor, `seed` an int32 `[2]` tensor. Random ops
use stateless TF ops seeded from `seed` and their position in the chain, so an example's
augmentation depends only on (seed, example), which makes resumed runs reproducible.
"""
import ast
from typing import Callable

import tensorflow as tf

_OPS: dict[str, Callable] = {}
_MEAN_STD = {  # in 0-255 units
    "imagenet": ((0.485 * 255, 0.456 * 255, 0.406 * 255),
                 (0.229 * 255, 0.224 * 255, 0.225 * 255)),
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


@_op
def inception_crop(size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """Random-resized crop: area fraction in `scale`, aspect ratio in `ratio`, to `size`."""
  def fn(image, seed):
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), seed=seed,
        area_range=scale, aspect_ratio_range=ratio, min_object_covered=0.0,
        use_image_if_no_bounding_boxes=True)
    crop = tf.slice(image, begin, crop_size)
    return tf.image.resize(crop, (size, size))
  return fn


@_op
def flip_lr():
  """Horizontal flip with probability 1/2."""
  return lambda image, seed: tf.image.stateless_random_flip_left_right(image, seed)


@_op
def normalize(mean="imagenet", std=None):
  """(x - mean) / std per channel, in 0-255 units; `normalize('imagenet')` for the presets."""
  if isinstance(mean, str):
    if mean not in _MEAN_STD:
      raise ValueError(f"unknown normalisation preset {mean!r}; presets: {list(_MEAN_STD)}")
    mean, std = _MEAN_STD[mean]
  return lambda image, seed: (tf.cast(image, tf.float32) - mean) / std


def _parse(op: str) -> Callable:
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
  if name not in _OPS:
    raise ValueError(f"unknown preprocessing op {name!r}; available: {sorted(_OPS)}")
  return _OPS[name](*args, **kwargs)


def build(pp: str) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
  """Composes the ops of `pp` ("op1|op2(args)|...") into `fn(image, seed) -> float32 image`."""
  ops = [_parse(op) for op in pp.split("|") if op.strip()]

  def fn(image, seed):
    for i, op in enumerate(ops):
      image = op(image, tf.random.experimental.stateless_fold_in(seed, i))
    return tf.cast(image, tf.float32)
  return fn
