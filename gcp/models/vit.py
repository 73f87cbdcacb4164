"""Vision transformers (ViT-S/16, ViT-B/16, DeiT-T/16, DeiT-S/16) in Flax linen, NHWC.

The parameter tree is the one of the original ViT / AugReg `.npz` files (google-research
vision_transformer, loaded by big_vision's `vit.load`), so an AugReg file loads by joining
our parameter names with "/":

  embedding/{kernel,bias}                      patch embedding, conv p x p stride p
  cls                                          [1, 1, D] class token
  Transformer/posembed_input/pos_embedding     [1, 1 + N, D] (class token's entry first)
  Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_1/{query,key,
      value,out}, LayerNorm_2, MlpBlock_3/{Dense_0,Dense_1}
  Transformer/encoder_norm
  head/...                                     the token head (`gcp.heads.TOKEN_HEADS`)

The class token is prepended before the position embedding is added (the AugReg layout,
not big_vision's later "posemb before cls" one). Token heads take the normalised tokens
`[B, 1 + N, D]` and return logits: the classifier is part of the head (see `gcp.heads`).
MP+'s PSRP adapters (`Transformer/encoderblock_{i}/psrp/{down,scale,shift}`) are switched
on by the head (`type(head).psrp`), as a ResNet's last stride is by its head.

Numerics: LayerNorm eps 1e-6 (big_vision and timm); GELU exact (erf) by default as timm,
the PyTorch library Moment Probing and DeiT run in (`approximate_gelu=True` is the tanh
form big_vision trained the AugReg weights with). With `dtype` bfloat16 the matmuls run in
bfloat16 while the residual stream, LayerNorms, softmax and the head stay float32.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# arch -> (patch, width, depth, heads, mlp_dim). DeiT-S has ViT-S's shape.
VIT_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "vit_s16": (16, 384, 12, 6, 1536),
    "vit_b16": (16, 768, 12, 12, 3072),
    "deit_t16": (16, 192, 12, 3, 768),
    "deit_s16": (16, 384, 12, 6, 1536),
    "vit_test": (8, 32, 2, 2, 64),  # a tiny ViT for tests: 32 px images -> 4 x 4 patches
}
LN_EPS = 1e-6
_xavier = nn.initializers.xavier_uniform()


def layer_norm(name: str, epsilon: float = LN_EPS) -> nn.LayerNorm:
  """LayerNorm computed and returned in float32."""
  return nn.LayerNorm(epsilon=epsilon, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


def drop_path(x, rate: float, rng, deterministic: bool):
  """Stochastic depth: zeroes whole samples of a residual branch with probability `rate`
  and scales the survivors by 1 / (1 - rate)."""
  if deterministic or rate == 0.0:
    return x
  keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def resample_posemb(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
  """`[1, 1 + n^2, D]` -> `[1, num_tokens, D]`: the class token's entry kept, the n x n
  grid resized bilinearly to m x m (m^2 = num_tokens - 1) with the corners aligned, as
  big_vision's `resample_posemb` (scipy.ndimage.zoom, order 1) does."""
  posemb = np.asarray(posemb)
  if posemb.shape[1] == num_tokens:
    return posemb
  old, new = int(round(np.sqrt(posemb.shape[1] - 1))), int(round(np.sqrt(num_tokens - 1)))
  if old * old + 1 != posemb.shape[1] or new * new + 1 != num_tokens:
    raise ValueError(f"cannot resample a position embedding of {posemb.shape[1]} tokens to "
                     f"{num_tokens}: both must be 1 + a square grid")
  grid = posemb[0, 1:].reshape(old, old, -1).astype(np.float64)

  def axis_weights(n_in, n_out):  # output index -> (lower index, upper index, upper weight)
    pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo)[:, None]

  lo, hi, w = axis_weights(old, new)
  grid = grid[lo] * (1 - w[:, :, None]) + grid[hi] * w[:, :, None]
  grid = grid[:, lo] * (1 - w[None]) + grid[:, hi] * w[None]
  out = np.concatenate([posemb[0, :1], grid.reshape(new * new, -1).astype(posemb.dtype)])
  return out[None]


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> GELU -> Dense(D); big_vision's initialisation."""
  mlp_dim: int
  dtype: jnp.dtype = jnp.float32
  approximate_gelu: bool = False

  @nn.compact
  def __call__(self, x):
    inits = dict(kernel_init=_xavier, bias_init=nn.initializers.normal(stddev=1e-6),
                 dtype=self.dtype)
    d = x.shape[-1]
    y = nn.Dense(self.mlp_dim, name="Dense_0", **inits)(x)
    y = nn.gelu(y, approximate=self.approximate_gelu)
    return nn.Dense(d, name="Dense_1", **inits)(y)


class Attention(nn.Module):
  """Multi-head self-attention with Flax `MultiHeadDotProductAttention`'s parameters
  (query / key / value `[D, H, D/H]`, out `[H, D/H, D]`); softmax in float32."""
  num_heads: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by {self.num_heads} heads")
    head_dim = d // self.num_heads
    proj = lambda name: nn.DenseGeneral((self.num_heads, head_dim), kernel_init=_xavier,
                                        dtype=self.dtype, name=name)(x)
    q, k, v = proj("query"), proj("key"), proj("value")
    q = q / jnp.sqrt(head_dim).astype(q.dtype)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    y = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    return nn.DenseGeneral(d, axis=(-2, -1), kernel_init=_xavier, dtype=self.dtype,
                           name="out")(y)


