"""Second-order pooling operators: pure `jax.numpy` functions, no Flax, no configs.

Shapes follow SPEC §1: a feature map is seen as M samples of a C-dim vector, `[..., M, C]`.
Every operator computes in at least float32 (`compute_dtype`): bfloat16 and float16 inputs
in float32, float64 inputs (with `jax_enable_x64`) in float64.
"""
from gcp.ops.bilinear import bilinear_pool, compact_bilinear_pool, sketch_params, tensor_sketch
from gcp.ops.covariance import covariance, triu_vec
from gcp.ops.dtypes import compute_dtype, upcast
from gcp.ops.eig import eig_power
from gcp.ops.newton_schulz import isqrt, isqrt_cov

__all__ = ["bilinear_pool", "compact_bilinear_pool", "compute_dtype", "covariance",
           "eig_power", "isqrt", "isqrt_cov", "sketch_params", "tensor_sketch", "triu_vec",
           "upcast"]
