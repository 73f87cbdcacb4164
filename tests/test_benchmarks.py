"""benchmarks/gpu.py --smoke: every path runs (here on the simulated CPU devices) and
reports every row with positive finite numbers. benchmarks/step_profile.py: thread-pool work
goes to the ops in flight, and both profilers' ops fall into the same categories."""
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


def _step_profile():
  if os.path.join(ROOT, "benchmarks") not in sys.path:
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import step_profile
  return step_profile


def _span(name, tid, ts, dur=0.0):
  return {"ph": "X", "name": name, "tid": tid, "ts": ts, "dur": dur}


def test_thread_pool_work_goes_to_the_ops_in_flight():
  """Two XLA worker threads over 200 us: an asynchronous convolution whose event lasts 10 us
  while both threads work for it until its completion at 100 us, a synchronous fusion, an
  idle stretch, and a matmul overlapping a fusion; an op on another thread adds nothing."""
  sp = _step_profile()
  names = [{"ph": "M", "name": "thread_name", "tid": t, "args": {"name": n}}
           for t, n in ((1, "tf_XLAEigen/1"), (2, "tf_XLAEigen/2"), (3, "python"))]
  region = lambda tid, a, b: [_span("ThreadpoolListener::StartRegion", tid, a),  # noqa: E731
                              _span("ThreadpoolListener::StopRegion", tid, b)]
  events = names + [
      _span("convolution.1", 1, 0, 10), _span("end: convolution.1", 1, 100),
      *region(1, 10, 100), *region(2, 0, 100),
      _span("fusion.2", 1, 100, 50), _span("end: fusion.2", 1, 150),
      _span("iota.5", 3, 100, 20), _span("end: iota.5", 3, 120),  # thread 2 idles meanwhile
      _span("dot.3", 2, 150, 10), _span("end: dot.3", 2, 200), *region(2, 160, 200),
      _span("fusion.4", 1, 150, 20), _span("end: fusion.4", 1, 170), *region(1, 170, 200),
      _span("ThreadpoolListener::Record", 1, 50)]
  by_op, threads = sp.attribute(events)
  assert threads == 2
  # Thread 2's pool work from 160 to 170 us is shared by the two ops then in flight.
  expected = {"convolution.1": 0.2, "fusion.2": 0.05, "fusion.4": 0.025, "dot.3": 0.075,
              sp.IDLE: 0.05, "iota.5": 0.0}
  assert set(by_op) <= set(expected)
  for name, ms in expected.items():
    assert abs(by_op.get(name, 0.0) - ms) < 1e-9, (name, by_op)


def test_xla_and_torch_ops_fall_into_the_same_categories():
  sp = _step_profile()
  meta = lambda name: f', metadata={{op_name="jit(train_step)/{name}" stack_frame_id=1}}'  # noqa: E731
  hlo = "\n".join([
      "ENTRY %main {",
      "  %conv_general_dilated.1 = f32[8,56,56,64]{3,2,1,0} convolution(%a, %b), "
      "window={size=3x3}" + meta("jvp(ResNet)/conv1/conv_general_dilated"),
      "  %convolution.2 = f32[64,3,3,64]{3,2,1,0} convolution(%c, %d), window={size=56x56}",
      "  %dot.3 = f32[25088,256]{1,0} dot(%e, %f), lhs_contracting_dims={1}"
      + meta("transpose(jvp(ResNet))/layer1/conv3/conv_general_dilated"),
      "  %dot.4 = f32[8,1000]{1,0} dot(%g, %h)" + meta("jvp(ResNet)/fc/dot_general"),
      "  %transpose_copy_fusion.5 = f32[64,56,56,8]{3,2,1,0} fusion(%i), kind=kLoop",
      "  %wrapped_reduce-window.6 = f32[8,56,56,64]{3,2,1,0} fusion(%j)"
      + meta("jvp(ResNet)/reduce_window_max"),
      "  %wrapped_reduce-window.7 = (f32[8,56,56,64]{3,2,1,0}, s32[8,56,56,64]{3,2,1,0}) "
      "fusion(%k)",
      "  %wrapped_reduce-window.8 = pred[1,1,16,64]{3,2,1,0} fusion(%l)",
      "  ROOT %broadcast_maximum_fusion.9 = f32[8,56,56,64]{3,2,1,0} fusion(%m)"
      + meta("jvp(ResNet)/jit(relu)/max"),
      "}"])
  assert sp.xla_op_categories(hlo) == {
      "conv_general_dilated.1": "convolutions, forward",
      "convolution.2": "convolutions, backward",
      "dot.3": "convolutions, backward",
      "dot.4": "other matmuls (classifier, GCP head)",
      "transpose_copy_fusion.5": "layout transposes and copies",
      "wrapped_reduce-window.6": "pooling",
      "wrapped_reduce-window.7": "pooling",
      "wrapped_reduce-window.8": sp.ELEMENTWISE,
      "broadcast_maximum_fusion.9": sp.ELEMENTWISE}
  assert {op: sp.torch_category(op) for op in (
      "aten::mkldnn_convolution", "aten::convolution_backward",
      "autograd::engine::evaluate_function: ConvolutionBackward0", "aten::addmm", "aten::bmm",
      "aten::copy_", "aten::max_pool2d_with_indices", "aten::native_batch_norm",
      "aten::threshold_backward", "Optimizer.step#SGD.step")} == {
      "aten::mkldnn_convolution": "convolutions, forward",
      "aten::convolution_backward": "convolutions, backward",
      "autograd::engine::evaluate_function: ConvolutionBackward0": "convolutions, backward",
      "aten::addmm": "other matmuls (classifier, GCP head)",
      "aten::bmm": "other matmuls (classifier, GCP head)",
      "aten::copy_": "layout transposes and copies",
      "aten::max_pool2d_with_indices": "pooling",
      "aten::native_batch_norm": sp.ELEMENTWISE,
      "aten::threshold_backward": sp.ELEMENTWISE,
      "Optimizer.step#SGD.step": sp.ELEMENTWISE}
  assert set(sp.CATEGORIES) >= {sp.IDLE, sp.ELEMENTWISE}


def test_step_profiles_of_a_real_step_add_up():
  """A jax.profiler trace of a small convolution's gradient, as this jaxlib writes it: the
  convolutions are found and the categories add up to the traced span; likewise PyTorch."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import torch
  sp = _step_profile()
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 16)), jnp.float32)
  w = jnp.ones((3, 3, 16, 16), jnp.float32) / 100

  def loss(w, x):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jax.nn.relu(y) ** 2)
  grad = jax.jit(jax.grad(loss))
  run = lambda: jax.block_until_ready(grad(w, x))  # noqa: E731
  run()
  ms = sp.xla_step_profile(run, grad.lower(w, x).compile().as_text())
  assert set(ms) <= set(sp.CATEGORIES) and all(v >= 0 for v in ms.values()), ms
  assert ms.get("convolutions, forward", 0) > 0 and ms.get("convolutions, backward", 0) > 0

  conv = torch.nn.Conv2d(16, 16, 3, padding=1)
  xt = torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())
  theirs = sp.torch_step_profile(lambda: torch.relu(conv(xt)).square().sum().backward())
  assert set(theirs) <= set(sp.CATEGORIES), theirs
  assert theirs["convolutions, forward"] > 0 and theirs["convolutions, backward"] > 0
