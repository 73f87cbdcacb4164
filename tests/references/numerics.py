"""Numerical yardsticks shared by the operator tests."""
import numpy as np

NUM_DEVICES = 8  # simulated CPU devices of the test session (tests/conftest.py)


def rel_err(a, b) -> float:
  """Relative Frobenius error of `a` against the reference `b`, in float64."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def max_rel_diff(a, b) -> float:
  """Largest absolute difference of `a` from the reference `b`, relative to `b`'s largest
  magnitude (the yardstick for logits)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def finite_difference_grad(f, x, h=1e-6):
  """Central differences of a float64 function, entry by entry."""
  grad = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[i] = h
    grad[i] = (f(x + e) - f(x - e)) / (2 * h)
  return grad
