"""The authors' published ImageNet checkpoints: one entry per file, every link copied from
its release's README (the comment above each group names the README).

An entry's `spec` holds the `create_model` arguments that `gcp.convert` reads off the
release's file (arch, head, reduction_dim, num_classes, variant, ...); arguments not given
are `gcp.config.base_config().model`'s defaults (`expected_spec`). `params` is the
parameter count of the release's network, which our model built from the spec has too
(tested, as is the spec against the converter's inference from the release network's
names and shapes).

Not listed: models no gcp architecture computes (the DropCov release's Swin-T with and
without DropCov, and its T2T-ViT-14 baseline, T2T-ViT's own network) and GCP_Optimization's
COCO detection backbones.
"""
import dataclasses
import re
from typing import Any

from gcp.config import base_config


@dataclasses.dataclass(frozen=True)
class Release:
  title: str  # the paper
  repo: str  # the release's repository (owner/name on GitHub)
  framework: str  # 'PyTorch' or 'MindSpore'


RELEASES = {
    "gcp-opt": Release("Towards a Deeper Understanding of Global Covariance Pooling in Deep "
                       "Learning: An Optimization Perspective (TPAMI 2023)",
                       "Terror03/GCP-OPT", "MindSpore"),
    "dropcov-ms": Release("DropCov: A Simple yet Effective Method for Improving Deep "
                          "Architectures (NeurIPS 2022), MindSpore",
                          "Sherry1945/Dropcov_mindspore", "MindSpore"),
    "fast-mpn-cov": Release("Towards Faster Training of Global Covariance Pooling Networks by "
                            "Iterative Matrix Square Root Normalization (CVPR 2018)",
                            "jiangtaoxie/fast-MPN-COV", "PyTorch"),
    "gcp-optimization": Release("What Deep CNNs Benefit from Global Covariance Pooling: An "
                                "Optimization Perspective (CVPR 2020)",
                                "ZhangLi-CS/GCP_Optimization", "PyTorch"),
    "dropcov": Release("DropCov: A Simple yet Effective Method for Improving Deep "
                       "Architectures (NeurIPS 2022)", "mingzeG/DropCov", "PyTorch"),
    "mp": Release("Tuning Pre-trained Model via Moment Probing (ICCV 2023)",
                  "mingzeG/Moment-Probing", "PyTorch"),
}
# The file suffix tells gcp.convert the format (gcp.convert.FORMATS).
_SUFFIX = {"PyTorch": ".pth", "MindSpore": ".ckpt"}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One published checkpoint.

  Attributes:
    name: `<release>/<model>`, the name `load`, `pretrained:NAME` and the CLI take.
    releases: keys of `RELEASES` whose READMEs publish the file (the first is its home).
    description: the model, as the README's table names it.
    spec: `create_model` arguments `gcp.convert` infers from the file, defaults left out.
    params: the release network's parameter count (= our model's).
    top1: the published ImageNet top-1 (%) of this checkpoint.
    urls: the README's download links, tried in order (Google Drive needs `gdown`).
    mirrors: links for downloading by hand only (Baidu: with its extract code), for
      `python -m gcp.pretrained import`.
    size_mib: the file size the README gives (MiB), where it gives one.
    sha256: the file's SHA-256, where known; otherwise the first download records it.
  """
  name: str
  releases: tuple[str, ...]
  description: str
  spec: dict[str, Any]
  params: int
  top1: float
  urls: tuple[str, ...]
  mirrors: tuple[str, ...] = ()
  size_mib: float | None = None
  sha256: str | None = None

  @property
  def release(self) -> Release:
    return RELEASES[self.releases[0]]

  @property
  def filename(self) -> str:
    """The file's name in the cache; its suffix tells `gcp.convert` the format."""
    return self.name.split("/")[-1] + _SUFFIX[self.release.framework]


def expected_spec(entry: Entry) -> dict[str, Any]:
  """`entry.spec` over the model defaults: what `gcp.convert` gives for the file, for the
  keys it sets."""
  return {**base_config().model.to_dict(), **entry.spec}


