"""Train and evaluate a GCP network: `python main.py --config configs/<exp>.py --workdir DIR`.

With no arguments it runs configs/default.py (the embedded digits demo) in runs/default.
Override any config value with --config.key=value, e.g. --config.model.head=gap.
`--mode=eval` scores the workdir's latest checkpoint (or --config.init_from=CHECKPOINT,
e.g. a converted release model) on the config's evaluation split.
"""
import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gcp import config as config_lib
from gcp import train

config_lib.check_overrides(sys.argv)
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py"),
    "Experiment config file (a get_config() module).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: train (resuming from the workdir) and evaluate; eval: "
                          "evaluate a checkpoint only.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, logs and plots go here; a run resumes from it. "
    "Default: runs/<config file name>.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # library INFO logs (Orbax, TFDS) on request only
    logging.set_verbosity(logging.WARNING)
  config_name = os.path.splitext(os.path.basename(flags.FLAGS["config"].config_filename))[0]
  workdir = _WORKDIR.value or os.path.join("runs", config_name)
  print(f"workdir: {os.path.abspath(workdir)}", flush=True)
  run = train.train_and_evaluate if _MODE.value == "train" else train.evaluate_checkpoint
  metrics = run(_CONFIG.value, workdir)
  print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
  app.run(main)
