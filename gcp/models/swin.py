"""Swin Transformer (Swin-B: patch 4, window 7, 224 px) in Flax linen, NHWC, as the Moment
Probing release builds it (mingzeG/Moment-Probing, models/swin_transformer.py: timm 0.6's
Swin with MP+'s PSRP adapters and the MP head), for its ImageNet-21k backbone
`swin_base_patch4_window7_224_in22k` (embed 128, depths (2, 2, 18, 2), heads (4, 8, 16, 32)).

Parameter names mirror the release's state_dict with "." -> "_" inside a module and "/"
between our modules (as `gcp.models.vit`'s MP names do):

  patch_embed.proj.{weight,bias}                 patch_embed_proj/{kernel,bias}   (conv 4x4/4)
  patch_embed.norm.{weight,bias}                 patch_embed_norm/{scale,bias}
  layers.{i}.blocks.{j}.norm1 / norm2            layers_{i}/blocks_{j}/norm1 / norm2
  layers.{i}.blocks.{j}.attn.qkv / attn.proj     layers_{i}/blocks_{j}/attn_qkv / attn_proj
  layers.{i}.blocks.{j}.attn.relative_position_bias_table
                                                 layers_{i}/blocks_{j}/
                                                   attn_relative_position_bias_table
  layers.{i}.blocks.{j}.mlp.fc1 / mlp.fc2        layers_{i}/blocks_{j}/mlp_fc1 / mlp_fc2
  layers.{i}.blocks.{j}.psrp.{down, up_weight, up_bias}
                                                 layers_{i}/blocks_{j}/psrp/{down,scale,shift}
  layers.{i}.downsample.norm / .reduction        layers_{i}/downsample_norm / _reduction
  norm                                           norm
  head (Linear) / head.{proj, ln, downblocks.0.0, downblocks.0.2, classifier1, classifier2}
                                                 head/{kernel,bias} / head/{proj, norm, conv_0,
                                                   conv_1, fc_cls, fc_cov}
Linear weights `[out, in]` are our kernels transposed, conv weights OIHW ours HWIO. The
release's buffers `layers.{i}.blocks.{j}.attn.relative_position_index` and
`layers.{i}.blocks.{j}.attn_mask` (shifted blocks only) are not variables here: they are
computed from the window size and the resolution (`relative_position_index`,
`shifted_window_mask`).

The release's network (forward with probing_mode 'mp' or the linear head):
  patch embedding conv 4x4/4 -> LayerNorm -> 4 stages of Swin blocks (pre-norm; windowed
  attention with a learned relative position bias, every odd block of a stage on windows
  shifted by window // 2 with the -100 attention mask) each but the last ending in patch
  merging (2x2 neighbours concatenated in the order (0,0), (1,0), (0,1), (1,1) -> LayerNorm
  -> Linear 4C -> 2C without bias) -> x, the last stage's tokens `[B, N, 1024]`.
  linear: head(mean_n(norm(x)));  mp: head(cls = mean_n(norm(x)), x).
Our token heads (`gcp.heads.TOKEN_HEADS`) take `[B, 1 + N', D]`, token 0 the class token, so
the Swin hands them `[cls, x[:, 1:]]`: `LinearTokenHead` reads the class token alone, and
`MPHead` reads cls and the patch tokens x[:, 1:] exactly as the release's
`Moment_Probing_ViT`. Release quirks reproduced:
  - the MP head's second-order branch sees the UNnormalised last-stage tokens (the final
    `norm` feeds only the first-order cls), and drops the first of them (`x[:, 1:, :]`, the
    top-left window token of the 7 x 7 map: the ViT head's "skip the class token" slicing
    applied to a network without one), so its covariance averages over 48 tokens, not 49;
  - the window clamp: a stage whose resolution is at most the window (Swin-B at 224 px: the
    last stage, 7 x 7) uses one window of that resolution and never shifts, so stage 4's
    second block is not shifted;
  - no padding: every stage's resolution must be a multiple of its (clamped) window and, for
    patch merging, even; the release fails inside `window_partition` / `PatchMerging` (e.g.
    at 112 px, merging the 7 x 7 map of stage 3), and here such inputs raise ValueError.
    Swin-B runs at 224 x k px only (the release also pins the input size it was built for).
  - the release's `Moment_Probing_ViT(in_dim=1024)` and its 2883 classifier inputs are
    hard-coded (Swin-B's 1024 channels, 512 / 4 groups); our head takes its sizes from the
    tokens and its fields.
Not reproduced: the release's PSRP scale / shift start from timm's truncated normal like
every Linear; ours start at zero (`gcp.models.vit.PSRP`).

Numerics: LayerNorm eps 1e-5 (PyTorch's default, the release's `nn.LayerNorm`), exact
GELU, qkv with bias, attention scale head_dim ** -0.5. With `dtype` bfloat16 the matmuls
run in bfloat16 while the residual stream, LayerNorms, softmax and the head stay float32.
Initialisation as the release's `init_weights` (timm's `init_weights_vit_timm`): Linear
kernels and the relative position tables truncated normal 0.02, biases zero; the patch
conv keeps PyTorch's default.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gcp.layers import torch_uniform
from gcp.models.vit import PSRP, drop_path

LN_EPS = 1e-5
MASK_VALUE = -100.0  # the release's fill for pairs of tokens from different shifted regions
_trunc02 = nn.initializers.truncated_normal(stddev=0.02)


def layer_norm(name: str) -> nn.LayerNorm:
  """PyTorch's `nn.LayerNorm` (eps 1e-5), computed and returned in float32."""
  return nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


