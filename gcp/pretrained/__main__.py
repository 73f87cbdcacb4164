"""The authors' published checkpoints by name.

  python -m gcp.pretrained list                          # the registry, as a Markdown table
  python -m gcp.pretrained download fast-mpn-cov/resnet50 [--force]
  python -m gcp.pretrained import fast-mpn-cov/resnet50 ~/Downloads/mpncovresnet50.pth

`download` fetches the file (Google Drive links need gdown: pip install 'gcp[pretrained]'),
checks it, converts it and keeps both in the cache (`$GCP_CACHE/pretrained`, default
`~/.cache/gcp/pretrained`); nothing is fetched again once it is there. `import` registers a
file downloaded by hand (e.g. from a release's Baidu mirror) after the same checks. Either
way the model is then `--config.init_from=pretrained:NAME` for fine-tuning and
`--mode=eval`, and `gcp.pretrained.load(NAME)` in Python.
"""
import argparse
import sys

from gcp import checkpoint, pretrained, runtime
from gcp.convert.__main__ import evaluation_hint


def format_list() -> str:
  """The registry as the Markdown table README.md shows."""
  rows = ["| name | model | params | top-1 (%) | release |", "|---|---|---|---|---|"]
  for e in pretrained.ENTRIES:
    releases = ", ".join(pretrained.RELEASES[r].repo for r in e.releases)
    rows.append(f"| `{e.name}` | {e.description} | {e.params:,} | {e.top1:g} | "
                f"{releases} ({e.release.framework}) |")
  return "\n".join(rows)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m gcp.pretrained",
                                   description=__doc__.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter,
                                   epilog=__doc__.split("\n\n", 1)[1])
  commands = parser.add_subparsers(dest="command", required=True)
  commands.add_parser("list", help="the published checkpoints: name, model, parameters, "
                      "published top-1, release")
  download = commands.add_parser("download", help="fetch, check and convert a model into "
                                 "the cache")
  download.add_argument("name")
  download.add_argument("--force", action="store_true", help="fetch it again")
  imported = commands.add_parser("import", help="register a file downloaded by hand")
  imported.add_argument("name")
  imported.add_argument("file")
  args = parser.parse_args(argv)
  if args.command == "list":
    print(format_list())
    return 0
  try:
    directory = (pretrained.checkpoint_dir(args.name, force=args.force)
                 if args.command == "download" else
                 pretrained.import_file(args.name, args.file))
  except pretrained.PretrainedError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  spec = checkpoint.load_model_spec(directory)
  print(f"{args.name}: converted checkpoint {directory}\n"
        f"{evaluation_hint(spec, f'{pretrained.PREFIX}:{args.name}')}")
  return 0


if __name__ == "__main__":
  runtime.exit_quickly(main())
