"""Mixup and CutMix of a batch, as timm's `Mixup(mode='batch', correct_lam=True)`.

Pure jnp, jit-able: it runs inside the jitted train step. One mixing weight per batch;
example i is mixed with example B - 1 - i (the batch reversed, timm's `x.flip(0)`), and
its targets with the same weight.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp


class MixParams(NamedTuple):
  """One batch's draw. `lam` `[]` float32: the weight of each example's own image and
  targets (for CutMix, 1 - the pasted box's area fraction); `use_cutmix` `[]` bool;
  `box` `[4]` int32 `(top, bottom, left, right)`: the pasted rows top:bottom and columns
  left:right (CutMix only)."""
  lam: jax.Array
  use_cutmix: jax.Array
  box: jax.Array


def sample_mix(rng, height: int, width: int, *, mixup_alpha: float = 0.8,
               cutmix_alpha: float = 1.0, switch_prob: float = 0.5) -> MixParams:
  """The mixing of one batch of `height` x `width` images: lam ~ Beta(alpha, alpha) of
  the branch taken (CutMix with probability `switch_prob` when both alphas are > 0; an
  alpha of 0 disables its branch; both 0: lam = 1, no mixing). CutMix's box is timm's
  `rand_bbox`: a centre uniform over the pixels, sides int(sqrt(1 - lam) * size) halved
  (// 2) each way, clipped to the image; lam is then corrected to the box's actual area."""
  if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= switch_prob <= 1:
    raise ValueError(f"mixup needs alphas >= 0 (0 disables) and 0 <= switch_prob <= 1, got "
                     f"mixup_alpha={mixup_alpha}, cutmix_alpha={cutmix_alpha}, "
                     f"switch_prob={switch_prob}")
  if mixup_alpha == 0 and cutmix_alpha == 0:
    return MixParams(jnp.ones((), jnp.float32), jnp.asarray(False), jnp.zeros(4, jnp.int32))
  switch_key, lam_key, y_key, x_key = jax.random.split(rng, 4)
  if mixup_alpha > 0 and cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(switch_key) < switch_prob
  else:
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
  # One Beta draw with the branch's alpha (the gamma sampler dominates compile time).
  alpha = jnp.where(use_cutmix, cutmix_alpha, mixup_alpha)
  lam = jax.random.beta(lam_key, alpha, alpha)

  ratio = jnp.sqrt(1.0 - lam)
  half_h = jnp.floor(height * ratio).astype(jnp.int32) // 2
  half_w = jnp.floor(width * ratio).astype(jnp.int32) // 2
  cy = jax.random.randint(y_key, (), 0, height)
  cx = jax.random.randint(x_key, (), 0, width)
  box = jnp.stack([jnp.clip(cy - half_h, 0, height), jnp.clip(cy + half_h, 0, height),
                   jnp.clip(cx - half_w, 0, width), jnp.clip(cx + half_w, 0, width)])
  area = (box[1] - box[0]) * (box[3] - box[2])
  lam = jnp.where(use_cutmix, 1.0 - area / (height * width), lam).astype(jnp.float32)
  return MixParams(lam, use_cutmix, box)


def apply_mix(params: MixParams, images, targets):
  """Mixes `images` `[B, ..., H, W, C]` and `targets` `[B, K]` by `params`:
  CutMix pastes the reversed batch's box (same box for every leading index, e.g. video
  frames); mixup blends lam * x + (1 - lam) * x[::-1]; targets lam * t + (1 - lam) * t[::-1].
  Returns `(images, targets)` with their shapes and dtypes."""
  height, width = images.shape[-3], images.shape[-2]
  flipped = images[::-1]

  def cutmix():
    top, bottom, left, right = params.box
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    inside = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    return jnp.where(inside[:, :, None], flipped, images)

  def mixup():
    lam = params.lam.astype(images.dtype)
    return images * lam + flipped * (1 - lam)

  images = jax.lax.cond(params.use_cutmix, cutmix, mixup)
  lam = params.lam.astype(targets.dtype)
  return images, targets * lam + targets[::-1] * (1 - lam)


def mix_batch(rng, images, targets, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
              switch_prob: float = 0.5):
  """timm's `Mixup(mixup_alpha, cutmix_alpha, switch_prob=switch_prob, mode='batch',
  correct_lam=True)` (mix prob 1) of `images` `[B, H, W, C]` (or `[B, ..., H, W, C]`) and
  `targets` `[B, K]` (one-hot or label-smoothed; any rows, e.g. the identity to get the
  mixing matrix). Returns the mixed `(images, targets)`, same shapes and dtypes; both
  alphas 0 returns them unchanged. The draw is `sample_mix(rng, H, W, ...)`."""
  if mixup_alpha == 0 and cutmix_alpha == 0:
    return images, targets
  params = sample_mix(rng, images.shape[-3], images.shape[-2], mixup_alpha=mixup_alpha,
                      cutmix_alpha=cutmix_alpha, switch_prob=switch_prob)
  return apply_mix(params, images, targets)
