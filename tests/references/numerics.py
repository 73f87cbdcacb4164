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


def float64_narrowings(fn, *args) -> list[str]:
  """Primitives of `fn(*args)` (sub-jaxprs included) that take a float64 operand and give a
  float32 result: empty iff no float64 data is ever computed in float32. Traces only (no
  compilation); call with float64 arrays under `jax.enable_x64(True)`."""
  import jax  # not at the top: conftest imports this module before it configures jax

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      ins = {str(getattr(v.aval, "dtype", "")) for v in eqn.invars}
      outs = {str(getattr(v.aval, "dtype", "")) for v in eqn.outvars}
      if "float64" in ins and "float32" in outs:
        yield eqn.primitive.name
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
          sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
          if hasattr(sub, "eqns"):
            yield from walk(sub)

  return list(walk(jax.make_jaxpr(fn)(*args).jaxpr))
