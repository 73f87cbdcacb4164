"""The quiet console: what native libraries write to file descriptor 2 passes a filter that
drops TensorFlow's banner and libjpeg's complaints about damaged JPEGs (the pipeline skips
and lists those images) and forwards everything else; `-v` turns the filter off."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = f"""
import os, sys
sys.path.insert(0, {ROOT!r})
from gcp import reporting
reporting.quiet_console(sys.argv)
import numpy as np
import tensorflow as tf
image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
data = tf.io.encode_jpeg(image).numpy()
corrupt = bytearray(data)
corrupt[len(data) // 2:len(data) // 2 + 50] = b"\\xff" * 50
for damaged in (data[:len(data) // 2], bytes(corrupt)):
  try:
    tf.io.decode_jpeg(damaged).numpy()
  except tf.errors.InvalidArgumentError:
    print("skipped", file=sys.stderr)
os.write(2, b"a native line that must pass\\n")
"""


def stderr_of(*args):
  env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "XLA_FLAGS")}
  return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True,
                        text=True, timeout=300, env=env).stderr


def test_native_noise_is_filtered_and_the_rest_passes():
  loud, quiet = stderr_of("-v", "1"), stderr_of()
  # Without the filter the damaged JPEGs are reported by libjpeg and TensorFlow itself.
  # (TensorFlow's oneDNN banner, also filtered, is printed on some CPUs only.)
  assert "Premature end of JPEG data" in loud and "Corrupt JPEG data" in loud
  assert sorted(quiet.splitlines()) == ["a native line that must pass", "skipped", "skipped"]