def _drive(file_id: str) -> str:
  """A Drive link as fast-MPN-COV's and GCP_Optimization's READMEs write them."""
  return f"https://drive.google.com/open?id={file_id}"


def _drive_file(file_id: str, usp: str = "sharing") -> str:
  """A Drive link as the other READMEs write them."""
  return f"https://drive.google.com/file/d/{file_id}/view?usp={usp}"


def _resnet(arch: str, head: str, dim: int | None, **extra) -> dict[str, Any]:
  return {"arch": arch, "head": head, "reduction_dim": dim, "num_classes": 1000, **extra}


# Parameter counts of the releases' networks at 1000 classes (tests/test_pretrained.py
# counts the ports in tests/references).
_PARAMS = {
    ("resnet18", "isqrt", 128): 19_499_304, ("resnet34", "isqrt", 128): 29_607_464,
    ("resnet50", "isqrt", 128): 32_027_432,
    ("resnet18", "isqrt", 256): 44_205_096, ("resnet34", "isqrt", 256): 54_313_256,
    ("resnet50", "isqrt", 256): 56_929_832, ("resnet101", "isqrt", 256): 75_921_960,
    ("resnet18", "gap", None): 11_689_512, ("resnet34", "gap", None): 21_797_672,
    ("resnet50", "gap", None): 25_557_032, ("resnet101", "gap", None): 44_549_160,
    ("mobilenet_v2", "gap", None): 3_504_872, ("mobilenet_v2", "isqrt", 256): 35_449_064,
    ("mobilenet_v2", "isqrt", 128): 10_644_968,
    ("shufflenet_v2", "gap", None): 2_278_604, ("shufflenet_v2", "isqrt", 256): 34_413_260,
}


def _count(arch: str, head: str, dim: int | None) -> int:
  # DropCov's ECA conv adds its 3 taps to the iSQRT model's parameters.
  return _PARAMS[arch, "isqrt" if head == "dropcov" else head, dim] + 3 * (head == "dropcov")


def _seed(arch: str, head: str, top1: float, file_id: str, usp: str = "drive_link") -> Entry:
  """A MindSpore seed model: the 1001-way classifier is cut to the 1000 classes."""
  label = {"isqrt": "fast_mpn", "dropcov": "dropcov"}[head]
  releases = ("gcp-opt",) + (("dropcov-ms",) if head == "dropcov" else ())
  return Entry(f"gcp-opt/{arch}_{label}", releases,
               f"ResNet-{arch[6:]}+{'Fast-MPN' if head == 'isqrt' else 'Drop-COV'}",
               _resnet(arch, head, 128, variant="mindspore"), _count(arch, head, 128), top1,
               (_drive_file(file_id, usp),))


ENTRIES: list[Entry] = [
    # Terror03/GCP-OPT README.md, "Main Results" (Fast-MPN and Drop-COV, MindSpore 1.9).
    # The Drop-COV files are also Sherry1945/Dropcov_mindspore README.md's "Main Results on
    # ImageNet with Pretrained Models" (the same Drive ids).
    _seed("resnet18", "isqrt", 74.64, "1kpBpbYpWQfSzSav7v8Ms7dn1SaUlOlMk"),
    _seed("resnet18", "dropcov", 73.8, "1zVDDmmQWQ-CDDoxjaolkcjI3MACE-rxx"),
    _seed("resnet34", "isqrt", 76.27, "1T0YCzz-A-V2GI1tjihCHIjug93nFSQ91"),
    _seed("resnet34", "dropcov", 76.13, "1-gvogrLlRSnpzigvevLPV1GKAHF0vr2K"),
    _seed("resnet50", "isqrt", 77.71, "1aF-By_pMhbCu82Gl73sFyz4qlNS25ayJ"),
    _seed("resnet50", "dropcov", 77.77, "1PBy8evHi-xiJHiTWgqrUs8jTH58hJM2n", "share_link"),
]

