"""Second-order diagnostics against exact computations: numpy covariances and float64
eigendecompositions, a float64 Newton-Schulz loop written from SPEC §1, and the head's
own output for the captured features."""
import jax
import numpy as np
import pytest

from gcp import ops
from gcp.analysis import diagnostics, probe


@pytest.fixture(scope="module")
def covariances():
  """Covariances of 6 images of M = 12 samples of C = 16 channels (rank 11: singular)."""
  x = np.random.default_rng(0).normal(size=(6, 12, 16)) * np.linspace(0.2, 3, 16)
  return x, np.asarray(ops.covariance(x.astype(np.float32)))


def test_spectrum_matches_numpy(covariances):
  x, cov = covariances
  reference = np.stack([np.cov(f, rowvar=False, bias=True) for f in x])
  lam = np.clip(np.linalg.eigvalsh(reference)[:, ::-1], 0, None)
  p = lam / lam.sum(-1, keepdims=True)
  result = diagnostics.spectrum(cov)
  # float32 covariance against float64: 1e-6 of the largest normalised eigenvalue.
  np.testing.assert_allclose(result["normalized"], p.mean(0), atol=1e-6)
  logs = np.log(np.where(p > 1e-12, p, 1.0))
  np.testing.assert_allclose(result["effective_rank"],
                             np.mean(np.exp(-np.sum(p * logs, -1))), rtol=1e-5)
  assert result["rank"] == 11 and result["dim"] == 16 and result["condition"] == np.inf


def reference_isqrt(s, n):
  """SPEC §1 in float64: Y0 = S / tr S, Z0 = I; T = (3I - Z Y) / 2, Y <- Y T, Z <- T Z;
  Y_N sqrt(tr S)."""
  trace = np.trace(s)
  y, z = s / trace, np.eye(len(s))
  for _ in range(n):
    t = 0.5 * (3 * np.eye(len(s)) - z @ y)
    y, z = y @ t, t @ z
  return y * np.sqrt(trace)


def test_newton_schulz_convergence_matches_a_float64_loop(covariances):
  _, cov = covariances
  result = diagnostics.newton_schulz_convergence(cov, max_iters=8)
  s = cov.astype(np.float64)
  for k in (1, 5, 8):
    y = np.stack([reference_isqrt(c, k) for c in s])
    root = diagnostics.exact_sqrt(s)
    residual = np.mean([np.linalg.norm(a @ a - c) / np.linalg.norm(c) for a, c in zip(y, s)])
    error = np.mean([np.linalg.norm(a - r) / np.linalg.norm(r) for a, r in zip(y, root)])
    # float32 iteration against float64: 1e-5 absolute on relative norms.
    np.testing.assert_allclose(result["residual"][k - 1], residual, atol=1e-5)
    np.testing.assert_allclose(result["sqrt_error"][k - 1], error, atol=1e-5)
  assert result["iterations"] == list(range(1, 9))


def test_exact_sqrt_squares_back_and_iterations_converge_to_it():
  a = np.random.default_rng(1).normal(size=(3, 8, 8))
  spd = a @ a.transpose(0, 2, 1) + 0.5 * np.eye(8)  # condition number ~ 100
  root = diagnostics.exact_sqrt(spd)
  np.testing.assert_allclose(root @ root, spd, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(root, root.transpose(0, 2, 1), atol=1e-12)
  errors = diagnostics.newton_schulz_convergence(spd, max_iters=20)["sqrt_error"]
  assert errors[0] > errors[2] > errors[4] and min(errors) < 1e-5


@pytest.mark.parametrize("head, options", [("isqrt", {"reduction_dim": 3, "num_iters": 5}),
                                           ("gap", {})])
def test_head_features_are_what_the_head_pools(tiny, head, options):
  # Re-applying the head's operators to the captured features gives the head's output.
  model, variables, batch = tiny.build(head, **options)
  images = batch["image"]
  features = np.asarray(jax.jit(lambda v, x: diagnostics.head_features(model, v, x))(
      variables, images))
  pooled = jax.jit(lambda v, x: probe.capture(model, v, x, probe.HEAD))(variables, images)
  if head == "isqrt":
    assert features.shape == (10, 64, 3)  # 8 x 8 map after the 3-channel reduction block
    expected = ops.triu_vec(ops.isqrt_cov(features, 5))
  else:
    assert features.shape == (10, 64, 4)  # the head's input: 4 channels
    expected = features.mean(1)
  np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)


def test_diagnostics_of_a_model(tiny):
  model, variables, batch = tiny.build("isqrt", reduction_dim=3, num_iters=5)
  # Example 8 blank: constant features (a zero covariance, up to rounding): left out.
  batch = {**batch, "image": np.concatenate([batch["image"][:7],
                                             np.zeros_like(batch["image"][7:])])}
  result = diagnostics.diagnostics(model, variables, [batch], num_iters=5, max_iters=6)
  assert result["examples"] == 8 and result["constant_features"] == 1
  assert result["samples_per_image"] == 64
  assert result["spectrum"]["dim"] == 3
  assert result["isqrt_error"] == result["newton_schulz"]["sqrt_error"][4]
  assert len(result["newton_schulz"]["residual"]) == 6
  jax.tree.map(lambda v: np.testing.assert_array_equal(np.isfinite(v), True),
               result["newton_schulz"])
