"""Data: TFDS builders and the tf.data input pipeline."""
import tensorflow as tf

# TensorFlow only feeds data: keep it off the accelerators JAX uses.
tf.config.set_visible_devices([], "GPU")

from gcp.data import mnist5k  # noqa: F401  (registers the embedded TFDS builder)
from gcp.data.pipeline import (
    eval_batches, image_shape, load_builder, num_classes, num_eval_batches, num_examples,
    steps_per_epoch, train_batches)
