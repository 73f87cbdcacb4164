"""Model card: size and cost of every released configuration beside the published numbers.

  python -m gcp.model_info [--size 224] [--no-xla]

Multiply-adds are counted two ways on the traced forward pass at the model's input size:
`GMACs` counts every conv and matmul multiply-add as torchvision-style counters do
(padding positions included, elementwise ops excluded); `XLA GMACs` is half the flops of
XLA's cost analysis of the compiled forward, which skips the products with padding zeros
and adds the elementwise work. The iSQRT head is counted with its Newton-Schulz
(matmul) evaluation. A second table gives the transformers' total and trained parameters
(Moment Probing trains the head, and PSRP for MP+, of a frozen ViT).
"""
import argparse
import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from gcp.models import create_model

# (configuration, arch, head, reduction_dim, published params, published GMACs,
#  published top-1 %, source), all from SPEC §2 ("" where it gives no number) but the
# ShuffleNetV2 row, from GCP_Optimization's README (which gives no size or cost), and the
# other backbones fast-MPN-COV's Basemodel wraps, from its code (one recipe for all,
# configs/fast_mpn_cov.py; numbers published for ResNet-50/101 and VGG-16-BN only).
# Published parameters are the releases' exact counts, with the papers' rounding in
# brackets.
RELEASED = [
    ("ResNet-18 GAP", "resnet18", "gap", None, "11,689,512", "", "70.53", "MindSpore"),
    ("ResNet-18 iSQRT d=128", "resnet18", "isqrt", 128, "19,499,304 (19.6M)", "", "74.64",
     "MindSpore"),
    ("ResNet-18 DropCov d=128", "resnet18", "dropcov", 128, "19,499,307 (19.6M)", "", "73.8",
     "MindSpore"),
    ("ResNet-34 GAP", "resnet34", "gap", None, "21,797,672", "", "73.68", "MindSpore"),
    ("ResNet-34 iSQRT d=128", "resnet34", "isqrt", 128, "29,607,464 (29.7M)", "", "76.27",
     "MindSpore"),
    ("ResNet-34 DropCov d=128", "resnet34", "dropcov", 128, "29,607,467 (29.7M)", "", "76.13",
     "MindSpore"),
    ("ResNet-50 GAP", "resnet50", "gap", None, "25,557,032", "4.1", "76.07", "MindSpore"),
    ("ResNet-50 iSQRT d=128", "resnet50", "isqrt", 128, "32,027,432 (32.3M)", "6.30",
     "77.71", "MindSpore"),
    ("ResNet-50 DropCov d=128", "resnet50", "dropcov", 128, "32,027,435 (32.0M)", "",
     "77.77", "MindSpore"),
    ("ResNet-101 GAP", "resnet101", "gap", None, "44,549,160", "", "", ""),
    ("ResNet-101 iSQRT d=128", "resnet101", "isqrt", 128, "51,019,560", "", "", ""),
    ("ResNet-18 iSQRT d=256", "resnet18", "isqrt", 256, "44,205,096", "", "75.48",
     "GCP_Optimization"),
    ("ResNet-34 iSQRT d=256", "resnet34", "isqrt", 256, "54,313,256", "", "77.11",
     "GCP_Optimization"),
    ("ResNet-50 iSQRT d=256", "resnet50", "isqrt", 256, "56,929,832", "", "77.86 (78.56)",
     "fast-MPN-COV (GCP_Optimization)"),
    ("ResNet-101 iSQRT d=256", "resnet101", "isqrt", 256, "75,921,960", "", "78.79 (79.47)",
     "fast-MPN-COV (GCP_Optimization)"),
    ("AlexNet iSQRT d=256", "alexnet", "isqrt", 256, "", "", "", "fast-MPN-COV"),
    ("VGG-11 iSQRT d=256", "vgg11", "isqrt", 256, "", "", "", "fast-MPN-COV"),
    ("VGG-11-BN iSQRT d=256", "vgg11_bn", "isqrt", 256, "", "", "", "fast-MPN-COV"),
    ("VGG-13 iSQRT d=256", "vgg13", "isqrt", 256, "", "", "", "fast-MPN-COV"),
    ("VGG-13-BN iSQRT d=256", "vgg13_bn", "isqrt", 256, "", "", "", "fast-MPN-COV"),
    ("VGG-16 iSQRT d=256", "vgg16", "isqrt", 256, "", "", "", "fast-MPN-COV"),
    ("VGG-16-BN iSQRT d=256", "vgg16_bn", "isqrt", 256, "", "", "73.45 (76.02)",
     "fast-MPN-COV"),
    ("VGG-19 iSQRT d=256", "vgg19", "isqrt", 256, "", "", "", "fast-MPN-COV"),
    ("VGG-19-BN iSQRT d=256", "vgg19_bn", "isqrt", 256, "", "", "", "fast-MPN-COV"),
    ("DenseNet-121 iSQRT d=256", "densenet121", "isqrt", 256, "", "", "", "fast-MPN-COV"),
    ("DenseNet-161 iSQRT d=256", "densenet161", "isqrt", 256, "", "", "", "fast-MPN-COV"),
    ("DenseNet-169 iSQRT d=256", "densenet169", "isqrt", 256, "", "", "", "fast-MPN-COV"),
    ("DenseNet-201 iSQRT d=256", "densenet201", "isqrt", 256, "", "", "", "fast-MPN-COV"),
    ("Inception-v3 iSQRT d=256", "inception_v3", "isqrt", 256, "", "", "", "fast-MPN-COV"),
    ("MobileNetV2 iSQRT d=256", "mobilenet_v2", "isqrt", 256, "", "", "74.39",
     "GCP_Optimization"),
    ("ShuffleNetV2 1.0x iSQRT d=256", "shufflenet_v2", "isqrt", 256, "", "", "71.83",
     "GCP_Optimization"),
]


