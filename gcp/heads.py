"""Pooling heads: a feature map `[B, H, W, C]` in, a representation vector `[B, D]` out.

Each head is a Flax module registered in `HEADS` under the name configs use; a new head is
one module plus one registry line. Second-order heads share an optional reduction block
(1x1 conv, BN, ReLU to `reduction_dim`; None or 0: off, computed in the head's `dtype`)
and pool in at least float32 (`ops.upcast`). The class attribute `last_stage_stride` tells
a ResNet whether to keep the last stage's downsampling (GAP) or drop it (second-order heads
want 14x14 at 224 px, SPEC §2).

Token heads (`TOKEN_HEADS`, for `gcp.models.vit`) are a separate registry because their
contract differs: they take a ViT's normalised tokens `[B, 1 + N, D]` (class token first)
and return float32 logits `[B, num_classes]`, i.e. the classifier is part of the head.
Moment Probing's classifier is two dense layers averaged (class token and second-order
branch; the 4,047,146 parameters of SPEC §4 count both biases), which no single `fc` after
the head can express, and with the classifier inside, "train the head" is one subtree
(`params/head/`) for linear probing, MP and MP+ alike. The `linear` head's parameters are
`head/{kernel,bias}`, big_vision's classifier names, so a fine-tuned AugReg file loads
whole. The class attribute `psrp` tells the ViT to add the PSRP adapters to its blocks
(MP+), as `last_stage_stride` tells a ResNet its last stride. `dropcov` names a CNN head
in `HEADS` and DropCov's transformer head in `TOKEN_HEADS`; the backbone picks the registry.
Swin (`gcp.models.swin`) takes the token heads too, with its pooled tokens in the class
token's place. Feature-map heads (`MAP_HEADS`, for `gcp.models.convnext`) have the token
heads' contract on a final map `[B, H, W, C]`: ConvNeXt has no class token, and its final
LayerNorm belongs to its head.

float64 (with `jax_enable_x64`) is honoured: a float64 input is computed in float64
throughout, sublayers included (`ops.compute_dtype`), and gives float64 outputs (for float64
gradient checks); parameters keep their param dtype (float32).
"""
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from gcp import ops
from gcp.layers import ReductionBlock, torch_uniform
from gcp.ops import dropcov


class GAPHead(nn.Module):
  """Global average pooling, the first-order baseline: `[B, H, W, C]` -> `[B, C]`.

  No reduction block: the published baselines pool the backbone's features directly.
  """
  last_stage_stride: ClassVar[int] = 2

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    return jnp.mean(ops.upcast(x), axis=(1, 2))


class _SecondOrderHead(nn.Module):
  """Shared part: the optional reduction block, then features as `[B, M, d]`.

  The reduction block follows its backbone's conventions: BatchNorm eps (`bn_eps`), ReLU6
  for MobileNetV2 and ShuffleNetV2 (`reduction_relu6`), and the initialisation scheme
  (`init_scheme`).
  """
  reduction_dim: int | None = None
  dtype: jnp.dtype = jnp.float32
  bn_eps: float = 1e-5
  reduction_relu6: bool = False
  init_scheme: str = "mindspore"
  last_stage_stride: ClassVar[int] = 1

  def features(self, x, train: bool):
    """`[B, H, W, C]` -> `[B, H*W, d]`, d = reduction_dim (C when off). Call from a
    compact method."""
    if self.reduction_dim:
      dtype = ops.compute_dtype(x.dtype, self.dtype)  # float64 input: float64 sublayers
      x = ReductionBlock(self.reduction_dim, dtype=dtype, bn_eps=self.bn_eps,
                         relu6=self.reduction_relu6, init_scheme=self.init_scheme,
                         name="reduce")(x, train)
    b, h, w, c = x.shape
    return x.reshape(b, h * w, c)


