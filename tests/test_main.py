"""main.py as a user runs it: the default experiment, and a mistyped override."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, timeout=600):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU, as on a laptop
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], env=env,
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_default_experiment_reaches_97_percent(data_dir, tmp_path):
  # The README's promise: `python main.py` trains iSQRT-COV on the embedded digits to >= 97%.
  result = run_main(f"--workdir={tmp_path}", f"--config.data.data_dir={data_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"workdir: {tmp_path}" in result.stdout
  metrics = json.loads(result.stdout[result.stdout.index("{"):])
  assert metrics["eval_examples"] == 1000
  assert metrics["eval_top1"] >= 0.97, metrics
  assert (tmp_path / "curves.png").exists()

  # --mode=eval scores the same (final) checkpoint again and writes the result.
  result = run_main("--mode=eval", f"--workdir={tmp_path}", f"--config.data.data_dir={data_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  scored = json.loads(result.stdout[result.stdout.index("{"):])
  assert scored["eval_top1"] == metrics["eval_top1"] and scored["eval_examples"] == 1000
  assert json.load(open(tmp_path / "eval_test.json")) == scored


def test_mistyped_override_names_the_key():
  result = run_main("--config.model.hed=gap", timeout=120)
  assert result.returncode != 0
  assert ("unknown config key --config.model.hed (did you mean --config.model.head?)"
          in result.stderr)
