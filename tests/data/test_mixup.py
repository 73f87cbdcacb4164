"""Mixup / CutMix (gcp.data.mixup) against timm's Mixup(mode='batch', correct_lam=True).

References: timm's mixing for a drawn (lam, use_cutmix, box), written in numpy (example i
paired with B - 1 - i, the box pasted from the reversed batch, targets mixed by the same
lam), checked against `mix_batch` on the same key (its draw is `sample_mix(key, H, W)`,
which gives the same draws vmapped over keys); and timm's `rand_bbox` in numpy for the
distribution of the draws.
JAX compiles the Beta sampler slowly on CPU: the tests share three compiled functions.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from gcp.data import mixup

B, H, W, C, K = 6, 24, 32, 3, 5
RECIPE = dict(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5)
NUM_DRAWS = 10_000  # ~5000 CutMix draws: KS then tells Beta(1, 1) from Beta(0.8, 0.8)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(B, H, W, C)).astype(np.float32)
  targets = np.full((B, K), 0.1 / K, np.float32)  # label-smoothed one-hot, eps 0.1
  targets[np.arange(B), rng.integers(0, K, B)] += 0.9
  return images, targets


@pytest.fixture(scope="module")
def recipe():
  """The recipe's jitted mix_batch, and NUM_DRAWS keys with their sample_mix draws."""
  keys = jax.random.split(jax.random.key(1), NUM_DRAWS)
  sample = functools.partial(mixup.sample_mix, height=H, width=W, **RECIPE)
  draws = jax.tree.map(np.asarray, jax.jit(jax.vmap(sample))(keys))
  return jax.jit(functools.partial(mixup.mix_batch, **RECIPE)), keys, draws


def _timm_mix(lam, use_cutmix, box, images, targets):
  top, bottom, left, right = box
  if use_cutmix:
    mixed = images.copy()
    mixed[:, top:bottom, left:right] = images[::-1][:, top:bottom, left:right]
  else:
    mixed = images * lam + images[::-1] * (1 - lam)
  return mixed, targets * lam + targets[::-1] * (1 - lam)


def test_mix_batch_is_timms_mixing_of_its_draw(recipe):
  """20 keys (both branches occur): images and targets equal the numpy reference of the
  key's draw (rtol 1e-6: float32 products in another order); target rows sum to one
  (1e-6); CutMix's lam is 1 - the box's area fraction (1e-7)."""
  mix, keys, draws = recipe
  images, targets = _batch()
  for i in range(20):
    lam, use_cutmix, box = float(draws.lam[i]), bool(draws.use_cutmix[i]), draws.box[i]
    got_images, got_targets = mix(keys[i], images, targets)
    want_images, want_targets = _timm_mix(lam, use_cutmix, box, images, targets)
    np.testing.assert_allclose(got_images, want_images, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got_targets, want_targets, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(got_targets).sum(1), 1.0, atol=1e-6)
    top, bottom, left, right = box
    assert 0 <= top <= bottom <= H and 0 <= left <= right <= W
    if use_cutmix:
      assert lam == pytest.approx(1 - (bottom - top) * (right - left) / (H * W), abs=1e-7)
  assert 0 < draws.use_cutmix[:20].sum() < 20