# jiangtaoxie/fast-MPN-COV README.md, "Classification results": GoogleDrive and BaiduCloud
# links, the link text being the size. Top-1 is the "reproduce" column (the released
# models; the paper's: VGG 73.45, ResNet-50 77.86, ResNet-101 78.79). The VGG is
# src/network/mpncovvgg.py's mpncovvgg16_bn (BatchNorm, FC-4096 classifier).
ENTRIES += [
    Entry("fast-mpn-cov/vgg16_bn", ("fast-mpn-cov",), "fast MPN-COV-VGG-D",
          {"arch": "vgg16_bn", "head": "isqrt", "reduction_dim": 256, "num_classes": 1000,
           "hidden": 4096},
          170_479_144, 76.02, (_drive("1oD2QydL8VvK2Zu6Ba5Xe3gFq3to8JsrN"),),
          ("https://pan.baidu.com/s/10DmoGbuHjI_Nsd8bEbefsA",), size_mib=650.4),
    Entry("fast-mpn-cov/resnet50", ("fast-mpn-cov",), "fast MPN-COV-ResNet50",
          _resnet("resnet50", "isqrt", 256), _count("resnet50", "isqrt", 256), 78.29,
          (_drive("19TWen7p9UDyM0Ueu9Gb22NtouR109C6j"),),
          ("https://pan.baidu.com/s/17TxANPJg_j2VyYgXV05OOQ",), size_mib=217.3),
    Entry("fast-mpn-cov/resnet101", ("fast-mpn-cov",), "fast MPN-COV-ResNet101",
          _resnet("resnet101", "isqrt", 256), _count("resnet101", "isqrt", 256), 79.01,
          (_drive("1riur7v3rZ7vnrdj2UZ7EBaTKEGSccYwg"),),
          ("https://pan.baidu.com/s/1_H8MosgzPH0BBmlKw2sr5A",), size_mib=289.9),
]