class CovHead(_SecondOrderHead):
  """Plain covariance pooling: `[B, H, W, C]` -> `[B, d (d + 1) / 2]`."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return ops.triu_vec(ops.covariance(self.features(x, train)))


class ISQRTHead(_SecondOrderHead):
  """iSQRT-COV / Fast-MPN: covariance -> iSQRT(num_iters) -> triu, `[B, d (d + 1) / 2]`.

  `isqrt_method` picks how the same function is evaluated (`gcp.ops.isqrt_cov`): 'auto'
  (on CPU 'gram' when H*W < d, else 'eigh'; Newton-Schulz matmuls on accelerators),
  'newton_schulz', 'eigh' or 'gram'.
  """
  num_iters: int = 5
  isqrt_method: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    return ops.triu_vec(ops.isqrt_cov(self.features(x, train), self.num_iters,
                                      method=self.isqrt_method))


class EigHead(_SecondOrderHead):
  """MPN-COV: covariance -> eigendecomposition power `alpha` -> triu, `[B, d (d + 1) / 2]`."""
  alpha: float = 0.5

  @nn.compact
  def __call__(self, x, train: bool = False):
    return ops.triu_vec(ops.eig_power(ops.covariance(self.features(x, train)), self.alpha))


class BCNNHead(_SecondOrderHead):
  """Bilinear pooling (no centring, signed sqrt, L2): `[B, H, W, C]` -> `[B, d * d]`."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return ops.bilinear_pool(self.features(x, train))


class CBPHead(_SecondOrderHead):
  """Compact bilinear pooling (Tensor Sketch): `[B, H, W, C]` -> `[B, sketch_dim]`.

  The hashes and signs are drawn once at `init` from the `params` rng and stored in the
  non-trainable `constants` collection, so a saved model reproduces its features.
  """
  sketch_dim: int = 8192

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.features(x, train)
    sketch = self.variable("constants", "sketch", lambda: dict(zip(
        ("hashes", "signs"),
        ops.sketch_params(self.make_rng("params"), x.shape[-1], self.sketch_dim))))
    return ops.compact_bilinear_pool(x, sketch.value["hashes"], sketch.value["signs"],
                                     self.sketch_dim)


def _eca_init(key, shape, dtype=jnp.float32):
  """PyTorch's Conv1d default, as the release: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in 3."""
  bound = 1 / 3 ** 0.5
  return jax.random.uniform(key, shape, dtype, -bound, bound)


class DropCovHead(_SecondOrderHead):
  """DropCov: in training ECA + adaptive channel dropout before covariance; at evaluation
  covariance -> triu only. `[B, H, W, C]` -> `[B, d (d + 1) / 2]`.

  Training draws from the `dropout` rng and records the drop rate in the `intermediates`
  collection as `drop_rate`. The ECA conv adds 3 parameters.
  """

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.features(x, train)
    kernel = self.param("eca", _eca_init, (3,))
    if not train:
      return ops.triu_vec(ops.covariance(x))
    cov, rate = dropcov.dropcov_train(x, kernel, self.make_rng("dropout"))
    self.sow("intermediates", "drop_rate", rate)
    return ops.triu_vec(cov)


HEADS: dict[str, type[nn.Module]] = {
    "gap": GAPHead,
    "cov": CovHead,
    "isqrt": ISQRTHead,
    "eig": EigHead,
    "bcnn": BCNNHead,
    "cbp": CBPHead,
    "dropcov": DropCovHead,
}


# --- Token heads: ViT tokens `[B, 1 + N, D]` -> logits `[B, num_classes]` ---------------

_trunc02 = nn.initializers.truncated_normal(stddev=0.02)


class LinearTokenHead(nn.Module):
  """Linear probe: logits = cls @ kernel + bias, big_vision's `head` (zero-initialised)."""
  num_classes: int
  psrp: ClassVar[bool] = False

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    del train
    cls = ops.upcast(tokens[:, 0])
    # float32 parameters even under jax_enable_x64 (zeros' default dtype is then float64).
    kernel = self.param("kernel", nn.initializers.zeros, (cls.shape[-1], self.num_classes),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.num_classes,), jnp.float32)
    return cls @ kernel + bias


_MEAN_AXES = {"scalar": (1, 3), "channel": (1,)}


def _remove_mean(groups, mean_removal: str):
  """`[B, N, G, c]` -> at least float32, centred per sample and group: 'scalar' (the MP and
  DropCov releases: one mean over all N x c entries) or 'channel' (a mean per channel over
  the N tokens, a true covariance)."""
  if mean_removal not in _MEAN_AXES:
    raise ValueError(f"unknown mean_removal {mean_removal!r}; valid: scalar, channel")
  x = ops.upcast(groups)
  return x - jnp.mean(x, axis=_MEAN_AXES[mean_removal], keepdims=True)