# Transformers and the other backbones Moment Probing probes, with heads that hold their
# classifier (SPEC §4): (configuration, arch, head, trained parameters
# (`config.trainable_params`), published trained params, published top-1 %, source, further
# `create_model` options). The papers' counts omit MP's 768 -> 512 projection (393,728
# parameters). DropCov's DeiTs train from scratch on the release's conv token stem; its
# README cuts 24,999,056 to 24.9M.
_DROPCOV_DEIT = {"stem": "conv"}
TRANSFORMERS = [
    ("ViT-B/16 linear probe", "vit_b16", "linear", "^head/", "0.77M", "82.04",
     "Moment Probing", {}),
    ("ViT-B/16 MP", "vit_b16", "mp", "^head/", "3.65M", "83.15", "Moment Probing", {}),
    ("ViT-B/16 MP+", "vit_b16", "mp_plus", "^head/|/psrp/", "4.10M", "83.62",
     "Moment Probing", {}),
    ("ViT-B/16 full fine-tuning", "vit_b16", "linear", "", "86.57M", "83.58",
     "Moment Probing", {}),
    ("Swin-B linear probe", "swin_b", "linear", "^head/", "", "", "Moment Probing", {}),
    ("Swin-B MP", "swin_b", "mp", "^head/", "", "", "Moment Probing", {}),
    ("Swin-B MP+", "swin_b", "mp_plus", "^head/|/psrp/", "", "", "Moment Probing", {}),
    ("ConvNeXt-B linear probe", "convnext_b", "linear", "^head/", "", "", "Moment Probing",
     {}),
    ("ConvNeXt-B MP", "convnext_b", "mp", "^head/", "", "", "Moment Probing", {}),
    ("ConvNeXt-B MP+", "convnext_b", "mp_plus", "^head/|/psrp/", "", "", "Moment Probing",
     {}),
    ("DeiT-S", "deit_s16", "linear", "", "22.1M", "79.8", "DropCov", {}),
    ("DeiT-S DropCov", "deit_s16", "dropcov", "", "25.6M", "82.4", "DropCov", _DROPCOV_DEIT),
    ("DeiT-T (240 wide) DropCov", "dropcov_deit_t", "dropcov", "", "", "", "DropCov",
     {**_DROPCOV_DEIT, "cov_head_dim": 14}),
    ("DeiT-B DropCov", "deit_b16", "dropcov", "", "", "", "DropCov",
     {**_DROPCOV_DEIT, "cov_heads": 12}),
    ("T2T-ViT-14 size DropCov", "dropcov_t2t_vit_14", "dropcov", "", "24.9M", "82.7",
     "DropCov", _DROPCOV_DEIT),
]