def _timm_cutmix_boxes(n, rng):
  """n boxes (top, bottom, left, right) of timm's rand_bbox on H x W, lam ~ Beta(1, 1)."""
  ratio = np.sqrt(1 - rng.beta(1.0, 1.0, n))
  cut_h, cut_w = (H * ratio).astype(int), (W * ratio).astype(int)
  cy, cx = rng.integers(0, H, n), rng.integers(0, W, n)
  return np.stack([np.clip(cy - cut_h // 2, 0, H), np.clip(cy + cut_h // 2, 0, H),
                   np.clip(cx - cut_w // 2, 0, W), np.clip(cx + cut_w // 2, 0, W)], 1)


def test_draws_are_distributed_as_timms(recipe):
  """Over NUM_DRAWS draws: CutMix with probability switch_prob (+- 4 sd); mixup's lam
  ~ Beta(0.8, 0.8); CutMix's corrected lam and box edges distributed as timm's rand_bbox
  (numpy, 10^5 draws) (Kolmogorov-Smirnov p > 0.001); an unclipped box has sides
  2 (int(H r) // 2) and 2 (int(W r) // 2) for one r = sqrt(1 - lam)."""
  _, _, draws = recipe
  cut = draws.use_cutmix
  assert abs(cut.mean() - 0.5) < 4 * np.sqrt(0.25 / NUM_DRAWS)
  assert stats.kstest(draws.lam[~cut], stats.beta(0.8, 0.8).cdf).pvalue > 1e-3
  boxes, reference = draws.box[cut], _timm_cutmix_boxes(100_000, np.random.default_rng(0))
  area = lambda b: (b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2])  # noqa: E731
  assert stats.ks_2samp(draws.lam[cut], 1 - area(reference) / (H * W)).pvalue > 1e-3
  for edge in range(4):
    assert stats.ks_2samp(boxes[:, edge], reference[:, edge]).pvalue > 1e-3
  top, bottom, left, right = boxes.T
  unclipped = (top > 0) & (bottom < H) & (left > 0) & (right < W)
  assert unclipped.sum() > 100
  h, w = (bottom - top)[unclipped], (right - left)[unclipped]
  # int(S r) is s or s + 1 for side s, so r in [h / H, (h + 2) / H) and [w / W, (w + 2) / W)
  assert (h % 2 == 0).all() and (w % 2 == 0).all()
  assert (np.maximum(h / H, w / W) < np.minimum((h + 2) / H, (w + 2) / W)).all()


def test_single_branches_mixing_matrix_and_dtype():
  """cutmix_alpha 0: always mixup; mixup_alpha 0: always CutMix (one box pasted, nothing
  else changed); the identity as targets gives the mixing matrix lam I + (1 - lam) J;
  bfloat16 images stay bfloat16 (mixup within 2^-7 (|x| + |x'|): bfloat16 rounds
  lam, the products and the sum, 2^-9 each); both alphas 0:
  unchanged."""
  images, _ = _batch(2)
  images = jnp.asarray(images, jnp.bfloat16)
  eye = jnp.eye(B)
  flip = np.eye(B)[::-1]

  @jax.jit
  def both(key):
    return (mixup.mix_batch(key, images, eye, mixup_alpha=0.8, cutmix_alpha=0.0),
            mixup.mix_batch(key, images, eye, mixup_alpha=0.0, cutmix_alpha=1.0))

  x = np.asarray(images, np.float32)
  for key in jax.random.split(jax.random.key(3), 4):
    (blended, blend_matrix), (pasted, paste_matrix) = both(key)
    assert blended.dtype == pasted.dtype == jnp.bfloat16
    lam = float(blend_matrix[0, 0])
    np.testing.assert_allclose(blend_matrix, lam * np.eye(B) + (1 - lam) * flip, atol=1e-6)
    error = np.abs(np.asarray(blended, np.float32) - (lam * x + (1 - lam) * x[::-1]))
    assert (error <= 2 ** -7 * (np.abs(x) + np.abs(x[::-1]))).all()  # lam, products, sum
    lam = float(paste_matrix[0, 0])
    np.testing.assert_allclose(paste_matrix, lam * np.eye(B) + (1 - lam) * flip, atol=1e-6)
    pasted = np.asarray(pasted, np.float32)
    changed = (pasted != x).any(-1).any(0)  # [H, W]
    rows, cols = np.nonzero(changed)
    if lam < 1:
      top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
      assert changed[top:bottom, left:right].all()
      np.testing.assert_array_equal(pasted[:, top:bottom, left:right],
                                    x[::-1][:, top:bottom, left:right])
      assert lam == pytest.approx(1 - (bottom - top) * (right - left) / (H * W), abs=1e-7)
    np.testing.assert_array_equal(pasted[:, ~changed], x[:, ~changed])
  unchanged = mixup.mix_batch(key, images, eye, mixup_alpha=0.0, cutmix_alpha=0.0)
  assert unchanged[0] is images and unchanged[1] is eye


def test_bad_arguments_say_what_is_wrong():
  with pytest.raises(ValueError, match="mixup needs alphas >= 0"):
    mixup.sample_mix(jax.random.key(0), H, W, mixup_alpha=-1.0)
