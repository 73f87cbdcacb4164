"""ShuffleNetV2 (GCP_Optimization's ShuffleNetV2 / ShuffleNetV2_MPNCOV): sizes, strides,
channel shuffle, every head (traced; the training step: tests/models/test_zoo.py) and the
release's recipe. Conversion against a PyTorch port of the release:
tests/convert/test_shufflenet_release.py."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.gcp_optimization import get_config
from gcp import train
from gcp.heads import HEADS
from gcp.models import create_model
from gcp.models.shufflenet import channel_shuffle

TORCHVISION_X1_0 = 2_278_604  # torchvision's shufflenet_v2_x1_0 (its model card)
# ShuffleNetV2_MPNCOV x1.0: the 1024 -> 1000 fc (1,025,000) becomes 1024 -> 256 conv + BN
# and a 32,896 -> 1000 fc (the port's count, tests/convert/test_shufflenet_release.py).
RELEASE_MPNCOV_X1_0 = TORCHVISION_X1_0 - 1_025_000 + 1024 * 256 + 2 * 256 + 32_896 * 1000 + 1000


def shapes(model, size=64, **apply_kwargs):
  """(variables, output) shapes of `model` on a `[2, size, size, 3]` batch, traced only."""
  x = jnp.zeros((2, size, size, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
  out = jax.eval_shape(lambda v: model.apply(v, x, **apply_kwargs), variables)
  return variables, out


def num_params(model):
  return sum(x.size for x in jax.tree.leaves(shapes(model)[0]["params"]))


def test_parameter_counts_are_the_releases():
  assert RELEASE_MPNCOV_X1_0 == 34_413_260
  assert num_params(create_model("shufflenet_v2", head="gap", num_classes=1000)) == \
      TORCHVISION_X1_0
  model = create_model("shufflenet_v2", head="isqrt", num_classes=1000, reduction_dim=256)
  assert num_params(model) == RELEASE_MPNCOV_X1_0
  assert model.head.reduction_relu6 and model.init_scheme == "torchvision"


def test_keeps_its_strides_7x7_at_224():
  model = create_model("shufflenet_v2", head="isqrt", num_classes=10, reduction_dim=256)
  _, (logits, state) = shapes(model, 224, capture_intermediates=True,
                              mutable=["intermediates"])
  assert state["intermediates"]["head"]["reduce"]["__call__"][0].shape == (2, 7, 7, 256)
  assert logits.shape == (2, 10)


def test_channel_shuffle_interleaves_the_halves_as_pytorch():
  x = np.arange(2 * 3 * 3 * 8, dtype=np.float32).reshape(2, 3, 3, 8)
  # PyTorch: view(B, 2, C/2, H, W).transpose(1, 2): out channel 2i + j <- channel 4j + i.
  np.testing.assert_array_equal(channel_shuffle(jnp.asarray(x)),
                                x[..., [0, 4, 1, 5, 2, 6, 3, 7]])


def test_unknown_width_is_named():
  model = create_model("shufflenet_v2", head="gap", num_classes=10, width_mult=0.75)
  with pytest.raises(ValueError, match=r"no width_mult 0.75; valid: 0.5, 1.0, 1.5, 2.0"):
    shapes(model)


@pytest.mark.parametrize("head", sorted(HEADS))
def test_every_head_builds_and_trains_in_shape(head):
  """Traced only (every head trains a compiled step in tests/models/test_zoo.py)."""
  model = create_model("shufflenet_v2", head=head, num_classes=5, reduction_dim=8,
                       sketch_dim=32, width_mult=0.5)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 64, 64, 3))))
  logits, _ = jax.eval_shape(lambda v: model.apply(
      v, jnp.zeros((2, 64, 64, 3)), train=True, mutable=["batch_stats", "intermediates"],
      rngs={"dropout": jax.random.key(1)}), variables)
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  assert ("reduce" in variables["params"].get("head", {})) == (head != "gap")


@pytest.mark.parametrize("schedule, epochs", [("LRnorm", 240), ("LRfast", 60),
                                              ("LRadju", 100)])
def test_release_recipe(schedule, epochs):
  """main_shufflenet.py: batch 1024, lr 0.5, wd 4e-5, lr 0.5 (1 - e / epochs)."""
  config = get_config(f"shufflenet_v2,{schedule}")
  assert (config.model.arch, config.model.head, config.model.reduction_dim) == (
      "shufflenet_v2", "isqrt", 256)
  assert (config.batch_size, config.optim.learning_rate, config.optim.weight_decay,
          config.num_epochs, config.optim.label_smoothing) == (1024, 0.5, 4e-5, epochs, 0.0)
  steps = 10
  lr = train.learning_rate_schedule(config.optim, steps, config.num_epochs, 1024)
  for epoch in (0, 1, epochs // 2, epochs - 1):
    np.testing.assert_allclose(lr(epoch * steps + steps - 1), 0.5 * (1 - epoch / epochs),
                               rtol=1e-6)