class PSRP(nn.Module):
  """MP+'s parameter-efficient scale / shift of a block's MLP output (SPEC §4):
  h = ReLU(down(x)), w = scale(h), b = shift(h); the block uses b + (1 + w) * MLP(...).

  `scale` and `shift` start at zero so that the frozen network is unchanged at the start
  of training (our choice; SPEC §4 does not state the release's initialisation).
  """
  rank: int = 16

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    x = x.astype(jnp.float32)
    h = nn.relu(nn.Dense(self.rank, use_bias=False, kernel_init=_xavier, name="down")(x))
    zeros = nn.initializers.zeros
    w = nn.Dense(d, use_bias=False, kernel_init=zeros, name="scale")(h)
    b = nn.Dense(d, use_bias=False, kernel_init=zeros, name="shift")(h)
    return w, b


class Encoder1DBlock(nn.Module):
  """Pre-norm block: x + DropPath(MHSA(LN(x))), then x + DropPath(MLP(LN(x))) (with PSRP:
  x + DropPath(b + (1 + w) * MLP(LN(x))), w and b from the post-attention x)."""
  num_heads: int
  mlp_dim: int
  drop_path: float = 0.0
  psrp_rank: int = 0
  dtype: jnp.dtype = jnp.float32
  approximate_gelu: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    rng = lambda: self.make_rng("dropout") if train and self.drop_path > 0 else None
    y = layer_norm("LayerNorm_0")(x)
    y = Attention(self.num_heads, dtype=self.dtype, name="MultiHeadDotProductAttention_1")(y)
    x = x + drop_path(y.astype(jnp.float32), self.drop_path, rng(), not train)
    y = layer_norm("LayerNorm_2")(x)
    y = MlpBlock(self.mlp_dim, dtype=self.dtype, approximate_gelu=self.approximate_gelu,
                 name="MlpBlock_3")(y).astype(jnp.float32)
    if self.psrp_rank:
      w, b = PSRP(self.psrp_rank, name="psrp")(x)
      y = b + (1 + w) * y
    return x + drop_path(y, self.drop_path, rng(), not train)


class ViT(nn.Module):
  """ViT backbone ending in a token head (which holds the classifier).

  Input `[B, H, W, 3]` images, H and W multiples of `patch_size`; output `[B, K]` float32
  logits from `head`. The position embedding is created for the grid of the images the
  model is initialised with; for another resolution resample it
  (`gcp.convert.vit.resample_variables`, or at load time).

  Attributes:
    head: a module from `gcp.heads.TOKEN_HEADS`; its class attribute `psrp` switches the
      PSRP adapters on in every block (MP+).
    patch_size, width, depth, num_heads, mlp_dim: the architecture (`VIT_SIZES`).
    drop_path: stochastic depth of the last block; block i uses drop_path * i / (depth - 1)
      (timm's linear rule). Randomness comes only from the 'dropout' rng.
    psrp_rank: hidden width of the PSRP adapters (16 in MP+).
    dtype: matmul compute dtype (float32 / bfloat16 / float16).
    approximate_gelu: tanh GELU (big_vision) instead of the exact one (timm).
  """
  head: nn.Module
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  drop_path: float = 0.0
  psrp_rank: int = 16
  dtype: jnp.dtype = jnp.float32
  approximate_gelu: bool = False

  def tokens(self, x, train: bool = False):
    """Images -> normalised tokens `[B, 1 + N, D]` (float32). Call from a compact method."""
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"ViT expects NHWC RGB images [B, H, W, 3], got shape {x.shape}")
    p = self.patch_size
    if x.shape[1] % p or x.shape[2] % p:
      raise ValueError(f"image size {x.shape[1:3]} is not a multiple of the patch size {p}")
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                name="embedding")(x.astype(self.dtype))
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c).astype(jnp.float32)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
    x = jnp.concatenate([jnp.tile(cls, (b, 1, 1)), x], axis=1)
    psrp = getattr(type(self.head), "psrp", False)
    return Encoder(depth=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                   drop_path=self.drop_path, psrp_rank=self.psrp_rank if psrp else 0,
                   dtype=self.dtype, approximate_gelu=self.approximate_gelu,
                   name="Transformer")(x, train)

  @nn.compact
  def __call__(self, x, train: bool = False):
    return self.head(self.tokens(x, train), train=train)


class PosEmbed(nn.Module):
  """Adds the learned position embedding `[1, 1 + N, D]` (class token's entry first)."""

  @nn.compact
  def __call__(self, x):
    if self.has_variable("params", "pos_embedding"):
      stored = self.get_variable("params", "pos_embedding").shape[1]
      if stored != x.shape[1]:
        raise ValueError(f"{x.shape[1]} tokens but a position embedding for {stored}: "
                         "resample it for this resolution (gcp.convert.vit."
                         "resample_variables)")
    return x + self.param("pos_embedding", nn.initializers.normal(stddev=0.02),
                          (1,) + x.shape[1:])


class Encoder(nn.Module):
  """Position embedding, the blocks and the final LayerNorm (big_vision's `Transformer`)."""
  depth: int
  num_heads: int
  mlp_dim: int
  drop_path: float = 0.0
  psrp_rank: int = 0
  dtype: jnp.dtype = jnp.float32
  approximate_gelu: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = PosEmbed(name="posembed_input")(x)
    for i in range(self.depth):
      rate = self.drop_path * i / max(self.depth - 1, 1)
      x = Encoder1DBlock(self.num_heads, self.mlp_dim, drop_path=rate,
                         psrp_rank=self.psrp_rank, dtype=self.dtype,
                         approximate_gelu=self.approximate_gelu,
                         name=f"encoderblock_{i}")(x, train)
    return layer_norm("encoder_norm")(x)
