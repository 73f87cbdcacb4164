"""gcp.export: each format run by its own runtime (onnxruntime, TensorFlow in a fresh
process, jax.export) gives the logits of gcp's evaluation; bad input is refused clearly."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow as tf

from gcp import checkpoint, data, export, inference
from gcp.data import folder, preprocess
from references.variables import random_variables

PP = "resize_shorter(36)|center_crop(32)|normalize('imagenet')"
RAW = (40, 44)  # raw images of the fixed-size artifacts
SPECS = {
    "isqrt": dict(arch="resnet18", head="isqrt", num_classes=5, reduction_dim=8, width=4),
    "dropcov": dict(arch="resnet18", head="dropcov", num_classes=5, reduction_dim=8, width=4),
    "mp": dict(arch="vit_test", head="mp", num_classes=5),
}
NAMES = ["ant", "bee", "cat", "dog", "eel"]
RTOL = 1e-4  # of the largest logit, float32 runtimes against jax


def images(batch, size=RAW, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (batch, *size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
  """Converted-style checkpoints (variables, spec and class names) of the three models."""
  out = {}
  for name, spec in SPECS.items():
    variables = random_variables(spec, image_size=32)
    directory = str(tmp_path_factory.mktemp(name))
    checkpoint.save_variables(directory, variables, spec, NAMES)
    out[name] = directory
  return out


def reference(source, raw):
  """gcp's evaluation of raw uint8 images: the pipeline's TF preprocessing, then the
  classifier with its default iSQRT method."""
  classifier = inference.load(source, eval_pp=PP)
  pre = preprocess.build(PP)
  x = np.stack([pre(tf.constant(im), tf.zeros([2], tf.int64)).numpy() for im in raw])
  return np.asarray(classifier.logits(x)), x


def close(actual, expected):
  np.testing.assert_allclose(actual, expected, rtol=0, atol=RTOL * np.abs(expected).max())


def test_jax_preprocessing_matches_the_pipeline():
  raw = images(2, (37, 50))
  fn, shape = export.jax_preprocessing(PP, (37, 50, 3))
  expected = np.stack([preprocess.build(PP)(tf.constant(im), tf.zeros([2], tf.int64)).numpy()
                       for im in raw])
  assert shape == (32, 32, 3) == expected.shape[1:]
  # float32 sums in another order: well below a grey level (std-normalised units)
  np.testing.assert_allclose(np.asarray(fn(raw)), expected, rtol=0, atol=2e-4)


@pytest.mark.parametrize("name", list(SPECS))
def test_onnx_runs_in_onnxruntime_at_two_batch_sizes(sources, tmp_path, name):
  ort = pytest.importorskip("onnxruntime")
  out = str(tmp_path / "model.onnx")
  info = export.export(sources[name], out, format="onnx", eval_pp=PP, image_size=RAW)
  session = ort.InferenceSession(out)
  assert info["input"]["shape"] == [None, *RAW, 3] and info["onnx_opset"] == export.ONNX_OPSET
  for batch in (2, 3):
    raw = images(batch, seed=batch)
    close(session.run(None, {"images": raw})[0], reference(sources[name], raw)[0])


def test_onnx_bare_network(sources, tmp_path):
  ort = pytest.importorskip("onnxruntime")
  out = str(tmp_path / "bare.onnx")
  export.export(sources["isqrt"], out, format="onnx", eval_pp=PP, preprocess=False)
  expected, x = reference(sources["isqrt"], images(3))
  close(ort.InferenceSession(out).run(None, {"images": x})[0], expected)


def test_stablehlo_round_trips_at_other_batch_sizes(sources, tmp_path):
  out = str(tmp_path / "model.stablehlo")
  export.export(sources["isqrt"], out, format="stablehlo", eval_pp=PP, image_size=RAW)
  with open(out, "rb") as f:
    exported = jax.export.deserialize(f.read())
  for batch in (1, 5):
    raw = images(batch, seed=batch)
    close(np.asarray(exported.call(raw)), reference(sources["isqrt"], raw)[0])


SAVEDMODEL_RUNNER = """
import sys, numpy as np, tensorflow as tf
out = {}
for key, path in zip(sys.argv[2::2], sys.argv[3::2]):
  inputs = np.load(sys.argv[1])[key]
  serve = tf.saved_model.load(path).signatures["serving_default"]
  out[key] = serve(images=tf.constant(inputs))["logits"].numpy()
