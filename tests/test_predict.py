"""gcp.predict: a model trained here on a folder of JPEGs classifies them as --mode=eval
scores them; ten_crop and flip as evaluation; file / folder / glob arguments; bad input;
CSV and JSON output."""
import csv
import io
import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf

from gcp import checkpoint, inference, predict, train
from gcp.config import base_config
from gcp.data import preprocess

CLASSES = ("cat", "dog", "fox")
EVAL_PP = "resize_shorter(32)|center_crop(28)|normalize('imagenet')"


def write_jpeg(path, pixels):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(tf.io.encode_jpeg(pixels, quality=90).numpy())


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A ResNet-18 (width 4) + iSQRT trained 3 epochs of 3 steps on a folder of 3 classes of
  JPEGs of mixed sizes, each class tinted by one colour channel (enough for it to tell
  some classes apart, here 8 of the 12 validation images): (workdir, config, image root)."""
  root = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  sizes = ((32, 40), (40, 32), (36, 36), (33, 47))
  for split, per_class in (("train", 8), ("val", 4)):
    for c, name in enumerate(CLASSES):
      for i in range(per_class):
        pixels = rng.integers(0, 160, (*sizes[i % 4], 3), np.uint8)
        pixels[..., c] += 90
        write_jpeg(str(root / split / name / f"{i}.jpg"), pixels)
  c = base_config()
  c.data.name = f"folder:{root}"
  c.data.train_split, c.data.eval_split = "train", "val"
  c.data.train_pp = "resize_shorter(32)|random_crop(28)|normalize('imagenet')"
  c.data.eval_pp = EVAL_PP
  c.model.arch, c.model.width, c.model.small_input, c.model.reduction_dim = (
      "resnet18", 4, True, 8)
  c.optim.schedule = "constant"
  c.batch_size, c.eval_batch_size, c.num_epochs, c.log_every_steps = 8, 8, 3, 3
  workdir = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(c, workdir)
  return workdir, c, root


def val_images(root):
  return [str(root / "val" / name / f"{i}.jpg") for name in CLASSES for i in range(4)]


def reference_probabilities(classifier, paths, pp):
  """softmax of `Classifier.logits` of the files `paths` preprocessed one by one with
  `gcp.data.preprocess.build(pp)` (no tf.data pipeline): `[N, K]`."""
  fn = preprocess.build(pp)
  images = np.stack([fn(tf.io.read_file(p), tf.zeros([2], tf.int64)).numpy() for p in paths])
  logits = np.asarray(jax.jit(classifier.logits)(images), np.float64)
  e = np.exp(logits - logits.max(axis=1, keepdims=True))
  return e / e.sum(axis=1, keepdims=True)


def as_matrix(results):
  """`[N, K]` probabilities in the order of CLASSES from `predict`'s results."""
  return np.array([[dict(top)[name] for name in CLASSES] for _, top in results])


def test_predict_matches_evaluation_on_the_same_images(run):
  workdir, config, root = run
  results = predict.predict(workdir, str(root / "val"), top_k=3)
  # The folder's images in sorted order, named by the training folder's class folders.
  assert [p for p, _ in results] == val_images(root)
  assert all(sorted(name for name, _ in top) == list(CLASSES) for _, top in results)
  for _, top in results:
    probs = [p for _, p in top]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-5
  # Top-1 as --mode=eval scores the same images (its pipeline, batches and eval step).
  scored = train.evaluate_checkpoint(config, workdir)
  truth = [CLASSES.index(os.path.basename(os.path.dirname(p))) for p in val_images(root)]
  top1 = np.mean([CLASSES.index(top[0][0]) == t for (_, top), t in zip(results, truth)])
  assert scored["eval_examples"] == len(results) == 12
  assert top1 == scored["eval_top1"]
  assert len({top[0][0] for _, top in results}) > 1  # (not one class for every image)
  # Each image's probabilities: those of the network on the image preprocessed alone.
  classifier = inference.load(workdir)
  assert classifier.eval_pp == EVAL_PP and not classifier.flip
  reference = reference_probabilities(classifier, val_images(root), EVAL_PP)
  np.testing.assert_allclose(as_matrix(results), reference, rtol=1e-5, atol=1e-6)
  assert [top[0][0] for _, top in results] == [CLASSES[i] for i in reference.argmax(axis=1)]


def test_ten_crop_and_flip_as_evaluation(run):
  workdir, _, root = run
  paths = val_images(root)[::2]
  # Batches of 8 over 6 images on 8 devices: one padded batch.
  results = predict.predict(workdir, paths, top_k=3, ten_crop=True, flip=True)
  assert [p for p, _ in results] == paths
  classifier = inference.load(workdir, flip=True)
  ten = "resize_shorter(32)|ten_crop(28)|normalize('imagenet')"
  assert predict.ten_crop_preprocessing(EVAL_PP) == ten
  reference = reference_probabilities(classifier, paths, ten)  # [N, 10, 28, 28, 3] views
  np.testing.assert_allclose(as_matrix(results), reference, rtol=1e-5, atol=1e-6)
  plain = reference_probabilities(inference.load(workdir), paths, EVAL_PP)
  assert np.abs(reference - plain).max() > 1e-4  # the options change the logits