def mp_cross_covariance(groups, mean_removal: str = "scalar"):
  """Moment Probing's second-order map (SPEC §4), in at least float32.

  Args:
    groups: `[B, N, G, c]` tokens split into G channel groups (after the shared LayerNorm).
    mean_removal: 'scalar' (the release) or 'channel' (see `_remove_mean`).

  Returns:
    `[B, c, c, G - 1]`: C_i = h_i^T h_{i+1} / N for adjacent groups, each column
    (fixed second index) L2-normalised (eps 1e-12, as torch.nn.functional.normalize).
  """
  x = _remove_mean(groups, mean_removal)
  cov = jnp.einsum("bnga,bngc->bacg", x[:, :, :-1], x[:, :, 1:],
                   precision=jax.lax.Precision.HIGHEST) / x.shape[1]
  norm = jnp.sqrt(jnp.sum(cov * cov, axis=1, keepdims=True))
  return cov / jnp.maximum(norm, 1e-12)


def mp_downsample(cov, kernel_init=nn.linear.default_kernel_init):
  """Moment Probing's reduction of its cross-covariances `[B, c, c, G - 1]`: conv 3x3/2
  VALID -> GELU -> conv 3x3/2 VALID (G - 1 channels, no bias; modules `conv_0`, `conv_1` of
  the calling head) -> `[B, flat]` flattened channel-major (the release's NCHW order, so its
  `[K, 2883]` classifier weight is our kernel transposed)."""
  groups = cov.shape[-1]
  conv = lambda name: nn.Conv(groups, (3, 3), strides=(2, 2), padding="VALID",
                              use_bias=False, kernel_init=kernel_init, name=name)
  y = conv("conv_1")(nn.gelu(conv("conv_0")(cov), approximate=False))
  return jnp.transpose(y, (0, 3, 1, 2)).reshape(cov.shape[0], -1)


class _MomentProbingHead(nn.Module):
  """The fields of the Moment Probing heads: classes, the projection's width and its
  channel groups, the mean removal (`mp_cross_covariance`); `psrp` switches MP+'s adapters
  on in the backbone."""
  num_classes: int
  proj_dim: int = 512
  num_groups: int = 4
  mean_removal: str = "scalar"
  psrp: ClassVar[bool] = False

  def check_groups(self) -> None:
    if self.proj_dim % self.num_groups:
      raise ValueError(f"proj_dim {self.proj_dim} is not divisible into {self.num_groups} "
                       "groups")


