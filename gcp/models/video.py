"""Video models (SPEC §5): a TSN-style 2D ResNet over T segments, AMS-Net's CPTM blocks and
CSTP neck, and TCPNet's second-order head.

A clip `[B, T, H, W, C]` (C = 3 * snippet_frames) has its frames folded into the batch for
the 2D backbone; the modules that look across time unfold it to `[B, T, h, w, c]`. The
backbone's parameter names are the image ResNet's (conv1, bn1, layer{i}_{j}/...), so
`gcp.checkpoint.inflate_image_variables` initialises it from our ImageNet checkpoints.
Configurations:

  TSN       head='gap'                 frames and positions averaged -> dropout -> fc
  AMS-Net   head='cstp', cptm=True     CPTM after layer1 and layer3, CSTP neck on res4/res5,
                                       auxiliary head on res4 in training
  AMS-Net*  the same, snippet_frames=3 3 consecutive frames stacked frame-major (RGB RGB RGB)
                                       into 9 channels per segment
  TCP       head='tcp'                 layer4 stride 1, reduction 2048 -> 256 -> 128, covariance
                                       over all T*H*W positions, iSQRT(3), triu (8,256)

Heads (`VIDEO_HEADS`) take res4 and res5 `[B, T, h, w, c]` and return a float32
representation `[B, D]`; the model applies dropout and the classifier `fc`, as TSN does.
Like the image heads, a head class states the last stage's stride (`last_stage_stride`) and
whether the model adds the auxiliary head on res4 (`aux_head`).

Auxiliary head: in training the model sows its logits as `aux_logits/aux` (a one-item
tuple, Flax's `sow`) when the `aux_logits` collection is mutable; the caller adds
`0.5 * CE(aux_logits)` (SPEC §5). At evaluation it does not run, but its parameters are in
the tree from `init` on (init runs it once), so one variable tree serves both modes.

Choices where SPEC §5 is silent: every conv is bias-free (SPEC says so for most of them and
each one feeds a BatchNorm), Dense layers have a bias; CPTM's layers and the competitions'
Dense layers take the framework default (PyTorch's: uniform +-1/sqrt(fan_in), kernels and
biases); neck and auxiliary convs Xavier-uniform; BatchNorm eps follows the backbone
variant (1e-5 pytorch, 1e-4 mindspore). The branch weights of every competition are the
output of a `BranchAttention` module (see `capture_intermediates`). TCPNet's temporal
attention (its TSA / TCA / temporal-conv module) is not implemented: SPEC §5 names it but
does not define it.
"""
import functools
import re
from typing import ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gcp import ops
from gcp.layers import ReductionBlock, batch_norm, dense
from gcp.models.resnet import Bottleneck, stem_and_stages

FUSIONS = ("competitive", "average")
_XAVIER = nn.initializers.xavier_uniform()
# PyTorch's default for conv and linear kernels (kaiming_uniform, a = sqrt(5)).
_TORCH_KERNEL = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _torch_bias(fan_in: int):
  """PyTorch's default bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                   bound)


def _conv3d(features: int, kernel: Sequence[int], *, name: str, dtype,
            strides: Sequence[int] = (1, 1, 1), groups: int = 1, init=_XAVIER) -> nn.Conv:
  """Bias-free Conv3d on `[B, T, H, W, C]`, kernel (t, h, w) padded by kernel // 2 on each
  side as PyTorch."""
  return nn.Conv(features, tuple(kernel), strides=tuple(strides),
                 padding=tuple((k // 2, k // 2) for k in kernel), feature_group_count=groups,
                 use_bias=False, dtype=dtype, kernel_init=init, name=name)


def _conv_bn_relu(x, features: int, kernel: Sequence[int], train: bool, *, name: str, dtype,
                  bn_eps: float, strides: Sequence[int] = (1, 1, 1), groups: int = 1,
                  init=_XAVIER):
  """`_conv3d` (`name`) -> BN (`{name}_bn`) -> ReLU. Call from a compact method."""
  x = _conv3d(features, kernel, name=name, dtype=dtype, strides=strides, groups=groups,
              init=init)(x)
  return nn.relu(batch_norm(train, name=f"{name}_bn", dtype=dtype, epsilon=bn_eps)(x))


def _spatiotemporal_mean(x):
  """`[B, T, H, W, C]` -> `[B, C]` in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(1, 2, 3))


