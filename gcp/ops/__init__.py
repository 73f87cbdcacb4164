"""Second-order pooling operators: pure `jax.numpy` functions, no Flax, no configs.

Shapes follow SPEC §1: a feature map is seen as M samples of a C-dim vector, `[..., M, C]`.
"""
from gcp.ops.covariance import covariance, triu_vec
from gcp.ops.newton_schulz import isqrt

__all__ = ["covariance", "isqrt", "triu_vec"]
