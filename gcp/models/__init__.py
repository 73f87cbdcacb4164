"""Model registry: `create_model(arch, head=..., num_classes=...)` -> a flax.linen Module.

The module is called as `model.apply(variables, images_nhwc, train=...)` and returns
float32 logits `[B, num_classes]`. Every CNN backbone takes every head of
`gcp.heads.HEADS` and ends in its classifier `fc`; every ViT (`VIT_ARCHS`) and Swin takes
every head of `gcp.heads.TOKEN_HEADS`, ConvNeXt every head of `gcp.heads.MAP_HEADS`; those
heads hold the classifier themselves (see `gcp.heads`).
Video models (`VIDEO_ARCHS`) take clips `[B, T, H, W, C]` (their class attribute
`input_rank` is 5) and every head of `gcp.models.video.VIDEO_HEADS`.
"""
import dataclasses
import functools

import flax.linen as nn
import jax.numpy as jnp

from gcp.heads import HEADS, MAP_HEADS, TOKEN_HEADS
from gcp.layers import INITS
from gcp.models import densenet
from gcp.models.convnext import ConvNeXt
from gcp.models.inception import InceptionV3
from gcp.models.mobilenet import MobileNetV2
from gcp.models.resnet import STAGE_SIZES, VARIANTS, ResNet
from gcp.models.shufflenet import ShuffleNetV2
from gcp.models.swin import SwinTransformer
from gcp.models.vgg import CFGS, VGG, AlexNet
from gcp.models.video import VIDEO_HEADS, VideoResNet
from gcp.models.vit import VIT_SIZES, ViT

# name -> (backbone constructor, the initialisation its release trained with)
_BACKBONES = {
    **{name: (functools.partial(ResNet, stage_sizes=stages, block=block), "mindspore")
       for name, (stages, block) in STAGE_SIZES.items()},
    "alexnet": (AlexNet, "pytorch"),
    **{f"{name}{bn}": (functools.partial(VGG, cfg=cfg, batch_norm=bool(bn)), "torchvision")
       for name, cfg in CFGS.items() for bn in ("", "_bn")},
    **{name: (functools.partial(densenet.DenseNet, growth_rate=growth, block_config=blocks,
                                num_init_features=stem), "densenet")
       for name, (growth, blocks, stem) in densenet.SIZES.items()},
    "inception_v3": (InceptionV3, "inception"),
    "mobilenet_v2": (MobileNetV2, "torchvision"),
    "shufflenet_v2": (ShuffleNetV2, "torchvision"),
}
# TSN-style video ResNets (Bottleneck depths): AMS-Net, AMS-Net*, TSN and TCP are options
# and heads of these (see gcp.models.video).
_VIDEO = {f"tsn_{name}": (functools.partial(VideoResNet, stage_sizes=stages), "mindspore")
          for name, (stages, block) in STAGE_SIZES.items() if block.expansion == 4}
VIDEO_ARCHS = tuple(_VIDEO)
_BACKBONES.update(_VIDEO)
_VITS = {name: functools.partial(ViT, patch_size=p, width=w, depth=d, num_heads=h,
                                  mlp_dim=m)
         for name, (p, w, d, h, m) in VIT_SIZES.items()}
VIT_ARCHS = tuple(_VITS)
# Backbones whose head holds the classifier: name -> (constructor, head registry). Swin-B
# (patch 4, window 7) and ConvNeXt-B are the fields' defaults; Moment Probing probes them.
_HEAD_CLASSIFIER = {**{name: (vit, TOKEN_HEADS) for name, vit in _VITS.items()},
                    "swin_b": (SwinTransformer, TOKEN_HEADS),
                    "convnext_b": (ConvNeXt, MAP_HEADS)}
ARCHS = tuple(_BACKBONES) + tuple(_HEAD_CLASSIFIER)
# GCP_Optimization's MobileNetV2_MPNCOV and ShuffleNetV2_MPNCOV end their reduction in ReLU6.
_RELU6_REDUCTION = ("mobilenet_v2", "shufflenet_v2")
DTYPES = ("float32", "bfloat16", "float16")
# Set by create_model itself, never passed as options.
_MANAGED = {"stage_sizes", "block", "cfg", "batch_norm", "head", "num_classes", "dtype",
            "init_scheme", "parent", "name", "bn_eps", "reduction_relu6", "reduction_dim"}
# A ViT's shape is its arch name; these options (ResNet / VGG `width`) never reach a ViT.
_VIT_SHAPE = {"patch_size", "width", "depth", "num_heads", "mlp_dim"}


def _fields(cls) -> set[str]:
  cls = cls.func if isinstance(cls, functools.partial) else cls
  return {f.name for f in dataclasses.fields(cls)} - _MANAGED


def _check(kind: str, value, valid) -> None:
  if value not in valid:
    raise ValueError(f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}")


def _heads(arch: str) -> dict[str, type[nn.Module]]:
  """The head registry an architecture takes."""
  if arch in _HEAD_CLASSIFIER:
    return _HEAD_CLASSIFIER[arch][1]
  return VIDEO_HEADS if arch in _VIDEO else HEADS


