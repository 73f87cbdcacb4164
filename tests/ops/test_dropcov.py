"""DropCov's adaptive channel dropout against numpy and a PyTorch port of SPEC §1."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp.ops import dropcov


def rate_reference(y, x):
  """SPEC §1 in float64: p = clip(1 - (10 / log2 d) mean_b cos(y_b, rowsum(Cov(x_b))), 0, 1)."""
  d = y.shape[-1]
  cos = []
  for yb, xb in zip(y, x):
    rows = np.cov(xb.T, bias=True).sum(1)
    cos.append(yb @ rows / (np.linalg.norm(yb) * np.linalg.norm(rows)))
  return np.clip(1 - 10 / np.log2(d) * np.mean(cos), 0, 1)


def test_eca_softmax_is_conv1d_then_softmax():
  rng = np.random.default_rng(0)
  s, k = rng.normal(size=(3, 7)), rng.normal(size=3)
  padded = np.pad(s, ((0, 0), (1, 1)))
  logits = np.stack([padded[:, c:c + 3] @ k for c in range(7)], axis=1)  # cross-correlation
  want = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  got = dropcov.eca_softmax(jnp.asarray(s, jnp.float32), jnp.asarray(k, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("mix", [0.0, 0.5, 1.0])
def test_drop_rate_equals_the_formula(mix):
  # y aligned with the covariance row sums (mix 1), random (0), or in between: covers the
  # clipped (p = 0) and interior cases.
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 30, 16)) * np.linspace(0.5, 2, 16)
  rows = np.stack([np.cov(b.T, bias=True).sum(1) for b in x])
  y = mix * rows + (1 - mix) * rng.normal(size=rows.shape)
  want = rate_reference(y, x)
  got = dropcov.adaptive_drop_rate(jnp.asarray(y, jnp.float32), jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_drop_rate_reaches_one_and_has_no_gradient():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(2, 20, 8)), jnp.float32)
  rows = jnp.einsum("bmc,bm->bc", x - x.mean(1, keepdims=True),
                    (x - x.mean(1, keepdims=True)).sum(-1)) / 20
  assert float(dropcov.adaptive_drop_rate(-rows, x)) == 1.0  # anti-aligned: clipped at 1
  grads = jax.grad(lambda y, f: dropcov.adaptive_drop_rate(y, f), argnums=(0, 1))(rows * 0.3, x)
  assert all(float(jnp.abs(g).max()) == 0.0 for g in grads)


def test_channel_dropout_fraction_and_scaling():
  x = jnp.ones((64, 5, 128))
  for rate in (0.1, 0.4):
    drops = []
    for seed in range(8):
      out = dropcov.channel_dropout(x, jnp.float32(rate), jax.random.key(seed))
      kept = np.asarray(out[:, 0, :] != 0)
      # Whole channels: every location of a (sample, channel) shares the decision.
      np.testing.assert_array_equal(np.asarray(out != 0), np.repeat(kept[:, None], 5, 1))
      np.testing.assert_allclose(np.asarray(out)[np.asarray(out) != 0], 1 / (1 - rate),
                                 rtol=1e-6)
      drops.append(1 - kept.mean())
    # 8 * 64 * 128 Bernoulli draws: the standard error is below 0.003.
    assert abs(np.mean(drops) - rate) < 0.01


def test_channel_dropout_at_rate_one_and_zero():
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, 6)), jnp.float32)
  dropped = dropcov.channel_dropout(x, jnp.float32(1.0), jax.random.key(0))
  assert np.all(np.asarray(dropped) == 0)
  grad = jax.grad(
      lambda f: dropcov.channel_dropout(f, jnp.float32(1.0), jax.random.key(0)).sum())(x)
  assert np.all(np.isfinite(grad))
  np.testing.assert_array_equal(dropcov.channel_dropout(x, jnp.float32(0.0), jax.random.key(0)), x)


def test_dropcov_train_matches_pytorch_port():
  torch = pytest.importorskip("torch", reason="the PyTorch port needs torch (test extra)")
  rng = np.random.default_rng(4)
  # Half the channels anti-correlated with the other half: the covariance row sums mix
  # signs, cos(y, rows) is ~0.3 and p lands inside (0, 1) (about 0.2).
  u = rng.normal(size=(3, 25, 8))
  x = np.concatenate([u, -0.5 * u + 0.1 * rng.normal(size=u.shape)], axis=-1)
  kernel = rng.normal(size=3) * 0.5
  w = rng.normal(size=(3, 16, 16))
  key = jax.random.key(7)

  def ours(f, k):
    cov, rate = dropcov.dropcov_train(f, k, key)
    return jnp.sum(cov * jnp.asarray(w, jnp.float32)), rate

  (value, rate), grads = jax.value_and_grad(ours, argnums=(0, 1), has_aux=True)(
      jnp.asarray(x, jnp.float32), jnp.asarray(kernel, jnp.float32))
  keep = np.asarray(jax.random.bernoulli(key, 1.0 - rate, (3, 1, 16)))

  # The port, from SPEC §1, float64, with the same keep mask.
  xt = torch.tensor(x, requires_grad=True)
  kt = torch.tensor(kernel, requires_grad=True)
  s = xt.mean(1)
  y = torch.softmax(torch.nn.functional.conv1d(s[:, None], kt.view(1, 1, 3), padding=1)[:, 0], -1)
  xr = xt * (1 + y[:, None, :])
  with torch.no_grad():
    xc = xr - xr.mean(1, keepdim=True)
    rows = (xc.transpose(1, 2) @ xc / 25).sum(-1)
    p = torch.clamp(1 - 10 / np.log2(16) * torch.cosine_similarity(y, rows, dim=-1).mean(), 0, 1)
  xd = xr * torch.tensor(keep) / (1 - p)
  xdc = xd - xd.mean(1, keepdim=True)
  value_t = ((xdc.transpose(1, 2) @ xdc / 25) * torch.tensor(w)).sum()
  value_t.backward()
  np.testing.assert_allclose(float(rate), float(p), atol=1e-6)
  np.testing.assert_allclose(float(value), value_t.item(), rtol=1e-5)
  assert 0.05 < float(rate) < 0.95  # an interior rate: the dropout is exercised
  np.testing.assert_allclose(grads[0], xt.grad.numpy(), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grads[1], kt.grad.numpy(), rtol=1e-4, atol=1e-6)