class MPHead(_MomentProbingHead):
  """Moment Probing (ICCV 2023, SPEC §4): first-order class token + second-order patch
  tokens, logits = (Dense(cls) + Dense(flat)) / 2; at least float32 throughout.

  P = Dense(D -> proj_dim)(patch tokens), split into `num_groups` groups sharing one
  LayerNorm, mean removal (`mean_removal`, see `mp_cross_covariance`), cross-covariance
  of adjacent groups -> conv 3x3/2 VALID -> GELU -> conv 3x3/2 VALID (3 -> 3 channels, no
  bias) -> flattened channel-major (the release's NCHW order, so its `[K, 2883]` weight
  is our kernel transposed). Parameter names: proj, norm, conv_0, conv_1, fc_cls, fc_cov.
  """

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    del train
    # At least float32; the sublayers (dtype None) follow a float64 input.
    tokens = ops.upcast(tokens)
    cls, patches = tokens[:, 0], tokens[:, 1:]
    self.check_groups()
    p = nn.Dense(self.proj_dim, kernel_init=_trunc02, name="proj")(patches)
    b, n, _ = p.shape
    p = p.reshape(b, n, self.num_groups, self.proj_dim // self.num_groups)
    p = nn.LayerNorm(epsilon=1e-5, name="norm")(p)
    flat = mp_downsample(mp_cross_covariance(p, self.mean_removal))
    dense = lambda name: nn.Dense(self.num_classes, kernel_init=_trunc02, name=name)
    return (dense("fc_cls")(cls) + dense("fc_cov")(flat)) / 2


class MPPlusHead(MPHead):
  """MP+: the MP head, and PSRP adapters inside every ViT block (`psrp`)."""
  psrp: ClassVar[bool] = True


def head_cross_covariance(q, k, mean_removal: str = "scalar"):
  """DropCov's multi-head cross-covariance of token projections (SPEC §4), in at least
  float32.

  Args:
    q, k: `[B, N, G, c]`, G heads of c channels.
    mean_removal: 'scalar' (the release: one mean per sample and head over all N x c
      entries, for q and k separately) or 'channel' (see `_remove_mean`).

  Returns:
    `[B, G, c, c]`: C_g = q_g^T k_g / N, not normalised (the release's normalisation is an
    identity).
  """
  q, k = _remove_mean(q, mean_removal), _remove_mean(k, mean_removal)
  return jnp.einsum("bnga,bngc->bgac", q, k,
                    precision=jax.lax.Precision.HIGHEST) / q.shape[1]


class DropCovTokenHead(nn.Module):
  """DropCov on a vision transformer (NeurIPS 2022, SPEC §4): tokens `[B, 1 + N, D]` ->
  logits = Dense(cls) + Dense(flat), at least float32 throughout.

  q, k = the first two of three chunks of `qkv` = Dense(D -> 3 * cov_heads * cov_head_dim,
  no bias)(patch tokens), each split into `cov_heads` heads of `cov_head_dim` (DeiT-S:
  6 x 24); the output columns are ordered (chunk, head, channel) as the release's
  `reshape(B, N, 3, heads, dim)`. The third chunk is unused, as in the release; its columns
  stay so that released weights load. Then `head_cross_covariance` (`mean_removal`) ->
  `[B, G, c, c]`, flattened row-major (head, row, column): PyTorch's order, so the
  release's `[K, G c^2]` weight is our `fc_cov` kernel transposed.

  Training only, from the 'dropout' rng (as the release):
    - token dropout (`token_drop`, 0.2): one keep / drop per (sample, token, head), shared
      by q and k and the head's c channels, survivors x 1 / (1 - p). The release draws it
      with `Dropout2d` on `[B * heads, N, c]`, i.e. independently per head (SPEC: "drops
      whole tokens"), and multiplies q and k by the same mask, so a kept token's term in
      q^T k carries 1 / (1 - p)^2. The mask is applied before mean removal.
    - element dropout (`cov_drop`, 0.5) on C, survivors x 1 / (1 - p).
  Initialisation as the release's `_init_weights`: every Dense kernel truncated normal
  0.02, biases zero. Parameter names: qkv, fc_cls, fc_cov (the release's
  representation.wr, cls_fc, visual_fc). DeiT-S, K = 1000: 4,007,888 parameters.
  """
  num_classes: int
  cov_heads: int = 6
  cov_head_dim: int = 24
  token_drop: float = 0.2
  cov_drop: float = 0.5
  mean_removal: str = "scalar"
  psrp: ClassVar[bool] = False

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    # At least float32; the sublayers (dtype None) follow a float64 input.
    tokens = ops.upcast(tokens)
    cls, patches = tokens[:, 0], tokens[:, 1:]
    b, n, _ = patches.shape
    heads, dim = self.cov_heads, self.cov_head_dim
    qkv = nn.Dense(3 * heads * dim, use_bias=False, kernel_init=_trunc02, name="qkv")(patches)
    qk = qkv.reshape(b, n, 3, heads, dim)[:, :, :2]
    # broadcast over the q/k axis and the channels: whole tokens, the same mask for q and k.
    qk = nn.Dropout(self.token_drop, broadcast_dims=(2, 4), name="token_dropout")(
        qk, deterministic=not train)
    cov = head_cross_covariance(qk[:, :, 0], qk[:, :, 1], self.mean_removal)
    cov = nn.Dropout(self.cov_drop, name="cov_dropout")(cov, deterministic=not train)
    dense = lambda name: nn.Dense(self.num_classes, kernel_init=_trunc02, name=name)
    return dense("fc_cls")(cls) + dense("fc_cov")(cov.reshape(b, -1))


TOKEN_HEADS: dict[str, type[nn.Module]] = {
    "linear": LinearTokenHead,
    "mp": MPHead,
    "mp_plus": MPPlusHead,
    "dropcov": DropCovTokenHead,
}


# --- Feature-map heads: a ConvNeXt's final map `[B, H, W, C]` -> logits `[B, num_classes]` -
#
# The contract of the token heads (the classifier is part of the head, `psrp` switches MP+'s
# adapters on in the backbone) on a feature map, for `gcp.models.convnext`: ConvNeXt has no
# class token, and its final LayerNorm belongs to the head (timm's and the Moment Probing
# release's layout). Initialisation is PyTorch's default, as in that release (its ConvNeXt
# never calls `_init_weights`).


def _torch_dense(features: int, fan_in: int, name: str) -> nn.Dense:
  init = torch_uniform(fan_in)
  return nn.Dense(features, kernel_init=init, bias_init=init, name=name)


def _pooled_norm(x, name: str):
  """`[B, H, W, C]` -> `[B, C]`: global average pool -> LayerNorm (eps 1e-6), in at least
  float32 (timm's ConvNeXt head `global_pool`, `norm`, pool first)."""
  x = jnp.mean(ops.upcast(x), axis=(1, 2))
  return nn.LayerNorm(epsilon=1e-6, use_fast_variance=False, name=name)(x)


class MapLinearHead(nn.Module):
  """The release's (timm's) ConvNeXt head with `head_norm_first=False`, used when it does
  not probe with MP: global average pool -> LayerNorm (eps 1e-6) -> Dense;
  `[B, H, W, C]` -> `[B, num_classes]` float32. Parameter names: norm, fc (the release's
  head.norm, head.fc; FB's checkpoint names norm, head)."""
  num_classes: int
  psrp: ClassVar[bool] = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    pooled = _pooled_norm(x, "norm")
    return _torch_dense(self.num_classes, pooled.shape[-1], "fc")(pooled)


def map_groups(p, num_groups: int):
  """The release's channel grouping of a projected map: `[B, H, W, P]` -> `[B, H W, G, P / G]`
  with group g holding channels g, g + G, g + 2G, ... (interleaved: its
  `reshape(B, P // G, G, N)`), tokens in row-major (h, w) order."""
  b, h, w, d = p.shape
  return jnp.swapaxes(p.reshape(b, h * w, d // num_groups, num_groups), 2, 3)


class MPMapHead(_MomentProbingHead):
  """Moment Probing on a feature map: the release's `Moment_Probing_CNN` (cross_type
  'near'), `[B, H, W, C]` -> `[B, num_classes]`, at least float32 throughout.

  logits = (fc_cls(cls) + fc_cov(flat)) / 2, where
    cls = LayerNorm(avg-pool(x)) (eps 1e-6): ConvNeXt has no class token, so the first-order
      branch reads the pooled, normalised final map (the release's `cls_head`, timm's head
      without its fc);
    P = conv 1x1 (C -> proj_dim, bias)(x), split into `num_groups` interleaved groups
      (`map_groups`: the release's, unlike `MPHead`'s contiguous split of tokens), each
      through one shared LayerNorm (eps 1e-5), mean removal and column-normalised
      cross-covariances of adjacent groups (`mp_cross_covariance`) -> conv 3x3/2 VALID ->
      GELU -> conv 3x3/2 VALID (G - 1 channels, no bias) -> flattened channel-major (the
      release's NCHW order: its `[K, 2883]` weight is our kernel transposed).
  Parameter names (the release's): cls_norm (head.cls_head.norm), fc_cls (head.cls_head.fc),
  proj (head.proj), norm (head.ln), conv_0 / conv_1 (head.downblocks.0.0 / .2), fc_cov
  (head.classifier2). ConvNeXt-B (C 1024), K = 1000: 4,436,266 parameters.
  """

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    # At least float32; the sublayers (dtype None) follow a float64 input.
    x = ops.upcast(x)
    self.check_groups()
    c = x.shape[-1]
    cls = _pooled_norm(x, "cls_norm")
    init = torch_uniform(c)
    p = nn.Conv(self.proj_dim, (1, 1), kernel_init=init, bias_init=init, name="proj")(x)
    p = nn.LayerNorm(epsilon=1e-5, use_fast_variance=False, name="norm")(
        map_groups(p, self.num_groups))
    flat = mp_downsample(mp_cross_covariance(p, self.mean_removal),
                         torch_uniform(9 * (self.num_groups - 1)))
    return (_torch_dense(self.num_classes, c, "fc_cls")(cls)
            + _torch_dense(self.num_classes, flat.shape[-1], "fc_cov")(flat)) / 2


class MPPlusMapHead(MPMapHead):
  """MP+: the MP head, and PSRP adapters inside every ConvNeXt block (`psrp`)."""
  psrp: ClassVar[bool] = True


MAP_HEADS: dict[str, type[nn.Module]] = {
    "linear": MapLinearHead,
    "mp": MPMapHead,
    "mp_plus": MPPlusMapHead,
}
