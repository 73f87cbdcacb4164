"""gcp: deep second-order networks (global covariance pooling) in JAX/Flax."""
from gcp import runtime as _runtime

_runtime.configure()  # the persistent compilation cache
