"""Train and evaluate a GCP network: `python main.py --config configs/<exp>.py --workdir DIR`.

With no arguments it runs configs/default.py (the embedded digits demo) in runs/default.
Override any config value with --config.key=value, e.g. --config.model.head=gap.
A workdir that holds a run is resumed (or evaluated) with the run's own config
(DIR/config.json and its recorded changes) unless --config is given; overrides apply on
top. `--mode=eval` scores the workdir's latest checkpoint (or
--config.init_from=CHECKPOINT, e.g. a converted release model) on the evaluation split.
"""
import json
import os
import sys

# jaxlib's CPU eigh (the isqrt / eig heads' CPU path) calls LAPACK once per small matrix,
# where OpenBLAS threads only add overhead (1.3-1.75x slower measured). Set before scipy's
# OpenBLAS loads; an explicit OPENBLAS_NUM_THREADS wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from gcp import reporting  # noqa: E402  (before TensorFlow loads: it sets up the console)

reporting.quiet_console(sys.argv)

import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from gcp import config as config_lib  # noqa: E402
from gcp import runtime, train, workdir as workdir_lib  # noqa: E402
from gcp.analysis.landscape import training_probe  # noqa: E402
import gcp.pretrained  # noqa: E402,F401  (registers --config.init_from=pretrained:NAME)

config_lib.check_overrides(sys.argv)
_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py"),
    "Experiment config file (a get_config() module).")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: train (resuming from the workdir) and evaluate; eval: "
                          "evaluate a checkpoint only.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Multi-host run: call jax.distributed.initialize() first. It finds "
    "the cluster itself under Slurm, Open MPI and on Cloud TPU; elsewhere give "
    "--coordinator_address, --num_processes and --process_id. Run on every host.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "--distributed: host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "--distributed: process count")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "--distributed: this process's index")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Checkpoints, logs and plots go here; a run resumes from it. "
    "Default: runs/<config file name>[_<setting>].")
_ALLOW_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "Resume even though the config changes the run's training "
    "trajectory (optimizer, schedule, data, model, seed, batch size); the changes are "
    "recorded in WORKDIR/config_history.jsonl. Without it such a resume stops and lists "
    "them.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _DISTRIBUTED.value:
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  # configs/imagenet.py:resnet50,isqrt -> runs/imagenet_resnet50_isqrt
  path, _, setting = flags.FLAGS["config"].config_filename.partition(":")
  config_name = "_".join([os.path.splitext(os.path.basename(path))[0],
                          *filter(None, setting.split(","))])
  workdir = _WORKDIR.value or os.path.join("runs", config_name)
  print(f"workdir: {os.path.abspath(workdir)}", flush=True)
  config = workdir_lib.resolve(workdir, _CONFIG.value, file_given=flags.FLAGS["config"].present,
                               overrides=config_lib.override_keys(sys.argv))
  try:
    if _MODE.value == "train":
      metrics = train.train_and_evaluate(config, workdir, probe=training_probe,
                                         allow_config_change=_ALLOW_CHANGE.value)
    else:
      metrics = train.evaluate_checkpoint(config, workdir)
  except train.Interrupted as e:  # Ctrl-C or SIGTERM: a checkpoint was saved first
    print(e, file=sys.stderr)
    sys.exit(128 + e.signum)
  except train.RUN_ERRORS as e:  # a problem with the config, data or checkpoint
    if flags.FLAGS["verbosity"].present:
      raise
    print(f"error: {e}\n(-v 1 shows the traceback)", file=sys.stderr)
    sys.exit(1)
  except jax.errors.JaxRuntimeError as e:
    hint = runtime.failure_hint(e)
    if not hint:
      raise
    print(f"error: {e}\n{hint}", file=sys.stderr)
    sys.exit(1)
  print(runtime.cache_summary())
  print(json.dumps(metrics, indent=2))
  runtime.spare_exit_collection()


if __name__ == "__main__":
  app.run(main)
