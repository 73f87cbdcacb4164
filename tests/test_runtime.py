"""gcp.runtime: the default XLA CPU flags and the persistent compilation cache."""
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YNN, PRESET = runtime.CPU_COMPILER_OPTIONS


def test_cpu_options_unless_the_user_names_them():
  version = runtime.OPTIONS_JAXLIB + "2"
  assert runtime.default_compiler_options("cpu", version, "") == runtime.CPU_COMPILER_OPTIONS
  user = "--xla_force_host_platform_device_count=8 --xla_cpu_opt_preset=FAST_RUNTIME"
  assert set(runtime.default_compiler_options("cpu", version, user)) == {YNN}  # theirs wins
  assert runtime.default_compiler_options("gpu", version, "") == {}
  # Another jaxlib may not know these options: none are passed.
  assert runtime.default_compiler_options("cpu", "0.99.0", "") == {}


def test_added_xla_flags_never_override_the_users(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_opt_preset=FAST_RUNTIME")
  runtime.add_xla_flags("--xla_cpu_opt_preset=FAST_COMPILE", "--xla_dump_to=/tmp/x")
  assert os.environ["XLA_FLAGS"] == "--xla_cpu_opt_preset=FAST_RUNTIME --xla_dump_to=/tmp/x"
  monkeypatch.delenv("XLA_FLAGS")
  runtime.add_xla_flags("--xla_dump_to=/tmp/y")
  assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/y"


def test_the_options_compile_and_keep_the_numbers():
  # The enum spellings are what this jaxlib parses, and the result is float32-identical
  # in effect: a matmul-reduce chain against XLA's defaults.
  options = runtime.compiler_options()
  if not options:
    pytest.skip("no default compiler options for this jaxlib / backend")
  x = np.random.default_rng(0).normal(size=(64, 96)).astype(np.float32)
  f = lambda x: jnp.tanh(x @ x.T).sum(axis=0)  # noqa: E731
  np.testing.assert_allclose(jax.jit(f, compiler_options=options)(x), jax.jit(f)(x),
                             rtol=1e-5, atol=1e-5)


def test_a_ynn_failure_names_the_way_out():
  error = RuntimeError("INVALID_ARGUMENT: Instruction with unsupported layout in YNN fusion")
  if runtime.compiler_options():
    assert "GCP_XLA_DEFAULTS=0" in runtime.failure_hint(error)
  assert runtime.failure_hint(RuntimeError("out of memory")) is None


def _launch(workdir, cache, data_dir):
  env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
         "JAX_COMPILATION_CACHE_DIR": str(cache)}
  result = subprocess.run(
      [sys.executable, "main.py", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
       "--config.num_epochs=1", "--config.data.train_split=train[:256]",
       "--config.data.eval_split=test[:100]", "--config.eval_batch_size=100",
       "--config.model.width=4"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  line = next(line for line in result.stdout.splitlines()
              if line.startswith("compilation cache"))
  loaded, compiled, stored = map(int, re.search(
      r"(\d+) programs loaded, (\d+) compiled \((\d+) stored\)", line).groups())
  assert f"({cache})" in line
  return loaded, compiled, stored


def test_a_second_launch_of_an_experiment_compiles_nothing(data_dir, tmp_path):
  # Counted by JAX's own cache events (gcp.runtime.cache_counts), not timed.
  cache = tmp_path / "cache"
  loaded, compiled, stored = _launch(tmp_path / "first", cache, data_dir)
  assert loaded == 0 and compiled == stored > 0
  assert _launch(tmp_path / "second", cache, data_dir) == (stored, 0, 0)