def create_model(arch: str, *, head: str, num_classes: int, reduction_dim: int | None = None,
                 dtype: str = "float32", init_scheme: str | None = None,
                 **options) -> nn.Module:
  """Builds a backbone ending in a registered pooling head and its classifier.

  Args:
    arch: one of `ARCHS`: a CNN (ResNets, 'alexnet', 'vgg11' ... 'vgg19_bn',
      'densenet121' ... 'densenet201', 'inception_v3', 'mobilenet_v2', 'shufflenet_v2'),
      a ViT of `VIT_ARCHS` ('vit_s16', 'vit_b16',
      'deit_t16', 'deit_s16', 'deit_b16', the DropCov release's 'dropcov_deit_t' and
      'dropcov_t2t_vit_14', 'vit_test'), 'swin_b', 'convnext_b' or a video model of
      `VIDEO_ARCHS` ('tsn_resnet50', 'tsn_resnet101', 'tsn_resnet152').
    head: one of `gcp.heads.HEADS` for CNNs, of `gcp.heads.TOKEN_HEADS` ('linear', 'mp',
      'mp_plus', 'dropcov') for ViTs and Swin, of `gcp.heads.MAP_HEADS` ('linear', 'mp',
      'mp_plus') for ConvNeXt, of `gcp.models.video.VIDEO_HEADS` ('gap', 'cstp', 'tcp')
      for video models.
    num_classes: classifier outputs.
    reduction_dim: channels of the head's 1x1 reduction block (None or 0: none); used by
      the second-order heads (the tcp head's last reduction; None: TCPNet's 128).
    dtype: backbone compute dtype; second-order parts always run in float32.
    init_scheme: `gcp.layers.INITS` key; None: the one the backbone's release trained with
      ('mindspore' for ResNets, 'pytorch' for AlexNet, 'densenet', 'inception', else
      'torchvision').
    **options: backbone attributes (ResNet `width`, `small_input`, `variant`; VGG `width`,
      `hidden` (0: one Linear classifier), `dropout`; AlexNet `hidden`, `dropout`; DenseNet
      `growth_rate`, `block_config`, `num_init_features`, `bn_size`, `drop_rate`;
      MobileNetV2 `width_mult`, `dropout`; ShuffleNetV2 `width_mult` 0.5, 1.0, 1.5 or
      2.0) and head attributes
      (`num_iters`, `isqrt_method`, `alpha`, `sketch_dim`); video `cptm`, `cptm_fusion`,
      `snippet_frames`, `dropout`, tcp head `inner_dim`, `num_iters` (TCPNet: 3),
      `isqrt_method`; ViT `stem` ('patch' | 'conv': the DropCov release's DeiT-S, its
      token stem, no qkv bias and LayerNorm eps 1e-5), `drop_path`, `psrp_rank`,
      `approximate_gelu`; Swin `embed_dim`, `depths`, `num_heads`, `window_size`,
      `mlp_ratio`, `drop_path`, `psrp_rank`; ConvNeXt `depths`, `dims`, `drop_path`,
      `psrp_rank`, `unbiased_downsample_norm`; token- and map-head `proj_dim`,
      `num_groups`, `mean_removal` (mp) and `cov_heads`, `cov_head_dim`, `token_drop`,
      `cov_drop` (dropcov). An option that
      only other backbones or heads take is ignored, so one config serves every
      combination; a name none of them knows is an error. ViTs, Swin
      and ConvNeXt ignore `reduction_dim` and `init_scheme` (ViTs initialise as
      big_vision, Swin and ConvNeXt as the Moment Probing release).
  """
  _check("arch", arch, ARCHS)
  _check("head", head, tuple(_heads(arch)))
  _check("dtype", dtype, DTYPES)
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
  known = set().union(*(_fields(b) for b, _ in _BACKBONES.values()),
                      *(_fields(h) for h in HEADS.values()),
                      *(_fields(h) for h in VIDEO_HEADS.values()),
                      *(_fields(b) - _VIT_SHAPE for b in _VITS.values()),
                      *(_fields(b) for b in (SwinTransformer, ConvNeXt)),
                      *(_fields(h) for h in {**TOKEN_HEADS, **MAP_HEADS}.values()))
  unknown = sorted(set(options) - known)
  if unknown:
    raise ValueError(f"unknown model option(s) {unknown}; valid options: {sorted(known)}")
  if arch in _HEAD_CLASSIFIER:
    backbone, registry = _HEAD_CLASSIFIER[arch]
    head_cls = registry[head]
    head_fields = _fields(head_cls)
    backbone_fields = _fields(backbone) - (_VIT_SHAPE if arch in _VITS else set())
    return backbone(
        head=head_cls(num_classes=num_classes,
                      **{k: v for k, v in options.items() if k in head_fields}),
        dtype=jnp.dtype(dtype), **{k: v for k, v in options.items() if k in backbone_fields})
  backbone, default_init = _BACKBONES[arch]
  init_scheme = init_scheme or default_init
  _check("init_scheme", init_scheme, tuple(INITS))
  if options.get("variant", "pytorch") not in VARIANTS:
    raise ValueError(f"unknown variant {options['variant']!r}; valid variants: "
                     f"{', '.join(VARIANTS)}")

  head_cls, backbone_fields = _heads(arch)[head], _fields(backbone)
  head_fields = {f.name for f in dataclasses.fields(head_cls)}
  head_kwargs = {k: v for k, v in options.items() if k in head_fields}
  # The head follows its backbone's conventions where it has the attribute; without a
  # reduction_dim it keeps its own default.
  conventions = {
      "dtype": jnp.dtype(dtype), "init_scheme": init_scheme,
      "bn_eps": 1e-4 if options.get("variant") == "mindspore" else 1e-5,
      "reduction_relu6": arch in _RELU6_REDUCTION}
  if reduction_dim is not None:
    conventions["reduction_dim"] = reduction_dim
  head_kwargs.update({k: v for k, v in conventions.items() if k in head_fields})
  return backbone(head=head_cls(**head_kwargs), num_classes=num_classes,
                  dtype=jnp.dtype(dtype), init_scheme=init_scheme,
                  **{k: v for k, v in options.items() if k in backbone_fields})
