"""Convert the authors' checkpoints into ours, or export ours into a release's layout.

  python -m gcp.convert mpncovresnet50-15991845.pth converted/mpncovresnet50
  python -m gcp.convert resnet_7-100_5004.ckpt converted/r50_dropcov_ms   # MindSpore
  python -m gcp.convert model_best.pth.tar converted/deit_s_dropcov --weights state_dict
  python -m gcp.convert --export runs/my_run my_run.pth                   # ours -> PyTorch
  python -m gcp.convert --export converted/r50_dropcov_ms r50.ckpt        # -> MindSpore
  python -m gcp.convert --export runs/cub_r50 cub_r50.pth --layout fastmpn_resnet_finetune
  python -m gcp.convert B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz \\
      converted/vit_b16_mp --head mp --option num_classes=1000  # AugReg ViT, fresh MP head

Layouts: each release's network names the tensors its own way. Import tells the layout
from a file's names; export writes the layout the checkpoint was converted from (recorded
in its source.json), else the model's own release's, or the one --layout names. The file
then loads into the release's network with load_state_dict(strict=True) (MindSpore:
load_param_into_net). Sizes are the model's; a layout fixes the names and array layouts.
{layouts}

Weights: timm's training scripts (Moment Probing, DropCov's transformers) save the trained
weights (state_dict) and their moving average (state_dict_ema) and evaluate the EMA. From
such a file the EMA weights are converted, and the console says so; --weights state_dict
converts the others. PyTorch files are read with torch.load(weights_only=True), which
accepts tensors, containers, numbers and argparse.Namespace (timm's saved arguments); a
file pickling other objects is refused with their types and how to extract its weights.

A converted directory is a checkpoint: evaluate it with `python main.py --mode=eval
--config.init_from=DIR` (after converting, the command for the model's recipe is printed)
or fine-tune from it with --config.init_from=DIR.
"""
import argparse
import json
import os
import sys

from gcp import convert, runtime
from gcp.convert import layouts, pytorch

# Published recipes a converted model evaluates with: (config setting, archs, heads,
# reduction_dim, classes). Evaluation builds the network saved with the checkpoint; the
# recipe gives the data set and its preprocessing, and fine-tuning from it fits too.
_IMAGENET_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
_FINEGRAINED = ("resnet50", "resnet101", "vgg16_bn")
_RECIPES = (
    ("configs/imagenet.py:{arch},{head}", _IMAGENET_RESNETS, ("isqrt", "dropcov"), 128, 1000),
    ("configs/imagenet.py:{arch},gap", _IMAGENET_RESNETS, ("gap",), None, 1000),
    ("configs/fast_mpn_cov.py:{arch}", ("resnet50", "resnet101", "vgg16_bn"), ("isqrt",),
     256, 1000),
    ("configs/gcp_optimization.py:{arch},LRnorm",
     _IMAGENET_RESNETS + ("mobilenet_v2", "shufflenet_v2"), ("isqrt",), 256, 1000),
    # The other backbones fast-MPN-COV trains, unpublished, with its one recipe.
    ("configs/fast_mpn_cov.py:{arch}", layouts.FASTMPN_ARCHS, ("isqrt",), 256, 1000),
    ("configs/finegrained.py:cub,{arch}", _FINEGRAINED, ("isqrt",), 256, 200),
    ("configs/finegrained.py:cars,{arch}", _FINEGRAINED, ("isqrt",), 256, 196),
    ("configs/finegrained.py:aircraft,{arch}", _FINEGRAINED, ("isqrt",), 256, 100),
    ("configs/moment_probing.py:imagenet,{head}", ("vit_b16",), ("linear", "mp", "mp_plus"),
     None, 1000),
    ("configs/moment_probing.py:imagenet,{head},{arch}", ("swin_b", "convnext_b"),
     ("linear", "mp", "mp_plus"), None, 1000),
    ("configs/deit_dropcov.py:{arch},{head}", ("deit_s16",), ("linear", "dropcov"), None,
     1000),
    ("configs/deit_dropcov.py:{arch},dropcov", ("dropcov_deit_t", "deit_b16",
                                                "dropcov_t2t_vit_14"), ("dropcov",), None, 1000),
)
# 1000-class models without a recipe of their own: the ImageNet recipe of their family.
_FAMILY_RECIPE = {"vit_b16": "configs/moment_probing.py:imagenet,linear",
                  "vit_s16": "configs/moment_probing.py:imagenet,linear",
                  "deit_s16": "configs/deit_dropcov.py:deit_s16,linear",
                  "deit_t16": "configs/deit_dropcov.py:deit_s16,linear",
                  "deit_b16": "configs/deit_dropcov.py:deit_s16,linear"}


