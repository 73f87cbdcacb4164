"""Sharpness: power iteration on a quadratic with a known spectrum, model Hessian-vector
products against the exact Hessian (jax.hessian, forward over reverse) and against finite
differences through the iSQRT head, Hutchinson's trace against the exact trace.

The exact Hessian is forward-over-reverse (jvp of grad, as jax.hessian), independent of
the reverse-over-reverse products under test."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from gcp.analysis import probe, sharpness


def quadratic(eigenvalues, seed=0):
  """0.5 x^T A x over the tree {"a": [3], "b": [2, 2]} (7 numbers), A = Q diag(l) Q^T."""
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(7, 7)))
  a = jnp.asarray(q @ np.diag(eigenvalues) @ q.T, jnp.float32)
  params = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
  loss = lambda p: 0.5 * ravel_pytree(p)[0] @ a @ ravel_pytree(p)[0]  # noqa: E731
  return jax.jit(lambda v: sharpness.hvp(loss, params, v)), params, q


@pytest.mark.parametrize("eigenvalues, top", [
    ((6.0, 3.0, 2.0, 1.0, 0.5, -1.0, -2.0), 6.0),
    ((1.0, 3.0, -8.0, 2.0, 0.5, 0.0, 4.0), -8.0),  # largest in magnitude is negative
])
def test_power_iteration_finds_the_top_eigenvalue(eigenvalues, top):
  matvec, params, q = quadratic(eigenvalues)
  result = sharpness.top_eigenvalue(matvec, params, jax.random.key(0), num_iters=200,
                                    tol=1e-7)
  assert result["converged"]
  # Gap ratio <= 0.5: converged far below the float32-level tolerance used here.
  np.testing.assert_allclose(result["eigenvalue"], top, rtol=1e-5)
  vector = ravel_pytree(result["vector"])[0]
  assert abs(float(vector @ q[:, list(eigenvalues).index(top)])) > 1 - 1e-5


def rademacher_std(eigenvalues, seed=0):
  """Standard deviation of one Hutchinson sample z^T A z for the `quadratic` A:
  sqrt(2 sum_{i != j} A_ij^2)."""
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(7, 7)))
  a = q @ np.diag(eigenvalues) @ q.T
  return np.sqrt(2 * np.sum((a - np.diag(np.diag(a))) ** 2))


def test_hutchinson_stops_at_the_error_target():
  eigenvalues = (6.0, 3.0, 2.0, 1.0, 0.5, -1.0, -2.0)  # trace 9.5
  matvec, params, _ = quadratic(eigenvalues)
  result = sharpness.hutchinson_trace(matvec, params, jax.random.key(0), rel_error=0.1,
                                      min_probes=10, max_probes=1000)
  assert result["stopped_by"] == "error target" and 10 <= result["probes"] < 1000
  assert result["stderr"] <= 0.1 * abs(result["trace"])
  # The estimate is where its own sampling distribution puts it: within 4 true standard
  # errors of the exact trace at the number of probes drawn.
  std = rademacher_std(eigenvalues) / np.sqrt(result["probes"])
  assert abs(result["trace"] - 9.5) < 4 * std
  assert result["significant"] and result["interval"][0] > 0


def test_hutchinson_flags_a_trace_near_zero():
  matvec, params, _ = quadratic((3.0, -3.0, 2.0, -2.0, 1.0, -1.0, 0.0))  # trace 0
  result = sharpness.hutchinson_trace(matvec, params, jax.random.key(0), rel_error=0.1,
                                      max_probes=40)
  assert result["stopped_by"] == "probe cap" and result["probes"] == 40
  low, high = result["interval"]
  assert low < 0 < high and not result["significant"]
  summary = {"trace": result["trace"], "trace_stderr": result["stderr"],
             "trace_interval": result["interval"], "trace_probes": 40,
             "trace_stopped_by": "probe cap", "trace_significant": False}
  assert "NOT SIGNIFICANT" in sharpness.describe_trace(summary)


@pytest.fixture(scope="module")
def exact(tiny):
  """The tiny GAP network, its variables, and the exact Hessian of its mean loss over the
  batch's 8 real examples (135 x 135), with the model HVP under test."""
  model, variables, batch = tiny.build("gap")
  flat, unravel = ravel_pytree(variables["params"])
  rest = {"batch_stats": variables["batch_stats"]}

  def mean_loss(x):
    total, count = probe.summed_loss(model, {"params": unravel(x), **rest}, batch)
    return total / count
  # Forward over reverse (jax.hessian's way), one column per basis vector.
  column = jax.jit(lambda e: jax.jvp(jax.grad(mean_loss), (flat,), (e,))[1])
  hessian = np.stack([np.asarray(column(e), np.float64) for e in jnp.eye(flat.size)], 1)
  matvec = sharpness.make_model_hvp(model, variables, [batch])
  return variables, unravel, hessian, matvec