# ZhangLi-CS/GCP_Optimization README.md, "Main Results and Models": (model, top-1,
# BaiduDrive link, extract code, GoogleDrive id), the MobileNetV2, ShuffleNetV2 (1.0x) and
# ResNet tables row by row. GCP models are src/models/ResNet_MPNCOV.py /
# MobileNetV2_MPNCOV.py / ShuffleNetV2_MPNCOV.py (reduction to 256), `_128` ones the
# *_MPNCOV_128.py networks; GAP ones torchvision's architectures (src/models/ResNet.py,
# MobileNetV2.py, ShuffleNetV2.py).
_GCP_OPTIMIZATION = """
MobileNetV2_GAP_LRnorm 71.62 1L0DHZhyzp_h02WfZ1xq8Hw va25 1NTKVzjpuJtDEBBShgBPailKdhntUXwKs
MobileNetV2_GAP_LRfast 69.29 1-vujnIa4RVxw4QVG2j5zZg f5n4 1_OeoWrDUoSsRDFOA0-ZmIOzmWyelv9op
MobileNetV2_GAP_LRadju 71.27 1ZKk_m-XQ7gwt6Z1kEDg_cw pai8 177K9xr89XJ-Upax2NB3WNb9s6X1eWZA7
MobileNetV2_GCP_LRnorm 74.39 1cdCpSV8Md6faxkUt7v-tDQ 3r9q 18OpYWyBUGqSIiY4m0BqKsHNo22IuNB80
MobileNetV2_GCP_LRfast 72.45 1seBLgrtT9gnLgEJk80hbJA dq5w 1VHTcaoZU-IoeQlflbpPZJrmlP79vgMYF
MobileNetV2_GCP_LRadju 73.97 1HBacuaQ_8qbBaZFSJhn20Q i7y3 1b77p7IkLVMGKcvBb2p7tHgjr_I6tZjWh
MobileNetV2_GCP_LRnorm_128 73.28 1egJRYtCmMTNnz5uhy5KvGg cxhu 1D5ab0tRhIWvFsV9vR67-GQtnen71MFmB
MobileNetV2_GCP_LRadju_128 72.58 1WcOX5fKaGGDIcM6zTqL8fw 3qdx 1ZSZBIgknAOX3oC0sx6gsfbmMEV0gFKJ4
ShuffleNetV2_GAP_LRnorm 67.96 1N43tW6kFwurjOn-YR9kukg rbew 1MtG2wGDk-JweO1vzX_7LxBvJvF_jCo1r
ShuffleNetV2_GAP_LRfast 66.13 1Ot7COL8DmJAhLVy51Y6kqg 7y58 1apUs5zfR_ZdJO00tJHZwYHi2dIv6zVpm
ShuffleNetV2_GAP_LRadju 67.15 1YKkFzLgMtcJ1Uw4nGoLqdg c7i8 1xnmnY7Dk6A5UaKSkS3xx71dz-kiMLrzw
ShuffleNetV2_GCP_LRnorm 71.83 18_RE34Y0j7vxSXeyIY5dmA tr5u 1fEOyjZrXdcGuXvj8l0XwYCdt5uQx6fAM
ShuffleNetV2_GCP_LRfast 70.29 1Eg4Gu3-qmqnzWxGjlJyfsA 8qxx 1-r46jSo8qooPeQdymyToaL3pQNTmOHtr
ShuffleNetV2_GCP_LRadju 71.17 1rEPaU7Cyv8O1DUdHyFrW7Q nud1 1P-RlJat6XL7BxD5oCDz_ifKDq7NNRYqj
ResNet18_GAP_LRnorm 70.47 1PYlOx5Ap8iy0JPz1nURZhQ z7ab 1hK56OuyrXiEIrp7D3CroaGM2L2-FSTl0
ResNet18_GAP_LRfast 66.02 1Wam0yraiZoeAHqfScGcDXA 78uw 1870WX_VaHZd5qgcyUXaqtJ-EFpqx9uX4
ResNet18_GAP_LRadju 69.62 1sBWTZodgD27V2Tr6hoIYnQ 29cn 1ttvh_nt6JURkkLHKhVr9r-VwcwXd7cfS
ResNet18_GCP_LRnorm 75.48 1Nr6FH8PUbY60oAOi41pYWQ eje8 1D4ZmTHJ5dmTTpdL2IA3UJUIm54cF45na
ResNet18_GCP_LRfast 72.02 1PkbvOYPtPGQoaXt5CVeJWA k6f6 1PkMvpWj6FH1d4RxgNKkqoalt3mqRo9J8
ResNet18_GCP_LRadju 74.86 1LAX4EKZW2SXx_TiOOYQNmQ tci6 1BnO-zTz_L3zqO9bW4c-YE9Ao0d2qDZuD
ResNet34_GAP_LRnorm 74.19 17hwLgIaRtsnziS3qj83MwQ 1yp6 1V-4n8sxtCmp5iiWws1kBhYXFXsG6fVrX
ResNet34_GAP_LRfast 69.88 1cm40DbKD9BtJGbo4vEH3_g nmni 1c5RxEeipeWt07OlOT1BYWRJhf3XcEDA9
ResNet34_GAP_LRadju 73.13 1gAbzSqi_1_1FMJJ9t2c89w 5eyk 1-NgzG9zN5nY0jJpV07yKtfKIJ0CpQCkb
ResNet34_GCP_LRnorm 77.11 1T4lKenLGKbrHZrt3cOtDPg bn2d 15k8roxdmpq8iwasi6Piysh8HK4vlsG_m
ResNet34_GCP_LRfast 73.88 1EMGIUc60SwWDxyVyMWO1XQ wmky 1I145XHsrAjfuseIdCqesxK825-FrA6Zj
ResNet34_GCP_LRadju 76.81 1T2_M2q-WJ8klUomxA0olcA 4w21 1C3m6uicOuYoWiqRrt8ZUjgloa6iSLw-Y
ResNet50_GAP_LRnorm 76.02 1iaDm9ZNiyeANfe6Zzi-PFg 3r9p 17MyDHCKS8wla8GZvwSbfNfQAJ12KofV_
ResNet50_GAP_LRfast 71.08 1en48JRo9DaqAAC0nljR-3Q reub 10yk2wFB_q1VICyTu4CrjWUv-_fnV9Dt2
ResNet50_GAP_LRadju 75.32 10ZQ4XAnnhsUNazzt_2bvgg 5tdw 1PMNcVO_CNR2JUgXRhBCrqSg9Btj4m4cO
ResNet50_GCP_LRnorm 78.56 1gZ6_KMqfUBAjq913zKOPkw e7iy 1TmnusKSArjKTTb28cnw2OzrUVc_DAi98
ResNet50_GCP_LRfast 75.31 1Qg-_jms3AChBw9ZXwl31Qw 3j8e 1at9nxW658Yeh-jqCUc544ex4_j_iA2VJ
ResNet50_GCP_LRadju 78.03 1PGLAKzNuQRkqtjygYov90w n4vq 1t2j5LNLr51TZ3O1QtYmgRyPe8zDSg9yr
ResNet50_GCP_LRnorm_128 78.02 1FZV-_8lHFzK4_j8_AZna3g 976a 1taR2AvNC32YnF9ge4To30JUVa4SNq62g
ResNet50_GCP_LRadju_128 77.72 1GxiLO3RTBZoV-3IfIZnupQ xf7g 1t6r70Vx4J7ev6Lhm0SAalptyF3gQ_5Qk
ResNet101_GAP_LRnorm 77.67 19ptqTR4yZLDSotDimuUzbA 3u9a 1N-Wu6VAiOHfD4DqbCm-IfupkxZWjUvTc
ResNet101_GAP_LRfast 73.13 1hlqHfkfbJH69PBxiq-kx3Q 11g2 1uXVyPGOTgBxwAl1gowyuCgcFRqXT3G0Y
ResNet101_GAP_LRadju 77.53 17Aw2IWHyJ9TwqTui1dpGkg nikb 16JhBYDeQI6-kKAAILFDCfeoPt5nUVAv3
ResNet101_GCP_LRnorm 79.47 1UVxS_HRrcFUZnYXKEoBU6A kr4s 1y8oI2IodJuG7R_gIdrYoXSTPafmszwMh
ResNet101_GCP_LRfast 76.38 1ubrAmWAIXKc_Yhia2jUeRA iy77 1iLAV7Hu3jWTRINJ6wRumqkReZEpqubHr
ResNet101_GCP_LRadju 79.18 1GzT6IgwdhkFVwSfisl7j_w ytfb 17lNCi6r8CXHM6-Z8Q7YckRReeZXsRQwQ
"""


