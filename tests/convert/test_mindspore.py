"""MindSpore checkpoints: the protobuf format read and written without MindSpore, the
releases' names (SPEC §6) placed and transposed, and exported back bit for bit; where a
MindSpore that runs is available, the release's network built in MindSpore, its logits
reproduced to 1e-4 of the largest logit (measured: ~4e-6), and our export loaded into it
strictly, giving its logits again."""
import functools
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

import gcp.convert
from gcp import checkpoint
from gcp.convert import ConversionError, convert, layouts, mindspore
from gcp.data import imagenet

from references.numerics import max_rel_diff

REFERENCE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "references",
                         "mindspore_resnet.py")
BOOKKEEPING = {"learning_rate": np.float32(0.1), "global_step": np.int32(500400),
               "momentum": np.float32(0.9), "epoch_num": np.int32(100),
               "step_num": np.int32(500400)}


def _bn(prefix, n):
  return {f"{prefix}.{leaf}": (n,) for leaf in ("gamma", "beta", "moving_mean",
                                                "moving_variance")}


def release_shapes(arch: str, head: str) -> dict[str, tuple]:
  """The release's tensor names and shapes, from SPEC §6 (d = 128, 1001 classes)."""
  bottleneck = arch == "resnet50"
  stages = (3, 4, 6, 3) if bottleneck else (2, 2, 2, 2)
  shapes = {"conv1.weight": (64, 3, 7, 7), **_bn("bn1", 64)}
  cin = 64
  for s, n in enumerate(stages, 1):
    p = 64 * 2**(s - 1)
    cout = 4 * p if bottleneck else p
    for i in range(n):
      pre = f"layer{s}.{i}."
      convs = ([("conv1", "bn1", p, cin, 1), ("conv2", "bn2", p, p, 3),
                ("conv3", "bn3", cout, p, 1)] if bottleneck else
               [("conv1", "bn1d", p, cin, 3), ("conv2", "bn2d", p, p, 3)])
      for conv, bn, o, c, k in convs:
        shapes[pre + conv + ".weight"] = (o, c, k, k)
        shapes.update(_bn(pre + bn, o))
      if i == 0 and (cin != cout or s > 1):
        shapes[pre + "down_sample_layer.0.weight"] = (cout, cin, 1, 1)
        shapes.update(_bn(pre + "down_sample_layer.1", cout))
      cin = cout
  shapes.update({"layer_reduce.weight": (128, cin, 1, 1), **_bn("layer_reduce_bn", 128),
                 "fc.weight": (1001, 8256), "fc.bias": (1001,)})
  if head == "dropcov":
    shapes["eca_layer.conv.weight"] = (1, 1, 1, 3)
  return shapes


def our_location(name: str) -> tuple[str, ...]:
  """Where SPEC says a release tensor lives in our tree (written independently of the
  converter's rules)."""
  module, leaf = name.rsplit(".", 1)
  if module == "eca_layer.conv":
    return ("params", "head", "eca")
  module = re.sub(r"^layer(\d)\.(\d+)\.", r"layer\1_\2/", module)
  module = module.replace("down_sample_layer.0", "downsample_conv")
  module = module.replace("down_sample_layer.1", "downsample_bn")
  module = re.sub(r"bn(\d)d$", r"bn\1", module)
  module = {"layer_reduce": "head/reduce/conv", "layer_reduce_bn": "head/reduce/bn"}.get(
      module, module)
  collection, leaf = {"weight": ("params", "kernel"), "bias": ("params", "bias"),
                      "gamma": ("params", "scale"), "beta": ("params", "bias"),
                      "moving_mean": ("batch_stats", "mean"),
                      "moving_variance": ("batch_stats", "var")}[leaf]
  return (collection, *module.split("/"), leaf)


def our_layout(name: str, value: np.ndarray, classes: int) -> np.ndarray:
  if name == "fc.weight":
    return value[:classes].T
  if name == "fc.bias":
    return value[:classes]
  if name == "eca_layer.conv.weight":
    return value.reshape(-1)
  return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value


