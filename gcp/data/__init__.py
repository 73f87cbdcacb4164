"""Data: TFDS builders, image folders, video frame stores and the tf.data input pipeline."""
import os
import sys

from absl import logging

# TensorFlow imports Keras at its own import unless TF_USE_LEGACY_KERAS is set: 2 s of
# every launch, for nothing gcp uses. `tf.keras` reads the variable when first used, so it
# is unset at once (tf.keras stays Keras 3). A user's own setting is left alone.
_skip_keras = "tensorflow" not in sys.modules and "TF_USE_LEGACY_KERAS" not in os.environ
if _skip_keras:
  os.environ["TF_USE_LEGACY_KERAS"] = "1"
try:
  import tensorflow as tf
finally:
  if _skip_keras:
    del os.environ["TF_USE_LEGACY_KERAS"]

# TensorFlow only feeds data: keep it off the accelerators JAX uses. (No GPU: nothing to
# hide; TF already initialised its devices, e.g. imported and used elsewhere first: say so.)
try:
  tf.config.set_visible_devices([], "GPU")
except (RuntimeError, ValueError) as e:
  logging.warning("could not hide the GPUs from TensorFlow (%s); tf.data may reserve GPU "
                  "memory", e)

from gcp.data import mnist5k  # noqa: E402,F401  (registers the embedded TFDS builder)
from gcp.data.pipeline import (  # noqa: E402
    FOLDER_PREFIX, FRAMES_PREFIX, check_split, class_names, default_eval_split,
    describe_skipped, eval_batches, eval_passes, first_batch, image_shape, load_builder,
    num_classes, num_eval_batches, num_examples, steps_per_epoch, train_batches)