def _gcp_optimization(row: str) -> Entry:
  model, top1, baidu, code, drive = row.split()
  net, pooling, _, *dim = model.split("_")
  arch = {"MobileNetV2": "mobilenet_v2", "ShuffleNetV2": "shufflenet_v2"}.get(
      net, f"resnet{net[6:]}")
  head, dim = ("gap", None) if pooling == "GAP" else ("isqrt", int(dim[0]) if dim else 256)
  return Entry(f"gcp-optimization/{model.lower()}", ("gcp-optimization",), model,
               _resnet(arch, head, dim), _count(arch, head, dim), float(top1),
               (_drive(drive),), (f"https://pan.baidu.com/s/{baidu} (extract code {code})",))


ENTRIES += [_gcp_optimization(row) for row in _GCP_OPTIMIZATION.strip().splitlines()]

# mingzeG/DropCov README.md, "Main Results on ImageNet with Pretrained Models". The ResNets
# are CNNs/models/ResNet_ACD.py's, which reduces to 256 channels (the README's parameter
# column, 29.6 / 32.0 / 51.0 M, is that of a reduction to 128); DeiT-S+DropCov is
# Transformers/src/transformer.py's Deit_drop_Small, the DeiT-S baseline timm's DeiT-S,
# which gcp.convert reads as vit_s16 (the same network: DeiT-S is ViT-S/16).
ENTRIES += [
    Entry(f"dropcov/{arch}", ("dropcov",), f"ResNet-{arch[6:]}+DropCov(Ours)",
          _resnet(arch, "dropcov", 256), _count(arch, "dropcov", 256), top1,
          (_drive_file(file_id),))
    for arch, top1, file_id in (("resnet34", 76.81, "1rAK-u85tYxhodTDBV_QuIjXFlxz7Ul2t"),
                                ("resnet50", 78.19, "1235CUjS7va_h6weWQeAwFZ_J1iOqmaDm"),
                                ("resnet101", 79.51, "1KJyAUXu11GFz6uLS1kGyZc1JM-pi-E37"))
] + [
    Entry("dropcov/deit_s16", ("dropcov",), "DeiT-S",
          {"arch": "vit_s16", "head": "linear", "num_classes": 1000}, 22_050_664, 79.8,
          (_drive_file("1Tmz1YxfwLFUDZTovjb--pGgFMvZmXyDq"),)),
    Entry("dropcov/deit_s16_dropcov", ("dropcov",), "DeiT-S+DropCov(Ours)",
          {"arch": "deit_s16", "stem": "conv", "head": "dropcov", "num_classes": 1000,
           "cov_heads": 6, "cov_head_dim": 24}, 25_586_576, 82.4,
          (_drive_file("1Ziw9dRvainxIQlq_9htZ58inr6nRsPmx"),)),
    # transformer.py's T2T_ViT_14 (train_T2T_ViT_Drop_14.sh): its DeiT on the conv stem at
    # T2T-ViT-14's size, the only T2T network the release's code builds.
    Entry("dropcov/t2t_vit_14_dropcov", ("dropcov",), "T2T-ViT-14-S+DropCov(Ours)",
          {"arch": "dropcov_t2t_vit_14", "stem": "conv", "head": "dropcov",
           "num_classes": 1000, "cov_heads": 6, "cov_head_dim": 24}, 24_999_056, 82.7,
          (_drive_file("1KQmJ7cZjDPy4WOmOGAPGr9wbBWaQGNPo"),)),
]

