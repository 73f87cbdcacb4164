"""Convert the authors' checkpoints, or export ours to PyTorch.

  python -m gcp.convert mpncovresnet50-15991845.pth converted/mpncovresnet50
  python -m gcp.convert resnet50_fastmpn.ckpt converted/r50_fastmpn      # MindSpore
  python -m gcp.convert --export runs/my_run my_run.pth                   # ours -> PyTorch
  python -m gcp.convert B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz \
      converted/vit_b16_mp --head mp --option num_classes=1000  # AugReg ViT, fresh MP head

The output directory is a checkpoint: evaluate it with
  python main.py --mode=eval --config configs/imagenet.py --config.init_from=DIR
or fine-tune from it with --config.init_from=DIR.
"""
import argparse
import json
import sys

from gcp import convert


def _option(text: str):
  key, sep, value = text.partition("=")
  if not sep:
    raise argparse.ArgumentTypeError(f"--option takes key=value, got {text!r}")
  try:
    return key, json.loads(value)
  except json.JSONDecodeError:
    return key, value


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m gcp.convert",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
  parser.add_argument("source", help="checkpoint file to convert (or, with --export, our "
                      "checkpoint directory or workdir)")
  parser.add_argument("output", help="output checkpoint directory (with --export: .pth file)")
  parser.add_argument("--export", action="store_true", help="export ours to PyTorch")
  parser.add_argument("--step", type=int, help="--export: which step (default: latest)")
  parser.add_argument("--format", choices=tuple(convert.FORMATS),
                      help="default: from the file name")
  parser.add_argument("--arch", help="default: read off the tensors")
  parser.add_argument("--head", help="default: read off the tensors (dropcov, isqrt or "
                      "gap); give cov or eig for those models")
  parser.add_argument("--keep-extra-class", action="store_true",
                      help="MindSpore: keep the 1001st class (default: cut to 1000)")
  parser.add_argument("--option", type=_option, action="append", default=[],
                      metavar="KEY=VALUE", help="further create_model arguments")
  args = parser.parse_args(argv)
  try:
    if args.export:
      count = convert.export_pytorch(args.source, args.output, args.step)
      print(f"wrote {count} tensors to {args.output}")
      return 0
    spec = convert.convert_to_checkpoint(
        args.source, args.output, format=args.format, arch=args.arch, head=args.head,
        keep_extra_class=args.keep_extra_class, **dict(args.option))
  except (convert.ConversionError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"converted {args.source} -> {args.output}\nmodel: {json.dumps(spec)}")
  print(f"evaluate: python main.py --mode=eval --config configs/imagenet.py "
        f"--config.init_from={args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