def _conv_macs(eqn) -> int:
  out = eqn.outvars[0].aval.shape
  kernel = eqn.invars[1].aval.shape
  out_channels = out[eqn.params["dimension_numbers"].out_spec[1]]
  return math.prod(out) * math.prod(kernel) // out_channels


def _dot_macs(eqn) -> int:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


def _count(jaxpr, repeat: int = 1) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      total += _conv_macs(eqn)
    elif eqn.primitive.name == "dot_general":
      total += _dot_macs(eqn)
    length = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += length * _count(sub)
  return total * repeat


def _abstract(model, size: int):
  images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(images.shape)))
  return variables, images


def count_macs(model, size: int = 224) -> int:
  """Conv and matmul multiply-adds of one `size` x `size` image's forward pass."""
  variables, images = _abstract(model, size)
  return _count(jax.make_jaxpr(lambda v, x: model.apply(v, x))(variables, images).jaxpr)


def xla_macs(model, size: int = 224) -> float:
  """Half the flops of XLA's cost analysis of the compiled forward (one image)."""
  variables, images = _abstract(model, size)
  compiled = jax.jit(lambda v, x: model.apply(v, x)).lower(variables, images).compile()
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return analysis["flops"] / 2


def card_row(entry: tuple, size: int = 224, with_xla: bool = True) -> dict:
  """The model card line of one RELEASED entry (1000 classes, `size` px input)."""
  label, arch, head, dim, p_params, p_macs, p_top1, source = entry
  model = create_model(arch, head=head, num_classes=1000, reduction_dim=dim,
                       isqrt_method="newton_schulz")
  variables, images = _abstract(model, size)
  features = jax.eval_shape(
      lambda v, x: model.apply(v, x, capture_intermediates=True,
                               mutable=["intermediates"])[1], variables, images)
  return {
      "configuration": label,
      "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"])),
      "GMACs": count_macs(model, size) / 1e9,
      "XLA GMACs": xla_macs(model, size) / 1e9 if with_xla else math.nan,
      "representation": features["intermediates"]["head"]["__call__"][0].shape[-1],
      "published params": p_params, "published GMACs": p_macs,
      "published top-1": p_top1, "source": source}


def transformer_row(entry: tuple, size: int = 224) -> dict:
  """The model card line of one TRANSFORMERS entry (1000 classes, `size` px input)."""
  from gcp.train import split_trainable
  label, arch, head, trainable, p_trained, p_top1, source, options = entry
  model = create_model(arch, head=head, num_classes=1000, **options)
  params = _abstract(model, size)[0]["params"]
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa
  return {"configuration": label, "params": count(params),
          "trained": count(split_trainable(params, trainable)[0]),
          "GMACs": count_macs(model, size) / 1e9, "published trained params": p_trained,
          "published top-1": p_top1, "source": source}


def format_transformer_table(rows: list[dict]) -> str:
  """A markdown table of `transformer_row` results."""
  lines = ["| configuration | params | trained | GMACs | published trained params "
           "| published top-1 (%) | source |", "|" + "---|" * 7]
  for r in rows:
    lines.append(f"| {r['configuration']} | {r['params']:,} | {r['trained']:,} | "
                 f"{r['GMACs']:.2f} | {r['published trained params']} | "
                 f"{r['published top-1']} | {r['source']} |")
  return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
  """A markdown table of `card_row` results."""
  header = ("| configuration | params | GMACs | XLA GMACs | representation | published params "
            "| published GMACs | published top-1 (%) | source |")
  lines = [header, "|" + "---|" * 9]
  for r in rows:
    lines.append(f"| {r['configuration']} | {r['params']:,} | {r['GMACs']:.2f} | "
                 f"{r['XLA GMACs']:.2f} | {r['representation']:,} | {r['published params']} | "
                 f"{r['published GMACs']} | {r['published top-1']} | {r['source']} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description="Size and cost of the released GCP models.")
  parser.add_argument("--size", type=int, default=224, help="input resolution")
  parser.add_argument("--no-xla", action="store_true", help="skip compiling for XLA's count")
  args = parser.parse_args()
  from tqdm import tqdm
  rows = [card_row(entry, args.size, not args.no_xla) for entry in tqdm(RELEASED, "models")]
  print(format_table(rows))
  print()
  print(format_transformer_table([transformer_row(e, args.size)
                                  for e in tqdm(TRANSFORMERS, "transformers")]))


if __name__ == "__main__":
  main()
