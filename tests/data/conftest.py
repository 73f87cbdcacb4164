"""Tiny encoded images and videos for the data tests (written here; nothing is downloaded)."""
import numpy as np
import pytest
import tensorflow as tf

# Fixtures of the synthetic video data set (tests/references/moving_squares.py).
from references.moving_squares import frame_store, moving_squares  # noqa: F401


class Images:
  """Small images of one flat colour each, so that a decoded image tells which it was."""

  @staticmethod
  def pixels(color, hw=(20, 24)) -> np.ndarray:
    return np.broadcast_to(np.asarray(color, np.uint8), (*hw, 3)).copy()

  def jpeg(self, color, hw=(20, 24)) -> bytes:
    return tf.io.encode_jpeg(self.pixels(color, hw), quality=95).numpy()

  def png(self, color, hw=(20, 24)) -> bytes:
    return tf.io.encode_png(self.pixels(color, hw)).numpy()

  @staticmethod
  def colors(n: int, seed: int = 0) -> np.ndarray:
    """`n` colours at least 24 apart in some channel (told apart after JPEG and resizing)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(16, 240, 24)] * 3), -1).reshape(-1, 3)
    return grid[rng.choice(len(grid), n, replace=False)]

  @staticmethod
  def identify(images: np.ndarray, colors: np.ndarray, mean=0.0, std=1.0) -> np.ndarray:
    """Index into `colors` of each image's mean colour (after x -> (x - mean) / std)."""
    means = images.reshape(len(images), -1, 3).mean(1) * std + mean
    return np.abs(means[:, None] - colors[None]).max(-1).argmin(-1)


@pytest.fixture(scope="session")
def images():
  return Images()