class BranchAttention(nn.Module):
  """Competition between K branches (selective-kernel style), per channel.

  s `[B, C]` (the pooled sum of the branches) -> z = ReLU(BN(Dense(C -> hidden)(s))) ->
  weights `[B, K, C]` = softmax over K of [Dense_k(z -> C)], float32, summing to 1 over K.
  Parameter names: squeeze, squeeze_bn, branch_{k}.
  """
  num_branches: int
  hidden: int
  dtype: jnp.dtype = jnp.float32
  bn_eps: float = 1e-5

  @nn.compact
  def __call__(self, s, train: bool = False):
    c = s.shape[-1]
    z = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=_TORCH_KERNEL,
                 bias_init=_torch_bias(c), name="squeeze")(s.astype(self.dtype))
    z = nn.relu(batch_norm(train, name="squeeze_bn", dtype=self.dtype, epsilon=self.bn_eps)(z))
    logits = jnp.stack(
        [nn.Dense(c, dtype=self.dtype, kernel_init=_TORCH_KERNEL,
                  bias_init=_torch_bias(self.hidden), name=f"branch_{k}")(z)
         for k in range(self.num_branches)], axis=1)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=1)


def _weighted(weights, k, x):
  """Branch k of `x` `[B, T, H, W, c]` scaled by its weights `[B, K, c]`."""
  return weights[:, k, None, None, None, :].astype(x.dtype) * x