# mingzeG/Moment-Probing README.md, "checkpoint list (ViT-B/16 SUP)": ImageNet-21k ViT-B/16
# tuned on ImageNet-1k, saved by timm's CheckpointSaver (train.py).
_MP_HEAD = {"num_classes": 1000, "proj_dim": 512, "num_groups": 4}
ENTRIES += [
    Entry(f"mp/vit_b16_{label}", ("mp",), method, {"arch": "vit_b16", **head}, params, top1,
          (_drive_file(file_id, share),))
    for label, method, head, params, top1, file_id, share in (
        ("linear", "Linear Probing (LP)", {"head": "linear", "num_classes": 1000},
         86_567_656, 82.04, "1ValKQH8X0Z-IhzO7gf26yioN7fkRAQ5o", "sharing"),
        ("full", "Full Finetuning (FT)", {"head": "linear", "num_classes": 1000},
         86_567_656, 83.58, "1VrR-s8ztfFMZn8_0ruL-BFl-WOBFWqg_", "sharing"),
        ("mp", "Moment Probing (MP)", {"head": "mp", **_MP_HEAD}, 89_845_802, 83.15,
         "1xEVfOp9F22p51PlbYACM3pKeizb0dizx", "sharing"),
        ("mp_plus", "Moment Probing+ (MP+)", {"head": "mp_plus", **_MP_HEAD, "psrp_rank": 16},
         90_288_170, 83.62, "1LybaEmdXqg6niz5hLg14Xn1qrZWFFbBA", "share_link"))
]

REGISTRY: dict[str, Entry] = {e.name: e for e in ENTRIES}
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*/[a-z0-9][a-z0-9_.+-]*$")