def test_image_arguments_files_folders_and_globs(tmp_path):
  for rel in ("b/2.png", "b/1.JPG", "b/notes.txt", "b/sub/0.jpeg", "a.jpg", "c/.hidden.jpg"):
    os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
    (tmp_path / rel).write_bytes(b"")
  d = str(tmp_path)
  # In the order given, each once; a named file whatever its name; a folder's images
  # recursively (files by name, then sub-folders); a glob's images sorted.
  assert predict.image_paths([f"{d}/b/notes.txt", f"{d}/b", f"{d}/*.jpg", f"{d}/b/1.JPG",
                              f"{d}/**/*.jpeg"]) == [
      f"{d}/b/notes.txt", f"{d}/b/1.JPG", f"{d}/b/2.png", f"{d}/b/sub/0.jpeg", f"{d}/a.jpg"]
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError) as e:
    predict.image_paths([f"{d}/empty", f"{d}/nope.jpg", f"{d}/*.gif"])
  assert str(e.value) == (
      f"no images to classify: the folder {d}/empty holds no images (.jpg, .jpeg, .png, "
      f".bmp, .gif, .webp); {d}/nope.jpg: no such file or folder; the pattern "
      f"'{d}/*.gif' matches no images")


def test_ten_crop_needs_a_centre_crop():
  with pytest.raises(ValueError, match=r"center_crop\(S\) of the evaluation preprocessing "
                     r"by ten_crop\(S\), but 'resize\(28\)' has none"):
    predict.ten_crop_preprocessing("resize(28)")


def test_bad_input_is_named_and_skipped(run, tmp_path, capsys):
  workdir, _, root = run
  # A checkpoint that does not exist.
  assert predict.main([str(tmp_path / "nope"), str(root / "val")]) == 1
  assert f"error: no checkpoint directory at '{tmp_path}/nope'" in capsys.readouterr().err
  # An empty folder, and a missing file.
  os.makedirs(tmp_path / "empty")
  assert predict.main([workdir, str(tmp_path / "empty"), str(tmp_path / "x.jpg")]) == 1
  assert (f"error: no images to classify: the folder {tmp_path}/empty holds no images"
          in capsys.readouterr().err)
  # A file that is not an image and a truncated JPEG: named and skipped, the rest
  # classified; a missing file among images: named.
  (tmp_path / "notes.jpg").write_bytes(b"not an image")
  good = val_images(root)[:2]
  (tmp_path / "cut.jpg").write_bytes(Path(good[0]).read_bytes()[:300])
  args = [workdir, str(tmp_path / "notes.jpg"), *good, str(tmp_path / "cut.jpg"),
          str(tmp_path / "gone.jpg"), "--top_k=2"]
  assert predict.main(args) == 0
  out, err = capsys.readouterr()
  assert (f"warning: predict: skipped 2 image(s) that could not be decoded: "
          f"{tmp_path}/notes.jpg, {tmp_path}/cut.jpg") in err
  assert f"warning: {tmp_path}/gone.jpg: no such file or folder" in err
  lines = out.splitlines()
  assert [lines[0], lines[3]] == good and len(lines) == 6
  assert all(line.endswith(CLASSES) and line.strip().split()[0].endswith("%")
             for line in lines[1:3] + lines[4:])
  # Nothing readable: non-zero.
  assert predict.main([workdir, str(tmp_path / "notes.jpg")]) == 1
  assert ("error: no image could be classified: skipped 1 image(s) that could not be "
          f"decoded: {tmp_path}/notes.jpg") in capsys.readouterr().err
  # An unknown output format, before anything is read.
  with pytest.raises(SystemExit) as e:
    predict.main([workdir, *good, "--output", str(tmp_path / "p.txt")])
  assert e.value.code == 2
  assert "unknown format '.txt'; name the file .csv or .json" in capsys.readouterr().err


def test_a_video_model_is_refused(tmp_path):
  # The spec says a video model; its variables are never used.
  checkpoint.save_variables(str(tmp_path), {"params": {"w": np.zeros(1)}},
                            {"arch": "tsn_resnet50", "head": "gap", "num_classes": 3})
  with pytest.raises(ValueError, match="is a video model .tsn_resnet50.: gcp.predict "
                     "classifies images"):
    predict.load(str(tmp_path))


def test_csv_and_json_hold_the_predictions(run, tmp_path, capsys):
  workdir, _, root = run
  images = val_images(root)[:3]
  expected = predict.predict(workdir, images, top_k=2)
  assert predict.main([workdir, *images, "--top_k=2", "--output", str(tmp_path / "p.csv")]) == 0
  assert predict.main([workdir, *images, "--top-k=2", "-o", str(tmp_path / "p.json")]) == 0
  assert capsys.readouterr().out.splitlines() == [
      f"wrote the top 2 classes of 3 image(s) to {tmp_path}/p.{suffix}"
      for suffix in ("csv", "json")]
  rows = list(csv.DictReader(io.StringIO((tmp_path / "p.csv").read_text())))
  assert [(r["path"], [(r["class_1"], float(r["probability_1"])),
                       (r["class_2"], float(r["probability_2"]))]) for r in rows] == expected
  saved = json.loads((tmp_path / "p.json").read_text())
  assert [(p["path"], [(c["class"], c["probability"]) for c in p["classes"]])
          for p in saved["predictions"]] == expected
  assert (saved["checkpoint"], saved["step"], saved["eval_pp"], saved["flip"],
          saved["weights"], saved["skipped"]) == (workdir, 9, EVAL_PP, False, "trained", [])