np.savez(sys.argv[1] + ".out.npz", **out)
"""


def test_savedmodel_in_a_fresh_tensorflow_process(sources, tmp_path):
  """Raw JPEG-decoded images of any size in, the logits of gcp's eval pipeline out (and
  the bare network on preprocessed images)."""
  root = tmp_path / "photos"
  rng = np.random.default_rng(3)
  for i, size in enumerate([(40, 44), (40, 44), (52, 38)]):
    (root / "val" / NAMES[i]).mkdir(parents=True)
    tf.io.write_file(str(root / "val" / NAMES[i] / "x.jpg"), tf.io.encode_jpeg(
        rng.integers(0, 256, (*size, 3), dtype=np.uint8)))
  source = folder.FolderSource(folder.scan(str(root)))
  batch = next(data.eval_batches(source, split="val", pp=PP, per_host_batch=3))
  paths = sorted(str(p) for p in root.glob("val/*/x.jpg"))
  decoded = [tf.io.decode_jpeg(tf.io.read_file(p)).numpy() for p in paths]
  inputs, jobs, expected = {}, [], {}
  for name in SPECS:
    classifier = inference.load(sources[name], eval_pp=PP)
    pipeline = np.asarray(classifier.logits(batch["image"]))
    for i, image in enumerate(decoded):  # one image per call: the sizes differ
      inputs[f"{name}_raw{i}"], expected[f"{name}_raw{i}"] = image[None], pipeline[i:i + 1]
    inputs[f"{name}_bare"], expected[f"{name}_bare"] = batch["image"], pipeline
    for kind, pp in (("raw", True), ("bare", False)):
      out = str(tmp_path / f"{name}_{kind}")
      export.export(sources[name], out, format="savedmodel", eval_pp=PP, preprocess=pp)
      keys = [k for k in inputs if k.startswith(f"{name}_{kind}")]
      jobs += [arg for k in keys for arg in (k, out)]
  np.savez(tmp_path / "in.npz", **inputs)
  subprocess.run([sys.executable, "-c", SAVEDMODEL_RUNNER, str(tmp_path / "in.npz"), *jobs],
                 check=True, env={**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"},
                                  "TF_CPP_MIN_LOG_LEVEL": "2"})  # JAX's flags abort TF's XLA
  results = np.load(str(tmp_path / "in.npz") + ".out.npz")
  for key, value in expected.items():
    close(results[key], value)


def test_metadata_travels_with_the_artifact(sources, tmp_path):
  out = str(tmp_path / "m.stablehlo")
  export.export(sources["mp"], out, format="stablehlo", eval_pp=PP, image_size=RAW)
  with open(export.metadata_path(out)) as f:
    info = json.load(f)
  assert info["class_names"] == NAMES and info["arch"] == "vit_test" and info["head"] == "mp"
  assert info["input"] == {"name": "images", "dtype": "uint8", "shape": [None, *RAW, 3]}
  assert info["normalization"]["units"] == "0-255" and info["preprocessing"]["eval_pp"] == PP
  assert info["source"]["checkpoint"] == sources["mp"] and info["gcp_version"]


def test_bad_input_is_refused_with_the_fix(sources, tmp_path, capsys):
  out = str(tmp_path / "x.onnx")
  assert export.main([str(tmp_path / "missing"), out]) == 2
  assert "no checkpoint directory" in capsys.readouterr().err
  assert export.main([sources["isqrt"], out, "--format", "onnx",
                      "--eval_pp", "resize_shorter(36)|ten_crop(32)"]) == 2
  err = capsys.readouterr().err
  assert "'ten_crop' cannot be embedded" in err and "--no-preprocess" in err
  eig = str(tmp_path / "eig")
  checkpoint.save_variables(eig, {"params": {}}, {**SPECS["isqrt"], "head": "eig"})
  assert export.main([eig, out, "--format", "onnx"]) == 2
  assert "--format savedmodel" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    export.main([sources["isqrt"], out, "--format", "tflite"])
  assert not os.path.exists(out)
