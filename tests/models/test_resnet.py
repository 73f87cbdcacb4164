"""ResNet backbones: exact parameter counts (SPEC §2), feature-map sizes, forward pass."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp.models import create_model

# SPEC §2, params only, 1000 classes: GAP baseline, GCP d=128, GCP d=256.
PARAM_COUNTS = {
    "resnet18": (11_689_512, 19_499_304, 44_205_096),
    "resnet34": (21_797_672, 29_607_464, 54_313_256),
    "resnet50": (25_557_032, 32_027_432, 56_929_832),
    "resnet101": (44_549_160, 51_019_560, 75_921_960),
}


def abstract_variables(model, size):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def num_params(model):
  return sum(x.size for x in jax.tree.leaves(abstract_variables(model, 64)["params"]))


@pytest.mark.parametrize("arch", sorted(PARAM_COUNTS))
def test_parameter_counts_match_spec(arch):
  gap, d128, d256 = PARAM_COUNTS[arch]
  assert num_params(create_model(arch, head="gap", num_classes=1000)) == gap
  assert num_params(create_model(arch, head="isqrt", num_classes=1000,
                                 reduction_dim=128)) == d128
  assert num_params(create_model(arch, head="isqrt", num_classes=1000,
                                 reduction_dim=256)) == d256
  # DropCov adds the 3 weights of its ECA conv; cov and eig heads have the same size.
  assert num_params(create_model(arch, head="dropcov", num_classes=1000,
                                 reduction_dim=128)) == d128 + 3
  assert num_params(create_model(arch, head="eig", num_classes=1000,
                                 reduction_dim=128)) == d128


def last_stage_shape(model, size):
  """Shape of the last residual block's output, traced without computing anything."""
  variables = abstract_variables(model, size)
  _, state = jax.eval_shape(lambda v: model.apply(
      v, jnp.zeros((1, size, size, 3)), capture_intermediates=True,
      mutable=["intermediates"]), variables)
  last = sorted(k for k in state["intermediates"] if k.startswith("layer4_"))[-1]
  return state["intermediates"][last]["__call__"][0].shape


@pytest.mark.parametrize("head, size, expected", [
    ("isqrt", 224, (1, 14, 14, 512)),   # GCP: layer4 keeps stride 1, M = 196
    ("isqrt", 448, (1, 28, 28, 512)),   # fine-grained input, M = 784
    ("gap", 224, (1, 7, 7, 512)),       # GAP keeps the stride
])
def test_last_stage_stride_follows_head(head, size, expected):
  assert last_stage_shape(create_model("resnet18", head=head, num_classes=10), size) == expected


def test_small_input_stem_keeps_resolution():
  model = create_model("resnet18", head="isqrt", num_classes=10, small_input=True)
  assert last_stage_shape(model, 28) == (1, 7, 7, 512)
  params = abstract_variables(model, 28)["params"]
  assert params["conv1"]["kernel"].shape == (3, 3, 3, 64)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_forward_gives_float32_logits(dtype):
  model = create_model("resnet18", head="isqrt", num_classes=10, reduction_dim=8, width=4,
                       small_input=True, dtype=dtype)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 3)), jnp.float32)
  # Jitted, with rbg keys: one quick compile instead of one per operation.
  variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
  logits, state = jax.jit(lambda v, x: model.apply(
      v, x, capture_intermediates=True, mutable=["intermediates"]))(variables, x)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  # The second-order representation is float32 even in a bf16 backbone.
  assert state["intermediates"]["head"]["__call__"][0].dtype == jnp.float32


def test_rejects_non_rgb_input():
  model = create_model("resnet18", head="gap", num_classes=10)
  with pytest.raises(ValueError, match=r"NHWC RGB"):
    model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
