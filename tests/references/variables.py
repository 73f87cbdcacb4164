"""Model variables for tests, drawn with numpy (no compilation)."""
import jax
import jax.numpy as jnp
import numpy as np

from gcp.models import create_model


def random_variables(spec, seed=0, image_size=16):
  """Variables of `create_model(**spec)` for `image_size` images: normal weights (std 0.1),
  positive BatchNorm variances."""
  shapes = jax.eval_shape(lambda: create_model(**spec).init(
      jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: (rng.uniform(0.5, 1.5, s.shape) if "var" in jax.tree_util.keystr(path)
                       else rng.normal(0, 0.1, s.shape)).astype(s.dtype), shapes)
