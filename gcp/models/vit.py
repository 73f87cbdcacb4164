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

With `stem="conv"` (the DropCov release's DeiT-S, SPEC §4) `embedding` is replaced by
`conv_stem/...` (`ConvTokenStem`, with BatchNorm statistics in `batch_stats`), the position
embedding is the fixed sinusoidal table (`sinusoid_posemb`, not a parameter), and the blocks
follow that release too: query / key / value without bias and LayerNorm eps 1e-5
(PyTorch's default), see `STEMS`.

The class token is prepended before the position embedding is added (the AugReg layout,
not big_vision's later "posemb before cls" one). Token heads take the normalised tokens
`[B, 1 + N, D]` and return logits: the classifier is part of the head (see `gcp.heads`).
MP+'s PSRP adapters (`Transformer/encoderblock_{i}/psrp/{down,scale,shift}`) are switched
on by the head (`type(head).psrp`), as a ResNet's last stride is by its head.

Numerics: LayerNorm eps 1e-6 (big_vision and timm; 1e-5 with the conv stem); GELU exact
(erf) by default as timm, the PyTorch library Moment Probing and DeiT run in
(`approximate_gelu=True` is the tanh form big_vision trained the AugReg weights with).
With `dtype` bfloat16 the matmuls run in bfloat16 while the residual stream, LayerNorms,
softmax and the head stay float32.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gcp.layers import batch_norm, max_pool_3x3_s2, pool, torch_uniform

# arch -> (patch, width, depth, heads, mlp_dim). DeiT-S has ViT-S's shape, DeiT-B ViT-B's.
# The DropCov release trains its DeiTs with the conv token stem (`stem='conv'`, which has no
# patch size): deit_s16 (Deit_drop_Small), deit_b16 (Deit_drop_Base), and two shapes of its
# own: Deit_drop_Tiny (240 wide, 4 heads, MLP 2.5x, not DeiT-T's 192) and T2T_ViT_14 (T2T-ViT-
# 14's 384 x 14 blocks, MLP 3x, on the same conv stem: not T2T-ViT's tokens-to-token module).
VIT_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "vit_s16": (16, 384, 12, 6, 1536),
    "vit_b16": (16, 768, 12, 12, 3072),
    "deit_t16": (16, 192, 12, 3, 768),
    "deit_s16": (16, 384, 12, 6, 1536),
    "deit_b16": (16, 768, 12, 12, 3072),
    "dropcov_deit_t": (16, 240, 12, 4, 600),
    "dropcov_t2t_vit_14": (16, 384, 14, 6, 1152),
    "vit_test": (8, 32, 2, 2, 64),  # a tiny ViT for tests: 32 px images -> 4 x 4 patches
}
LN_EPS = 1e-6
# stem -> the block conventions of the release it comes from: (qkv bias, LayerNorm eps).
# 'patch': ViT / DeiT / AugReg (timm, big_vision); 'conv': the DropCov release's DeiT
# (`ViTBlock(qkv_bias=False)`, `nn.LayerNorm` with PyTorch's eps).
STEMS: dict[str, tuple[bool, float]] = {"patch": (True, LN_EPS), "conv": (False, 1e-5)}
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


def sinusoid_posemb(num_tokens: int, width: int) -> np.ndarray:
  """The fixed position embedding `[1, num_tokens, width]` float32 of the DropCov / SoT
  releases (`get_sinusoid_encoding`): angle(p, j) = p / 10000^(2 floor(j / 2) / width),
  sin at even j, cos at odd j; token 0 is the class token. Computed in float64."""
  pos = np.arange(num_tokens, dtype=np.float64)[:, None]
  j = np.arange(width)
  angle = pos / np.power(10000.0, 2 * (j // 2) / width)
  table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
  return table[None].astype(np.float32)


def _torch_conv(features: int, kernel: int, fan_in: int, dtype, name: str,
                bias: bool = False) -> nn.Conv:
  """A stride-1 conv padded as PyTorch's `padding=kernel // 2`, with PyTorch's default
  initialisation (the release re-initialises only Linear and LayerNorm layers)."""
  init = torch_uniform(fan_in)
  return nn.Conv(features, (kernel, kernel), padding=((kernel // 2, kernel // 2),) * 2,
                 use_bias=bias, dtype=dtype, kernel_init=init, bias_init=init, name=name)


class DenseLayer(nn.Module):
  """The release's DenseNet-BC layer: ReLU -> conv 1x1 (bn_size * growth) -> ReLU ->
  conv 3x3 (growth), convs without bias; returns the new features.

  No BatchNorm: the release builds it with timm 0.4.12's `DenseBlock`, whose default
  `norm_layer` is `nn.ReLU`, so both of DenseNet's "norm + ReLU" slots are a ReLU.
  """
  growth: int
  bn_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    hidden = self.bn_size * self.growth
    y = _torch_conv(hidden, 1, x.shape[-1], self.dtype, "conv1")(nn.relu(x))
    return _torch_conv(self.growth, 3, 9 * hidden, self.dtype, "conv2")(nn.relu(y))


class DenseBlock(nn.Module):
  """`layers` `DenseLayer`s (`denselayer1`, ... as timm's), each fed the concatenation of
  the input and all earlier layers' outputs: C -> C + layers * growth channels (input
  first, as timm's)."""
  layers: int
  growth: int
  bn_size: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    for j in range(1, self.layers + 1):
      y = DenseLayer(self.growth, self.bn_size, dtype=self.dtype, name=f"denselayer{j}")(x)
      x = jnp.concatenate([x, y], axis=-1)
    return x


class Transition(nn.Module):
  """BN -> conv 1x1 (no bias) -> avg-pool 2x2 / 2. No ReLU, and a real BatchNorm: the
  release's own `DenseTransition` (its default `norm_layer` is `nn.BatchNorm2d`)."""
  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = batch_norm(train, name="norm", dtype=self.dtype)(x)
    x = _torch_conv(self.features, 1, x.shape[-1], self.dtype, "conv")(x)
    return pool(x, 2, 2, "avg")


class ConvTokenStem(nn.Module):
  """The DropCov release's convolutional token stem for DeiT (SPEC §4; SoT's
  `DenseNetStyleModule` with token_dim 64, large_output False, which the release's
  `TokenEmbed` config selects): images `[B, H, W, 3]` -> token map `[B, H/16, W/16, width]`.

    conv 3x3 / 1 pad 1 (3 -> 64, bias) -> max-pool 3x3 / 2 pad 1   (no BN or ReLU here)
    3 x [`DenseBlock` (6 layers, growth 16, bn_size 2: 64 or 128 -> +96 channels)
         -> `Transition` (-> 128 channels, /2)]
    conv 1x1 (128 -> width, bias)
  224 px: 224 -> 112 -> 56 -> 28 -> 14, i.e. 196 tokens, ordered row-major (h, w) as the
  release's NCHW flatten. Not reproduced: the release drops the last avg-pool when built
  for 112 px images (to keep 14 x 14 tokens); here the stem always downsamples by 16.
  BatchNorm (transitions only): PyTorch's eps 1e-5 and momentum 0.1.

  Parameter names follow the release's module tree (`visual_tokens.tokens.*`): `conv`
  (stem.0), `stage_{k}` (stage.k: dense blocks at k = 0, 2, 4 with
  `denselayer{j}/{conv1,conv2}`, transitions at k = 1, 3, 5 with `norm`, `conv`) and `proj`
  (transition).
  """
  width: int
  token_dim: int = 64
  growth: int = 16
  layers: int = 6
  bn_size: int = 2
  transition_dim: int = 128
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = _torch_conv(self.token_dim, 3, 9 * x.shape[-1], self.dtype, "conv", bias=True)(x)
    x = max_pool_3x3_s2(x)
    for i in range(3):
      x = DenseBlock(self.layers, self.growth, self.bn_size, dtype=self.dtype,
                     name=f"stage_{2 * i}")(x)
      x = Transition(self.transition_dim, dtype=self.dtype, name=f"stage_{2 * i + 1}")(x, train)
    return _torch_conv(self.width, 1, self.transition_dim, self.dtype, "proj", bias=True)(x)


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
  (query / key / value `[D, H, D/H]` with biases `[H, D/H]` if `qkv_bias`, out
  `[H, D/H, D]` and its bias); softmax in float32."""
  num_heads: int
  qkv_bias: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"width {d} is not divisible by {self.num_heads} heads")
    head_dim = d // self.num_heads
    proj = lambda name: nn.DenseGeneral((self.num_heads, head_dim), use_bias=self.qkv_bias,
                                        kernel_init=_xavier, dtype=self.dtype, name=name)(x)
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
  of training (our choice; the release initialises all three like every Linear of its
  ViT, truncated normal 0.02). The release's names: down, up_weight, up_bias.
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
  qkv_bias: bool = True
  ln_eps: float = LN_EPS
  dtype: jnp.dtype = jnp.float32
  approximate_gelu: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    rng = lambda: self.make_rng("dropout") if train and self.drop_path > 0 else None
    y = layer_norm("LayerNorm_0", self.ln_eps)(x)
    y = Attention(self.num_heads, self.qkv_bias, dtype=self.dtype,
                  name="MultiHeadDotProductAttention_1")(y)
    x = x + drop_path(y.astype(jnp.float32), self.drop_path, rng(), not train)
    y = layer_norm("LayerNorm_2", self.ln_eps)(x)
    y = MlpBlock(self.mlp_dim, dtype=self.dtype, approximate_gelu=self.approximate_gelu,
                 name="MlpBlock_3")(y).astype(jnp.float32)
    if self.psrp_rank:
      w, b = PSRP(self.psrp_rank, name="psrp")(x)
      y = b + (1 + w) * y
    return x + drop_path(y, self.drop_path, rng(), not train)


class ViT(nn.Module):
  """ViT backbone ending in a token head (which holds the classifier).

  Input `[B, H, W, 3]` images, H and W multiples of `patch_size` (of 16 for the conv
  stem); output `[B, K]` float32 logits from `head`. The learned position embedding is
  created for the grid of the images the model is initialised with; for another
  resolution resample it (`gcp.convert.vit.resample_variables`, or at load time).

  Attributes:
    head: a module from `gcp.heads.TOKEN_HEADS`; its class attribute `psrp` switches the
      PSRP adapters on in every block (MP+).
    patch_size, width, depth, num_heads, mlp_dim: the architecture (`VIT_SIZES`).
    stem: 'patch' (a p x p / p conv `embedding` and a learned position embedding, ViT /
      DeiT / AugReg) or 'conv' (`ConvTokenStem` and the fixed `sinusoid_posemb`, the
      DropCov release's DeiT-S; `patch_size` is then unused). The stem also sets the
      blocks' qkv bias and LayerNorm eps to its release's (`STEMS`).
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
  stem: str = "patch"
  drop_path: float = 0.0
  psrp_rank: int = 16
  dtype: jnp.dtype = jnp.float32
  approximate_gelu: bool = False

  def tokens(self, x, train: bool = False):
    """Images -> normalised tokens `[B, 1 + N, D]` (float32). Call from a compact method."""
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"ViT expects NHWC RGB images [B, H, W, 3], got shape {x.shape}")
    if self.stem not in STEMS:
      raise ValueError(f"unknown stem {self.stem!r}; valid stems: {', '.join(STEMS)}")
    p = self.patch_size if self.stem == "patch" else 16
    if x.shape[1] % p or x.shape[2] % p:
      what = f"the patch size {p}" if self.stem == "patch" else "16, the conv stem's stride"
      raise ValueError(f"image size {x.shape[1:3]} is not a multiple of {what}")
    x = x.astype(self.dtype)
    if self.stem == "patch":
      x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                  name="embedding")(x)
    else:
      x = ConvTokenStem(self.width, dtype=self.dtype, name="conv_stem")(x, train)
    b, h, w, c = x.shape
    x = x.reshape(b, h * w, c).astype(jnp.float32)
    cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
    x = jnp.concatenate([jnp.tile(cls, (b, 1, 1)), x], axis=1)
    psrp = getattr(type(self.head), "psrp", False)
    qkv_bias, ln_eps = STEMS[self.stem]
    return Encoder(depth=self.depth, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                   drop_path=self.drop_path, psrp_rank=self.psrp_rank if psrp else 0,
                   qkv_bias=qkv_bias, ln_eps=ln_eps,
                   posemb="learned" if self.stem == "patch" else "sinusoidal",
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
  """Position embedding, the blocks and the final LayerNorm (big_vision's `Transformer`).

  `posemb`: 'learned' (`PosEmbed`) or 'sinusoidal' (`sinusoid_posemb`, no parameter);
  `qkv_bias` and `ln_eps` apply to every block and the final LayerNorm.
  """
  depth: int
  num_heads: int
  mlp_dim: int
  drop_path: float = 0.0
  psrp_rank: int = 0
  qkv_bias: bool = True
  ln_eps: float = LN_EPS
  posemb: str = "learned"
  dtype: jnp.dtype = jnp.float32
  approximate_gelu: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.posemb == "learned":
      x = PosEmbed(name="posembed_input")(x)
    elif self.posemb == "sinusoidal":
      x = x + sinusoid_posemb(x.shape[1], x.shape[2])
    else:
      raise ValueError(f"unknown posemb {self.posemb!r}; valid: learned, sinusoidal")
    for i in range(self.depth):
      rate = self.drop_path * i / max(self.depth - 1, 1)
      x = Encoder1DBlock(self.num_heads, self.mlp_dim, drop_path=rate,
                         psrp_rank=self.psrp_rank, qkv_bias=self.qkv_bias,
                         ln_eps=self.ln_eps, dtype=self.dtype,
                         approximate_gelu=self.approximate_gelu,
                         name=f"encoderblock_{i}")(x, train)
    return layer_norm("encoder_norm", self.ln_eps)(x)