class CPTM(nn.Module):
  """AMS-Net's CPTM block (SPEC §5): `[B, T, H, W, C]` -> `[B, T, H, W, C]`, replacing the
  stage output (no shortcut).

  r = ReLU(BN(conv1x1(C -> C/4))); F1, F2, F3 = three chained temporal convs (k = 3) + BN
  + ReLU; V = softmax-weighted sum of the F_k per channel ('competitive') or their mean
  ('average', no attention parameters); out = ReLU(BN(conv1x1(C/4 -> C)(V))).
  Parameter names: reduce, temporal_{0,1,2}, attention (BranchAttention), expand, each conv
  followed by `{name}_bn`.
  """
  fusion: str = "competitive"
  dtype: jnp.dtype = jnp.float32
  bn_eps: float = 1e-5

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.fusion not in FUSIONS:
      raise ValueError(f"unknown cptm_fusion {self.fusion!r}; valid: {', '.join(FUSIONS)}")
    channels = x.shape[-1]
    if channels % 4:
      raise ValueError(f"CPTM reduces channels by 4; got {channels} channels")
    c = channels // 4
    layer = functools.partial(_conv_bn_relu, train=train, dtype=self.dtype,
                              bn_eps=self.bn_eps, init=_TORCH_KERNEL)
    y = layer(x, c, (1, 1, 1), name="reduce")
    branches = []
    for k in range(3):
      y = layer(y, c, (3, 1, 1), name=f"temporal_{k}")
      branches.append(y)
    mean = sum(branches) / 3
    if self.fusion == "average":
      v = mean
    else:
      weights = BranchAttention(3, max(c // 16, 32), dtype=self.dtype, bn_eps=self.bn_eps,
                                name="attention")(_spatiotemporal_mean(mean), train)
      v = sum(_weighted(weights, k, f) for k, f in enumerate(branches))
    return layer(v, channels, (1, 1, 1), name="expand")


class VideoGAPHead(nn.Module):
  """TSN: res5 averaged over frames and positions, `[B, T, h, w, C]` -> `[B, C]`."""
  last_stage_stride: ClassVar[int] = 2
  aux_head: ClassVar[bool] = False

  @nn.compact
  def __call__(self, res4, res5, train: bool = False):
    del res4, train
    return _spatiotemporal_mean(res5)


class CSTPHead(nn.Module):
  """AMS-Net's CSTP neck and head (SPEC §5): res4 `[B, T, 2h, 2w, C/2]` and res5
  `[B, T, h, w, C]` -> `[B, C]` float32 (C = 2048 in ResNet-50).

  Both levels go to res5's size (level 0: strided conv on res4), each gets a grouped
  temporal conv to C/2 channels and a max-pool over all T frames; top-down and bottom-up
  paths with per-level fusion convs; a 4-way competition (reduction 8) joins the four
  level features into a top-down and a bottom-up map of C channels, a 2-way competition
  (reduction 8) joins those; the result is averaged over positions.
  Parameter names: res4_conv, temporal_{0,1}, bottom_up, td_{0,1}, bu_{0,1},
  fuse1_attention, fuse1_td, fuse1_bu, fuse2_attention, fuse2 (and `{name}_bn`).
  """
  dtype: jnp.dtype = jnp.float32
  bn_eps: float = 1e-5
  groups: ClassVar[int] = 32
  last_stage_stride: ClassVar[int] = 2
  aux_head: ClassVar[bool] = True

  @nn.compact
  def __call__(self, res4, res5, train: bool = False):
    channels = res5.shape[-1]
    c = channels // 2
    layer = functools.partial(_conv_bn_relu, train=train, dtype=self.dtype,
                              bn_eps=self.bn_eps)
    conv3d = functools.partial(_conv3d, dtype=self.dtype)
    y0 = layer(res4, channels, (1, 3, 3), strides=(1, 2, 2), name="res4_conv")
    if y0.shape[1:4] != res5.shape[1:4]:
      raise ValueError(f"CSTP needs res4 at twice res5's resolution: res4 {res4.shape} "
                       f"gives {y0.shape[1:4]} after the stride-2 conv, res5 is {res5.shape}")
    # Temporal pooling over all T frames (Tp = T): every level ends with one time step.
    t0, t1 = (jnp.max(conv3d(c, (3, 1, 1), groups=self.groups, name=f"temporal_{i}")(y),
                      axis=1, keepdims=True)
              for i, y in enumerate((y0, res5)))
    bottom_up = t1 + conv3d(c, (3, 1, 1), name="bottom_up")(t0)
    fuse = functools.partial(layer, features=c, kernel=(1, 1, 1), groups=self.groups)
    td = [fuse(t0 + t1, name="td_0"), fuse(t1, name="td_1")]
    bu = [fuse(t0, name="bu_0"), fuse(bottom_up, name="bu_1")]

    attention = functools.partial(BranchAttention, dtype=self.dtype, bn_eps=self.bn_eps)
    a = attention(4, c // 8, name="fuse1_attention")(_spatiotemporal_mean(sum(td + bu)),
                                                     train)
    td = layer(jnp.concatenate([_weighted(a, 0, td[0]), _weighted(a, 1, td[1])], axis=-1),
               channels, (1, 1, 1), name="fuse1_td")
    bu = layer(jnp.concatenate([_weighted(a, 2, bu[0]), _weighted(a, 3, bu[1])], axis=-1),
               channels, (1, 1, 1), name="fuse1_bu")
    a = attention(2, channels // 8, name="fuse2_attention")(_spatiotemporal_mean(td + bu),
                                                            train)
    out = layer(jnp.concatenate([_weighted(a, 0, td), _weighted(a, 1, bu)], axis=-1),
                channels, (1, 1, 1), name="fuse2")
    return _spatiotemporal_mean(out)


class AuxHead(nn.Module):
  """AMS-Net's auxiliary classifier on res4 (training only, SPEC §5): `[B, T, h, w, C3]` ->
  logits `[B, num_classes]`. Conv3d (1,3,3) / (1,2,2) to `features` + BN + ReLU -> average
  over frames and positions -> dropout -> fc. Parameter names: conv, conv_bn, fc."""
  num_classes: int
  features: int
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32
  bn_eps: float = 1e-5
  init_scheme: str = "mindspore"

  @nn.compact
  def __call__(self, res4, train: bool = False):
    y = _conv_bn_relu(res4, self.features, (1, 3, 3), train, strides=(1, 2, 2), name="conv",
                      dtype=self.dtype, bn_eps=self.bn_eps)
    y = nn.Dropout(self.dropout, deterministic=not train)(_spatiotemporal_mean(y))
    return dense(self.num_classes, name="fc", init=self.init_scheme)(y)


class TCPHead(nn.Module):
  """TCPNet's second-order pooling without its temporal attention: res5 `[B, T, h, w, C]`
  -> two reduction blocks (C -> inner_dim -> reduction_dim, 1x1 conv + BN + ReLU) ->
  covariance over all T*h*w positions of the clip -> iSQRT(num_iters) -> triu, float32
  `[B, d (d + 1) / 2]` (8,256 for d = 128). Parameter names: reduce1, reduce2 (TCPNet's
  layer_reduce1 / layer_reduce2). `isqrt_method` as `gcp.heads.ISQRTHead`."""
  reduction_dim: int = 128
  inner_dim: int = 256
  num_iters: int = 3
  isqrt_method: str = "auto"
  dtype: jnp.dtype = jnp.float32
  bn_eps: float = 1e-5
  init_scheme: str = "mindspore"
  last_stage_stride: ClassVar[int] = 1
  aux_head: ClassVar[bool] = False

  @nn.compact
  def __call__(self, res4, res5, train: bool = False):
    del res4
    if not self.reduction_dim or not self.inner_dim:
      raise ValueError("the tcp head needs reduction_dim and inner_dim >= 1 (TCPNet: 128 and "
                       f"256), got {self.reduction_dim} and {self.inner_dim}")
    x = res5
    for i, dim in enumerate((self.inner_dim, self.reduction_dim)):
      x = ReductionBlock(dim, dtype=self.dtype, bn_eps=self.bn_eps,
                         init_scheme=self.init_scheme, name=f"reduce{i + 1}")(x, train)
    b, t, h, w, d = x.shape
    return ops.triu_vec(ops.isqrt_cov(x.reshape(b, t * h * w, d), self.num_iters,
                                      method=self.isqrt_method))


VIDEO_HEADS: dict[str, type[nn.Module]] = {
    "gap": VideoGAPHead,
    "cstp": CSTPHead,
    "tcp": TCPHead,
}


class VideoResNet(nn.Module):
  """TSN-style ResNet (Bottleneck blocks) over the frames of a clip, with optional CPTM
  blocks and a video head.

  Input `[B, T, H, W, 3 * snippet_frames]` clips (any float dtype; T is fixed by the
  input); output `[B, num_classes]` float32 logits. `input_rank` (5) lets the training
  loop tell multi-view evaluation batches `[B, V, T, H, W, C]` apart.

  Attributes:
    stage_sizes: blocks per stage, (3, 4, 6, 3) for ResNet-50.
    head: a module from `VIDEO_HEADS`.
    num_classes: classifier outputs.
    width: channels of the first stage (64 in every published model).
    cptm: CPTM blocks after layer1 and layer3 (`cptm1`, `cptm3`), replacing their output.
    cptm_fusion: 'competitive' (softmax over the branches per channel) or 'average'.
    snippet_frames: frames per segment stacked along channels (AMS-Net*: 3).
    dropout: before the classifier (and in the auxiliary head).
    dtype: compute dtype; parameters and second-order parts are float32.
    variant, init_scheme: the backbone conventions of `gcp.models.resnet.ResNet`. Use the
      variant of the image checkpoint the backbone is initialised from.
  """
  stage_sizes: Sequence[int]
  head: nn.Module
  num_classes: int
  width: int = 64
  cptm: bool = False
  cptm_fusion: str = "competitive"
  snippet_frames: int = 1
  dropout: float = 0.5
  dtype: jnp.dtype = jnp.float32
  variant: str = "pytorch"
  init_scheme: str = "mindspore"
  input_rank: ClassVar[int] = 5

  def __post_init__(self):
    if self.cptm_fusion not in FUSIONS:
      raise ValueError(f"unknown cptm_fusion {self.cptm_fusion!r}; valid: "
                       f"{', '.join(FUSIONS)}")
    if not isinstance(self.snippet_frames, int) or self.snippet_frames < 1:
      raise ValueError(f"snippet_frames must be a positive integer (1: RGB frames, 3: "
                       f"AMS-Net* snippets), got {self.snippet_frames!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x, train: bool = False):
    channels = 3 * self.snippet_frames
    if x.ndim != 5 or x.shape[-1] != channels:
      raise ValueError(f"the video model expects clips [B, T, H, W, {channels}] "
                       f"(snippet_frames={self.snippet_frames}), got shape {x.shape}")
    b, t = x.shape[:2]
    fold = lambda y: y.reshape(b * t, *y.shape[2:])
    unfold = lambda y: y.reshape(b, t, *y.shape[1:])
    bn_eps = 1e-4 if self.variant == "mindspore" else 1e-5

    def cptm(i, y):  # after layer1 and layer3, replacing their output
      if not self.cptm or i not in (0, 2):
        return y
      return fold(CPTM(self.cptm_fusion, dtype=self.dtype, bn_eps=bn_eps,
                       name=f"cptm{i + 1}")(unfold(y), train))

    *_, res4, res5 = map(unfold, stem_and_stages(
        fold(x), train, stage_sizes=self.stage_sizes, block=Bottleneck, width=self.width,
        small_input=False, dtype=self.dtype, variant=self.variant,
        init_scheme=self.init_scheme, last_stage_stride=type(self.head).last_stage_stride,
        after_stage=cptm))
    features = self.head(res4, res5, train=train)
    features = nn.Dropout(self.dropout, deterministic=not train)(features)
    logits = dense(self.num_classes, name="fc", init=self.init_scheme)(features)
    # Init builds the auxiliary head too, so train and eval share one variable tree.
    if type(self.head).aux_head and (train or self.is_initializing()):
      aux = AuxHead(self.num_classes, res5.shape[-1], self.dropout, dtype=self.dtype,
                    bn_eps=bn_eps, init_scheme=self.init_scheme, name="aux_head")(res4, train)
      if train:
        self.sow("aux_logits", "aux", aux)
    return logits


# ------------------------------------------- what an image model's checkpoint initialises

# The backbone's modules, shared with the image ResNet (`gcp.checkpoint.
# inflate_image_variables` copies them), and the stem kernel snippets widen.
BACKBONE_MODULE = re.compile(r"conv1|bn1|layer\d+_\d+")
STEM_KERNEL = "params/conv1/kernel"
