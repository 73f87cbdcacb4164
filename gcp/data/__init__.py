"""Data: TFDS builders, image folders, video frame stores and the tf.data input pipeline."""
from absl import logging
import tensorflow as tf

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
    describe_skipped, eval_batches, first_batch, image_shape, load_builder, num_classes,
    num_eval_batches, num_examples, steps_per_epoch, train_batches)