def flat(tree):
  return {tuple(k.key for k in path): leaf for path, leaf in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("arch, head", [("resnet50", "isqrt"), ("resnet18", "dropcov")])
@pytest.mark.parametrize("keep_extra_class", [False, True])
def test_release_checkpoint_places_every_tensor(arch, head, keep_extra_class, tmp_path):
  rng = np.random.default_rng(0)
  tensors = {n: rng.normal(size=s).astype(np.float32)
             for n, s in release_shapes(arch, head).items()}
  moments = {f"moments.{n}": np.zeros_like(v) for n, v in tensors.items()}
  path = str(tmp_path / "release.ckpt")
  mindspore.write(path, {**tensors, **moments, **BOOKKEEPING})

  spec, variables = convert(path, keep_extra_class=keep_extra_class)
  classes = 1001 if keep_extra_class else 1000
  assert (spec["arch"], spec["head"], spec["variant"]) == (arch, head, "mindspore")
  assert (spec["reduction_dim"], spec["num_classes"]) == (128, classes)
  got = flat(variables)
  assert len(got) == len(tensors)  # one-to-one: nothing left over, nothing invented
  for name, value in tensors.items():
    np.testing.assert_array_equal(got[our_location(name)],
                                  our_layout(name, value, classes), err_msg=name)
  if arch == "resnet18":  # saved with ImageNet's class names, unless it keeps the 1001st
    out = str(tmp_path / "converted")
    gcp.convert.convert_to_checkpoint(path, out, keep_extra_class=keep_extra_class)
    names = checkpoint.load_class_names(out)
    assert names is None if keep_extra_class else names == imagenet.class_names()
  if keep_extra_class:  # export writes the release's names and shapes back, bit for bit
    exported = layouts.default_layout(spec).export(variables, spec)
    assert sorted(exported) == sorted(tensors)
    for name, value in tensors.items():
      np.testing.assert_array_equal(exported[name], value, err_msg=name)


def _checkpoint_bytes(tag, dims, dtype, chunks):
  """Serialised Checkpoint messages, one per chunk, as MindSpore writes a split tensor."""
  out = b""
  for chunk in chunks:
    message = mindspore._Checkpoint()
    value = message.value.add(tag=tag)
    value.tensor.dims.extend(dims)
    value.tensor.tensor_type = dtype
    value.tensor.tensor_content = chunk.tobytes()
    out += message.SerializeToString()
  return out


def test_split_tensors_are_joined_and_crc_trailer_ignored(tmp_path):
  big = np.arange(24, dtype=np.float32).reshape(6, 4)
  data = _checkpoint_bytes("w", big.shape, "Float32", np.array_split(big, 3))
  (tmp_path / "split.ckpt").write_bytes(data + b"crc_num" + (12345).to_bytes(10, "big"))
  np.testing.assert_array_equal(mindspore.read(str(tmp_path / "split.ckpt"))["w"], big)


def test_corrupt_files_are_rejected(tmp_path):
  path = tmp_path / "m.ckpt"
  mindspore.write(str(path), {"conv1.weight": np.ones((64, 3, 7, 7), np.float32)})
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(ConversionError, match="not a readable MindSpore checkpoint"):
    mindspore.read(str(path))
  path.write_bytes(_checkpoint_bytes("w", (3, 3), "Float32", [np.ones(4, np.float32)]))
  with pytest.raises(ConversionError, match="'w' holds 16 bytes"):
    mindspore.read(str(path))
  path.write_bytes(b"")
  with pytest.raises(ConversionError, match="holds no tensors"):
    mindspore.read(str(path))


# ----------------------------------------------------------------- against MindSpore itself

_PROBE = ("import mindspore, numpy; from mindspore import ops, Tensor; "
          "ops.mean(Tensor(numpy.ones(2, numpy.float32)))")


@functools.cache
def mindspore_python() -> str | None:
  """A Python whose MindSpore runs: $GCP_MINDSPORE_PYTHON, else this one."""
  for python in (os.environ.get("GCP_MINDSPORE_PYTHON"), sys.executable):
    if python and subprocess.run([python, "-c", _PROBE], capture_output=True,
                                 timeout=300).returncode == 0:
      return python
  return None


needs_mindspore = pytest.mark.skipif(
    "not mindspore_python()",
    reason="needs a Python whose MindSpore runs (mindspore 2.10 needs numpy < 2, so a "
           "separate virtualenv): set GCP_MINDSPORE_PYTHON to it; .ci/run builds one")


@needs_mindspore
@pytest.mark.parametrize("arch, head", [("resnet50", "isqrt"), ("resnet18", "dropcov")])
def test_mindspore_network_logits_are_reproduced(arch, head, our_logits, tmp_path):
  images = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
  np.save(tmp_path / "images.npy", images)
  subprocess.run([mindspore_python(), REFERENCE, arch, head, str(tmp_path)], check=True,
                 capture_output=True, timeout=900)
  want = np.load(tmp_path / "logits.npy")
  for keep in (False, True):
    spec, variables = convert(str(tmp_path / "model.ckpt"), keep_extra_class=keep)
    got = our_logits(spec, variables, images)
    assert got.shape == (2, 1001 if keep else 1000)
    assert max_rel_diff(got, want[:, :got.shape[1]]) < 1e-4

  # Exported (in the layout recorded at conversion), the release's network loads every
  # tensor (strictly, as its eval.py loads) and computes the same logits.
  out = str(tmp_path / "converted")
  gcp.convert.convert_to_checkpoint(str(tmp_path / "model.ckpt"), out, keep_extra_class=True)
  layout, _ = gcp.convert.export(out, str(tmp_path / "exported.ckpt"))
  assert layout.name == "mindspore_resnet"
  subprocess.run([mindspore_python(), REFERENCE, arch, head, str(tmp_path),
                  str(tmp_path / "exported.ckpt")], check=True, capture_output=True,
                 timeout=900)
  assert max_rel_diff(np.load(tmp_path / "logits_loaded.npy"), want) < 1e-6


@needs_mindspore
def test_mindspore_loads_what_we_write(tmp_path):
  arrays = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
            "b.moving_mean": np.array([1.5, -2.0], np.float16),
            "global_step": np.array([7], np.int32)}
  mindspore.write(str(tmp_path / "ours.ckpt"), arrays)
  script = ("import sys, mindspore, numpy\n"
            "params = mindspore.load_checkpoint(sys.argv[1])\n"
            "numpy.savez(sys.argv[2], **{k: v.asnumpy() for k, v in params.items()})\n")
  subprocess.run([mindspore_python(), "-c", script, str(tmp_path / "ours.ckpt"),
                  str(tmp_path / "back.npz")], check=True, capture_output=True, timeout=300)
  back = np.load(tmp_path / "back.npz")
  assert set(back) == set(arrays)
  for name, value in arrays.items():
    np.testing.assert_array_equal(back[name], value)
    assert back[name].dtype == value.dtype
