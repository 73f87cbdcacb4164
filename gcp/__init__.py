"""gcp: deep second-order networks (global covariance pooling) in JAX/Flax."""