def test_model_hvp_equals_the_exact_hessian_product(exact):
  variables, unravel, hessian, matvec = exact
  v = np.random.default_rng(0).normal(size=hessian.shape[0])
  hv = ravel_pytree(matvec(unravel(jnp.asarray(v, jnp.float32))))[0]
  # Reverse-over-reverse against forward-over-reverse, both float32.
  np.testing.assert_allclose(hv, hessian @ v, rtol=1e-4, atol=1e-4 * np.abs(hessian @ v).max())


def test_top_eigenvalue_of_the_model(exact):
  variables, unravel, hessian, matvec = exact
  eigenvalues = np.linalg.eigvalsh(hessian)
  top = eigenvalues[np.argmax(np.abs(eigenvalues))]
  result = sharpness.top_eigenvalue(matvec, variables["params"], jax.random.key(1),
                                    num_iters=300, tol=1e-6)
  np.testing.assert_allclose(result["eigenvalue"], top, rtol=1e-3)


def test_hutchinson_trace_within_four_standard_errors(exact):
  # Rademacher probes: the estimate's variance is 2 sum_{i != j} H_ij^2 / n, exactly
  # known from H; the test allows 4 of its standard deviations (a 6e-5 chance to fail for
  # a Gaussian estimate; the seed is fixed).
  variables, unravel, hessian, matvec = exact
  n = 400
  result = sharpness.hutchinson_trace(matvec, variables["params"], jax.random.key(2),
                                      rel_error=None, max_probes=n)
  assert result["probes"] == n and result["stopped_by"] == "probe cap"
  off_diagonal = hessian - np.diag(np.diag(hessian))
  std = np.sqrt(2 * np.sum(off_diagonal ** 2) / n)
  assert abs(result["trace"] - np.trace(hessian)) < 4 * std
  assert 0.5 * std < result["stderr"] < 2 * std  # the reported standard error is honest


def test_hvp_through_isqrt_head_matches_finite_differences(tiny):
  # The eigh path of iSQRT (the CPU default when M >= C) on a rank-deficient covariance
  # (ReLU zeros): second derivatives through eigh would be unbounded there, so the HVP
  # evaluates the head by Newton-Schulz matmuls, the same function. Checked against
  # central differences of the model's own (custom-VJP) gradient along a unit vector:
  # step 1e-3 (small enough not to cross ReLU kinks here), float32: 0.2% of the largest
  # entry (measured 0.05%).
  model, _, batch = tiny.build("isqrt", reduction_dim=None, num_iters=5,
                               isqrt_method="eigh")
  model = model.clone(features=8)  # 4 x 4 maps of 8 channels: M = 16 >= C = 8
  batch = {k: (v[:, :4, :4] if k == "image" else v) for k, v in batch.items()}
  variables = dict(model.init(jax.random.key(0), batch["image"]))
  flat, unravel = ravel_pytree(variables["params"])
  rest = {"batch_stats": variables["batch_stats"]}
  grad = jax.jit(jax.grad(lambda x: probe.summed_loss(
      model, {"params": unravel(x), **rest}, batch)[0] / 8.0))
  v = np.random.default_rng(3).normal(size=flat.shape)
  v = jnp.asarray(v / np.linalg.norm(v), jnp.float32)
  h = 1e-3
  expected = (grad(flat + h * v) - grad(flat - h * v)) / (2 * h)
  hv = ravel_pytree(sharpness.make_model_hvp(model, variables, [batch])(unravel(v)))[0]
  np.testing.assert_allclose(hv, expected, atol=2e-3 * np.abs(expected).max())
