"""The TPAMI 2023 claims about global covariance pooling, measured in one command
(`gcp.analysis.study`):

  python -m gcp.study configs/study.py --workdir runs/study            # 3 seeds x 3 heads
  python -m gcp.study configs/study.py --workdir runs/study_q --quick   # one seed, 2 epochs
  python -m gcp.study configs/study.py:imagenet --workdir runs/study_in --config.seeds=2

Writes study.json, study.md and four figures into the workdir (a study resumes from it)
and prints the claims table. `--config.KEY=VALUE` overrides any key of the study config.
"""
import os
import sys

# As main.py: one OpenBLAS thread for jaxlib's CPU eigh (set before it loads), and a quiet
# console (before TensorFlow loads).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from gcp import reporting, runtime  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv) -> int:
  from absl import flags

  from gcp import train
  from gcp.analysis import study as study_lib
  if len(argv) > 1:
    print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
    return 2
  quick = flags.FLAGS["quick"].value
  workdir = flags.FLAGS["workdir"].value or os.path.join(
      "runs", "study_quick" if quick else "study")
  command = " ".join(["python -m gcp.study", *sys.argv[1:]])
  try:
    summary = study_lib.run_study(flags.FLAGS["config"].value, workdir, quick=quick,
                                  command=command)
  except train.Interrupted as e:
    print(e, file=sys.stderr)
    return 128 + e.signum
  except train.RUN_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(study_lib.markdown(summary, command).split("## Every measurement")[0].rstrip())
  return 0


def run(argv: list[str]) -> None:
  """Parses `argv` (the config file may come first, without `--config=`) and runs."""
  from absl import app, flags
  from ml_collections import config_flags
  reporting.quiet_console(argv)
  sys.path.insert(0, ROOT)  # the study configs import configs/ (as main.py's do)
  # No default here: a default file would define the override flags (--config.KEY) once
  # more when --config is parsed, which absl rejects. The default is given as an argument.
  config_flags.DEFINE_config_file("config", None,
                                  "Study config file (default: configs/study.py; "
                                  "configs/study.py:SETTING for a setting).")
  flags.DEFINE_string("workdir", None, "Where the study's runs and results go (default: "
                      "runs/study, or runs/study_quick with --quick); a study resumes from it.")
  flags.DEFINE_bool("quick", False, "One seed, a short schedule, one corruption severity: "
                    "a smoke test of the whole study.")
  if len(argv) > 1 and not argv[1].startswith("-"):
    argv = [argv[0], f"--config={argv[1]}", *argv[2:]]
  elif not any(a == "--config" or a.startswith("--config=") for a in argv):
    argv = [argv[0], f"--config={os.path.join(ROOT, 'configs', 'study.py')}", *argv[1:]]
  app.run(lambda rest: runtime.exit_quickly(main(rest)), argv=argv)


if __name__ == "__main__":
  run(sys.argv)