def recipe(spec: dict) -> str | None:
  """The published recipe (`configs/<file>.py:<setting>`) of the model of `spec` (arch,
  head, reduction, classes); for a 1000-class model without one, its family's ImageNet
  recipe; None for other models."""
  for setting, archs, heads, reduction, classes in _RECIPES:
    if (spec["arch"] in archs and spec["head"] in heads and spec["num_classes"] == classes
        and (reduction is None or spec.get("reduction_dim") == reduction)):
      return setting.format(**spec)
  if spec["num_classes"] == 1000:
    return _FAMILY_RECIPE.get(spec["arch"], "configs/imagenet.py")
  return None


def evaluation_hint(spec: dict, out_dir: str) -> str:
  """The command that evaluates a converted checkpoint: with its recipe (`recipe`), else on
  a data set of its classes, preprocessed as its family is."""
  classes = spec["num_classes"]
  if spec.get("variant") == "mindspore" and classes == 1001:
    return ("this model keeps the MindSpore releases' 1001st class, which ImageNet has not: "
            "convert without --keep-extra-class to evaluate it on ImageNet")
  setting = recipe(spec)
  name = os.path.basename(os.path.normpath(out_dir))
  config = f" --config {setting}" if setting else ""
  command = (f"  python main.py --mode=eval{config} --workdir runs/eval_{name} \\\n"
             f"      --config.init_from={out_dir}")
  if setting:
    return f"evaluate:\n{command} --config.data.data_dir=/path/to/tensorflow_datasets"
  pp = convert.eval_preprocessing(spec)
  return (f"evaluate on a data set with its {classes} classes (no published recipe has "
          f"them), e.g. a folder with one subfolder per class:\n{command} \\\n"
          "      --config.data.name=folder:/path/to/data --config.data.eval_split=val \\\n"
          f"      --config.data.eval_pp=\"{pp}\"")


def _option(text: str):
  key, sep, value = text.partition("=")
  if not sep:
    raise argparse.ArgumentTypeError(f"--option takes key=value, got {text!r}")
  try:
    return key, json.loads(value)
  except json.JSONDecodeError:
    return key, value


def _parser() -> argparse.ArgumentParser:
  doc = __doc__.replace("{layouts}", "Layouts (--layout NAME):\n" + layouts.describe())
  parser = argparse.ArgumentParser(prog="python -m gcp.convert",
                                   description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=doc.split("\n\n", 1)[1])
  parser.add_argument("source", help="checkpoint file to convert (or, with --export, our "
                      "checkpoint directory or workdir)")
  parser.add_argument("output", help="output checkpoint directory (with --export: the file, "
                      ".pth for PyTorch layouts, .ckpt for MindSpore)")
  parser.add_argument("--export", action="store_true",
                      help="export ours into a release's layout")
  parser.add_argument("--layout", choices=tuple(layouts.LAYOUTS), metavar="NAME",
                      help="--export: the release layout to write (default: the one the "
                      "checkpoint was converted from, else the model's release's); see "
                      "the list below")
  parser.add_argument("--step", type=int, help="--export: which step (default: latest)")
  parser.add_argument("--format", choices=tuple(convert.FORMATS),
                      help="default: from the file name")
  parser.add_argument("--weights", choices=pytorch.WEIGHTS,
                      help="a PyTorch training checkpoint with both weight sets (timm's "
                      "state_dict and state_dict_ema): which to convert (default: ema, the "
                      "set the releases evaluate)")
  parser.add_argument("--arch", help="default: read off the tensors")
  parser.add_argument("--head", help="default: read off the tensors (dropcov, isqrt or "
                      "gap); give cov or eig for those models")
  parser.add_argument("--keep-extra-class", action="store_true",
                      help="MindSpore: keep the 1001st class (default: cut to 1000)")
  parser.add_argument("--option", type=_option, action="append", default=[],
                      metavar="KEY=VALUE", help="further create_model arguments")
  return parser


def main(argv=None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  if args.export and (args.weights or args.arch or args.head or args.option):
    parser.error("--weights, --arch, --head and --option apply to conversion, not --export")
  if args.layout and not args.export:
    parser.error("--layout chooses what --export writes; a file's layout is read off its "
                 "names")
  try:
    if args.export:
      layout, count = convert.export(args.source, args.output, layout=args.layout,
                                     step=args.step)
      print(f"wrote {count} tensors to {args.output} in the {layout.name} layout "
            f"({layout.description})")
      return 0
    converted = convert.convert_to_checkpoint(
        args.source, args.output, format=args.format, arch=args.arch, head=args.head,
        keep_extra_class=args.keep_extra_class, weights=args.weights, **dict(args.option))
  except (convert.ConversionError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  read = [f"layout {converted.layout}"] if converted.layout else []
  read += {"ema": ["the EMA weights (state_dict_ema)"],
           "state_dict": ["the trained weights (state_dict)"]}.get(converted.weights, [])
  print(f"converted {args.source} -> {args.output}"
        f"{' (' + ', '.join(read) + ')' if read else ''}\n"
        f"model: {json.dumps(converted.spec)}")
  print(evaluation_hint(converted.spec, args.output))
  return 0


if __name__ == "__main__":
  runtime.exit_quickly(main())
