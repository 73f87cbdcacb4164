"""gcp.runtime: the default XLA CPU flags. (Its persistent compilation cache: a second launch
compiles nothing, tests/test_train.py::test_killed_run_resumes_to_the_same_parameters.)"""
import gc
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp import runtime

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


def test_a_quick_exit_keeps_the_code_and_leaves_the_objects_to_the_os():
  gc_frozen = gc.get_freeze_count()
  try:
    with pytest.raises(SystemExit) as exited:
      runtime.exit_quickly(3)
    assert exited.value.code == 3
    assert gc.get_freeze_count() > gc_frozen  # the exit's collection has nothing to visit
  finally:
    gc.unfreeze()
