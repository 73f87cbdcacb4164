"""benchmarks/gpu.py --smoke: every path runs (here on the simulated CPU devices) and
reports every row with positive finite numbers."""
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _positive(row: dict, *keys: str) -> None:
  for key in keys:
    assert math.isfinite(row[key]) and row[key] > 0, (key, row)


def test_gpu_benchmark_smoke(tmp_path):
  out = tmp_path / "gpu.json"
  subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu.py"), "--smoke",
                  "--json", str(out)], check=True, cwd=ROOT, env=dict(os.environ),
                 capture_output=True, text=True, timeout=600)
  report = json.loads(out.read_text())

  assert report["header"]["smoke"] and report["header"]["device_count"] >= 1
  models = {"ResNet-18 GAP", "ResNet-18 iSQRT d=16"}
  expected = {(model, dtype) for model in models for dtype in ("bfloat16", "float32")}
  training = {(r["model"], r["dtype"]): r for r in report["training"]}
  assert set(training) == expected and len(report["training"]) == len(expected)
  for row in training.values():
    assert "error" not in row, row
    _positive(row, "images_per_s", "step_ms", "compile_s")
    assert row["global_batch"] == 2 * report["header"]["device_count"]

  assert {r["method"] for r in report["meta_layer"]} == {"newton_schulz", "eigh"}
  for row in report["meta_layer"]:
    assert (row["B"], row["C"], row["M"]) == (2, 16, report["header"]["head_samples_M"])
    _positive(row, "ms", "images_per_s", "xla_bytes", "share_of_bfloat16_step",
              "share_of_float32_step")

  _positive(report["pipeline"], "images_per_s", "images_per_s_per_core", "cores_busy",
            "cores_needed", "fastest_training_images_per_s")

  memory = {(r["model"], r["dtype"]): r for r in report["memory"]}
  assert set(memory) == expected
  for row in memory.values():
    _positive(row, "bytes", "xla_bytes")
    assert row["source"]
