"""A tiny network in the zoo's layout (a `head` module, a `fc` classifier), its variables
with non-trivial BatchNorm statistics, and a padded batch."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp import heads


class TinyNet(nn.Module):
  """conv 3x3 -> BatchNorm -> ReLU -> pooling head -> dense, a few hundred parameters."""
  head: nn.Module
  features: int = 4
  num_classes: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.features, (3, 3), name="stem")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="bn")(x)
    x = self.head(nn.relu(x), train=train)
    return nn.Dense(self.num_classes, name="fc")(x)


class Tiny:
  """`build(head, ...)` -> (model, variables, batch): 8 x 8 images, 10 examples of which
  the last 2 are padding (mask False, garbage images), labels in [0, 3)."""

  @staticmethod
  def batch(seed: int = 0, size: int = 8, n: int = 10, padding: int = 2) -> dict:
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, size, size, 3)).astype(np.float32)
    images[n - padding:] = 50.0
    return {"image": images, "label": rng.integers(0, 3, n).astype(np.int32),
            "mask": np.arange(n) < n - padding}

  def build(self, head: str = "gap", seed: int = 0, num_classes: int = 3, **head_options):
    model = TinyNet(head=heads.HEADS[head](**head_options), num_classes=num_classes)
    batch = self.batch(seed)
    variables = dict(jax.jit(model.init)(jax.random.key(seed), batch["image"]))
    rng = np.random.default_rng(seed + 1)
    # Running statistics unlike the batch's, so that evaluation and training modes differ.
    variables["batch_stats"] = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.asarray(rng.uniform(-0.2, 0.2, x.shape) if path[-1].key == "mean"
                                    else rng.uniform(0.5, 1.5, x.shape), jnp.float32),
        variables["batch_stats"])
    return model, variables, batch


@pytest.fixture(scope="session")
def tiny():
  return Tiny()