def stage_window(height: int, width: int, window: int) -> tuple[int, int]:
  """(window, shift of the shifted blocks) at a stage of `height x width` tokens: the
  release's clamp, one unshifted window of min(height, width) when that is <= `window`."""
  if min(height, width) <= window:
    return min(height, width), 0
  return window, window // 2


def relative_position_index(window: int) -> np.ndarray:
  """`[w^2, w^2]` int32: row of the bias table for query token i and key token j of a
  w x w window (row-major): (dh + w - 1) (2w - 1) + (dw + w - 1), d = coordinates of i - j."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
  coords = coords.reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :] + window - 1  # [2, w^2, w^2]
  return (rel[0] * (2 * window - 1) + rel[1]).astype(np.int32)


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
  """`[nW, w^2, w^2]` float32 attention mask of the shifted windows (windows row-major):
  0 for two tokens of the same region of the rolled map, -100 otherwise. Each axis has
  three regions, [0, -w), [-w, -shift), [-shift, end)."""
  def regions(n):
    r = np.zeros(n, np.int32)
    r[n - window:n - shift], r[n - shift:] = 1, 2
    return r
  label = regions(height)[:, None] * 3 + regions(width)[None, :]  # [H, W]
  label = label.reshape(height // window, window, width // window, window)
  label = label.transpose(0, 2, 1, 3).reshape(-1, window * window)  # [nW, w^2]
  same = label[:, :, None] == label[:, None, :]
  return np.where(same, 0.0, MASK_VALUE).astype(np.float32)


def window_partition(x, window: int):
  """`[B, H, W, C]` -> `[B, nW, w^2, C]`, windows and their tokens row-major."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, window * window, c)


def window_merge(windows, window: int, height: int, width: int):
  """Inverse of `window_partition`: `[B, nW, w^2, C]` -> `[B, H, W, C]`."""
  b, c = windows.shape[0], windows.shape[-1]
  x = windows.reshape(b, height // window, width // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


class SwinBlock(nn.Module):
  """Pre-norm Swin block on a token map `[B, H, W, C]` (float32 in and out):
  x + DropPath(W-MSA(norm1(x))) (SW-MSA if `shift`), then x + DropPath(MLP(norm2(x)))
  (with PSRP: x + DropPath(b + (1 + w) * MLP(norm2(x))), w and b from the post-attention x,
  the release's `tuning_mode == 'psrp'`). `window` and `shift` are already clamped."""
  num_heads: int
  window: int
  shift: int
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  psrp_rank: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    rng = lambda: self.make_rng("dropout") if train and self.drop_path > 0 else None
    b, h, w, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"width {c} is not divisible by {self.num_heads} heads")
    heads, head_dim, n = self.num_heads, c // self.num_heads, self.window ** 2
    dense = lambda features, name, bias=True: nn.Dense(
        features, use_bias=bias, kernel_init=_trunc02, dtype=self.dtype, name=name)

    y = layer_norm("norm1")(x)
    if self.shift:
      y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
    y = window_partition(y, self.window)  # [B, nW, N, C]
    # The release's qkv columns are ordered (q/k/v, head, channel).
    qkv = dense(3 * c, "attn_qkv")(y).reshape(b, -1, n, 3, heads, head_dim)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    q = q * jnp.asarray(head_dim ** -0.5, q.dtype)
    logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k).astype(jnp.float32)
    table = self.param("attn_relative_position_bias_table", _trunc02,
                       ((2 * self.window - 1) ** 2, heads), jnp.float32)
    bias = table[relative_position_index(self.window)]  # [N, N, heads]
    logits = logits + jnp.transpose(bias, (2, 0, 1))
    if self.shift:
      logits = logits + shifted_window_mask(h, w, self.window, self.shift)[None, :, None]
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    y = jnp.einsum("bwhqk,bwkhd->bwqhd", weights, v).reshape(b, -1, n, c)
    y = window_merge(dense(c, "attn_proj")(y), self.window, h, w).astype(jnp.float32)
    if self.shift:
      y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
    x = x + drop_path(y, self.drop_path, rng(), not train)

    y = dense(int(c * self.mlp_ratio), "mlp_fc1")(layer_norm("norm2")(x))
    y = dense(c, "mlp_fc2")(nn.gelu(y, approximate=False)).astype(jnp.float32)
    if self.psrp_rank:
      scale, shift = PSRP(self.psrp_rank, name="psrp")(x)
      y = shift + (1 + scale) * y
    return x + drop_path(y, self.drop_path, rng(), not train)


