"""Model registry: `create_model(arch, head=..., num_classes=...)` -> a flax.linen Module.

The module is called as `model.apply(variables, images_nhwc, train=...)` and returns
float32 logits `[B, num_classes]`.
"""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from gcp.heads import HEADS
from gcp.models.resnet import STAGE_SIZES, ResNet

ARCHS = tuple(STAGE_SIZES)
DTYPES = ("float32", "bfloat16", "float16")


def _fields(cls) -> set[str]:
  return {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}


def create_model(arch: str, *, head: str, num_classes: int, reduction_dim: int | None = None,
                 dtype: str = "float32", **options) -> nn.Module:
  """Builds a backbone ending in a registered pooling head and a linear classifier.

  Args:
    arch: one of `ARCHS`.
    head: one of `gcp.heads.HEADS`.
    num_classes: classifier outputs.
    reduction_dim: channels of the head's 1x1 reduction block (None: no reduction); used by
      heads that have one.
    dtype: backbone compute dtype; second-order parts always run in float32.
    **options: backbone attributes (`width`, `small_input`) and head attributes
      (`num_iters`, `isqrt_method`, `alpha`, `sketch_dim`). An option that only other heads take is ignored, so one config
      serves every head; a name no backbone or head knows is an error.
  """
  if arch not in STAGE_SIZES:
    raise ValueError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
  if head not in HEADS:
    raise ValueError(f"unknown head {head!r}; valid heads: {', '.join(HEADS)}")
  if dtype not in DTYPES:
    raise ValueError(f"unknown dtype {dtype!r}; valid dtypes: {', '.join(DTYPES)}")
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
  head_cls = HEADS[head]
  backbone_fields = _fields(ResNet) - {"stage_sizes", "block", "head", "num_classes", "dtype"}
  known = backbone_fields | set().union(*(_fields(h) for h in HEADS.values()))
  unknown = sorted(set(options) - known)
  if unknown:
    raise ValueError(f"unknown model option(s) {unknown}; valid options: {sorted(known)}")
  head_kwargs = {k: v for k, v in options.items() if k in _fields(head_cls)}
  if "reduction_dim" in _fields(head_cls):
    head_kwargs["reduction_dim"] = reduction_dim
  if "dtype" in _fields(head_cls):
    head_kwargs["dtype"] = jnp.dtype(dtype)
  stage_sizes, block = STAGE_SIZES[arch]
  return ResNet(stage_sizes=stage_sizes, block=block, head=head_cls(**head_kwargs),
                num_classes=num_classes, dtype=jnp.dtype(dtype),
                **{k: v for k, v in options.items() if k in backbone_fields})