class SwinStage(nn.Module):
  """The release's `BasicLayer`: `len(drop_paths)` blocks (odd ones shifted), then, if
  `downsample`, patch merging `[B, H, W, C]` -> `[B, H/2, W/2, 2C]`."""
  num_heads: int
  window_size: int
  drop_paths: tuple[float, ...]
  downsample: bool
  mlp_ratio: float = 4.0
  psrp_rank: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    _, h, w, c = x.shape
    window, shift = stage_window(h, w, self.window_size)
    if h % window or w % window:
      raise ValueError(f"a {h} x {w} token map does not split into {window} x {window} "
                       "windows (the release does not pad): use 224 x k px images for "
                       "window 7")
    for j, rate in enumerate(self.drop_paths):
      x = SwinBlock(self.num_heads, window, shift if j % 2 else 0, mlp_ratio=self.mlp_ratio,
                    drop_path=rate, psrp_rank=self.psrp_rank, dtype=self.dtype,
                    name=f"blocks_{j}")(x, train)
    if not self.downsample:
      return x
    if h % 2 or w % 2:
      raise ValueError(f"cannot merge the patches of a {h} x {w} token map: not even "
                       "(the release's PatchMerging asserts the same)")
    # The release's order: (even row, even col), (odd, even), (even, odd), (odd, odd).
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                         x[:, 1::2, 1::2]], axis=-1)
    x = layer_norm("downsample_norm")(x)
    return nn.Dense(2 * c, use_bias=False, kernel_init=_trunc02, dtype=self.dtype,
                    name="downsample_reduction")(x).astype(jnp.float32)


class SwinTransformer(nn.Module):
  """Swin backbone ending in a token head (which holds the classifier).

  Input `[B, H, W, 3]` images (H, W multiples of 4 whose stages split into windows, see
  the module docstring: 224 x k px for Swin-B); output `[B, K]` float32 logits from `head`
  applied to `[cls, x[:, 1:]]`, cls = mean over tokens of norm(x), x the last stage's
  unnormalised tokens `[B, N, C]` (row-major).

  Attributes:
    head: a module from `gcp.heads.TOKEN_HEADS`; its class attribute `psrp` switches the
      PSRP adapters on in every block (MP+).
    embed_dim, depths, num_heads, window_size, mlp_ratio: the architecture (Swin-B's by
      default); stage i has embed_dim * 2^i channels.
    drop_path: stochastic depth of the last block; the release's linear rule over all
      blocks, block k of sum(depths) uses drop_path * k / (sum(depths) - 1). Randomness
      comes only from the 'dropout' rng.
    psrp_rank: hidden width of the PSRP adapters (16, the release's `PSRP(dim)`).
    dtype: matmul compute dtype (float32 / bfloat16 / float16).
  """
  head: nn.Module
  embed_dim: int = 128
  depths: tuple[int, ...] = (2, 2, 18, 2)
  num_heads: tuple[int, ...] = (4, 8, 16, 32)
  window_size: int = 7
  mlp_ratio: float = 4.0
  drop_path: float = 0.0
  psrp_rank: int = 16
  dtype: jnp.dtype = jnp.float32

  def features(self, x, train: bool = False):
    """Images -> the last stage's token map `[B, h, w, C]` (float32, before the final norm).
    Call from a compact method."""
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"Swin expects NHWC RGB images [B, H, W, 3], got shape {x.shape}")
    if x.shape[1] % 4 or x.shape[2] % 4:
      raise ValueError(f"image size {x.shape[1:3]} is not a multiple of the patch size 4")
    if len(self.depths) != len(self.num_heads):
      raise ValueError(f"{len(self.depths)} stage depths but {len(self.num_heads)} head "
                       "counts")
    init = torch_uniform(4 * 4 * 3)
    x = nn.Conv(self.embed_dim, (4, 4), strides=(4, 4), padding="VALID", dtype=self.dtype,
                kernel_init=init, bias_init=init, name="patch_embed_proj")(x.astype(self.dtype))
    x = layer_norm("patch_embed_norm")(x.astype(jnp.float32))
    total = sum(self.depths)
    rates = [self.drop_path * k / max(total - 1, 1) for k in range(total)]
    psrp = getattr(type(self.head), "psrp", False)
    for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
      start = sum(self.depths[:i])
      x = SwinStage(heads, self.window_size, tuple(rates[start:start + depth]),
                    downsample=i < len(self.depths) - 1, mlp_ratio=self.mlp_ratio,
                    psrp_rank=self.psrp_rank if psrp else 0, dtype=self.dtype,
                    name=f"layers_{i}")(x, train)
    return x

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.features(x, train)
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c)
    cls = jnp.mean(layer_norm("norm")(x), axis=1)
    # The release's MP head reads x[:, 1:] (see the module docstring): token 0 makes way
    # for the class token.
    return self.head(jnp.concatenate([cls[:, None], x[:, 1:]], axis=1), train=train)
