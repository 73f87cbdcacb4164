"""Image folders (ImageFolder layout): read directly, or converted once to TFDS; corrupt
images skipped and counted; a missing or empty folder explains the layout."""
import logging

import numpy as np
import pytest

import gcp.data
from gcp.data import folder

CLASSES = ["eel", "cat", "dog"]  # label ids follow the sorted names: cat 0, dog 1, eel 2
PP_EVAL = "resize(12)"


@pytest.fixture(scope="module")
def tree(tmp_path_factory, images):
  """A folder with train/ (3 images per class, one of them corrupt) and val/ (2 per class
  and a PNG named .JPEG), a PNG, and a stray text file; returns (root, colours, truth)
  with truth[split] = {relative path: (colour index, label)} of the good images."""
  root = tmp_path_factory.mktemp("folder") / "My-Data"
  colors = images.colors(20)
  truth, k = {"train": {}, "val": {}}, 0
  for split, per_class in (("train", 3), ("val", 2)):
    for name in CLASSES:
      (root / split / name).mkdir(parents=True)
      for i in range(per_class):
        rel = f"{split}/{name}/{name}_{i}.jpg"
        (root / rel).write_bytes(images.jpeg(colors[k], (16 + 2 * i, 20)))
        truth[split][rel] = (k, sorted(CLASSES).index(name))
        k += 1
  (root / "train/cat/cat_2.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated garbage")
  del truth["train"]["train/cat/cat_2.jpg"]
  (root / "train/dog/dog_3.png").write_bytes(images.png(colors[k]))
  truth["train"]["train/dog/dog_3.png"] = (k, 1)
  (root / "val/eel/sub").mkdir()
  (root / "val/eel/sub/eel_9.JPEG").write_bytes(images.png(colors[k + 1]))  # PNG inside
  truth["val"]["val/eel/sub/eel_9.JPEG"] = (k + 1, 2)
  (root / "train/README.txt").write_text("not a class")  # a file beside the class folders
  (root / "train/eel/notes.txt").write_text("not an image")
  return str(root), colors, truth


def _eval(builder, split, batch):
  batches = list(gcp.data.eval_batches(builder, split=split, pp=PP_EVAL, per_host_batch=batch))
  assert len(batches) == gcp.data.num_eval_batches(builder, split, batch)
  mask = np.concatenate([b["mask"] for b in batches])
  return (np.concatenate([b["image"] for b in batches])[mask],
          np.concatenate([b["label"] for b in batches])[mask])


def test_small_folder_is_read_directly(tree, images, caplog):
  root, colors, truth = tree
  with caplog.at_level(logging.WARNING):
    builder = gcp.data.load_builder(f"folder:{root}")
  assert isinstance(builder, folder.FolderSource)
  assert "ignored 1 file(s) without an image extension" in caplog.text
  assert gcp.data.num_classes(builder) == 3
  assert builder.info.features["label"].names == sorted(CLASSES)
  assert gcp.data.num_examples(builder, "train") == 10  # the corrupt file is listed
  assert gcp.data.num_examples(builder, "val") == 7
  assert gcp.data.num_examples(builder, "train[:50%]") == 5
  assert gcp.data.image_shape(builder, "train", "inception_crop(8)") == (8, 8, 3)


def test_eval_skips_and_counts_the_corrupt_image(tree, images, caplog):
  root, colors, truth = tree
  builder = gcp.data.load_builder(f"folder:{root}")
  for split, good in (("train", 9), ("val", 7)):
    caplog.clear()
    with caplog.at_level(logging.WARNING):
      image, label = _eval(builder, split, 4)
    assert len(label) == good
    which = images.identify(image, colors)
    expected = {c: l for c, l in truth[split].values()}
    assert sorted(which) == sorted(expected)  # every good image once, PNGs included
    np.testing.assert_array_equal(label, [expected[c] for c in which])
    skipped = [r.getMessage() for r in caplog.records if "could not be decoded" in
               r.getMessage()]
    assert skipped == ([f"folder:{root}:train: skipped 1 image(s) that could not be decoded: "
                        "train/cat/cat_2.jpg"] if split == "train" else [])


def test_training_epoch_stays_full_despite_the_corrupt_image(tree, caplog):
  root, _, _ = tree
  builder = gcp.data.load_builder(f"folder:{root}")
  kw = dict(split="train", pp="inception_crop(8)|flip_lr", per_host_batch=5, seed=0)
  with caplog.at_level(logging.WARNING):
    batches = list(gcp.data.train_batches(builder, epoch=0, **kw))
  # 10 files make 2 batches of 5; one does not decode, so the epoch's first image is reused.
  assert len(batches) == gcp.data.steps_per_epoch(builder, "train", 5) == 2
  assert all(b["image"].shape == (5, 8, 8, 3) for b in batches)
  assert ("train epoch 1: skipped 1 image(s) that could not be decoded: train/cat/cat_2.jpg"
          in caplog.text)
  resumed = list(gcp.data.train_batches(builder, epoch=0, start_step=1, **kw))
  np.testing.assert_array_equal(resumed[0]["image"], batches[1]["image"])
  np.testing.assert_array_equal(resumed[0]["label"], batches[1]["label"])


def test_large_folder_must_be_converted_and_the_copy_is_used(tree, images, tmp_path, capsys,
                                                             caplog):
  root, colors, truth = tree
  with pytest.raises(ValueError, match=r"more than 5 images: convert it once") as err:
    gcp.data.load_builder(f"folder:{root}", str(tmp_path), folder_max_direct=5)
  assert f"python -m gcp.data.folder {root} {tmp_path}" in str(err.value)

  with caplog.at_level(logging.WARNING):
    assert folder.main([root, str(tmp_path)]) == 0  # the documented command
  out = capsys.readouterr().out
  assert "train: 9 images, 1 skipped (do not decode)" in out and "val: 7 images" in out
  assert "train/cat/cat_2.jpg" in caplog.text
  copy = tmp_path / "gcp_folder" / folder.config_name(root) / "1.0.0"
  assert folder.config_name(root).startswith("my_data_")
  assert (copy / "dataset_info.json").exists()

  builder = gcp.data.load_builder(f"folder:{root}", str(tmp_path), folder_max_direct=5)
  assert not isinstance(builder, folder.FolderSource)
  assert gcp.data.num_examples(builder, "train") == 9
  assert builder.info.features["label"].names == sorted(CLASSES)
  image, label = _eval(builder, "val", 3)
  expected = {c: l for c, l in truth["val"].values()}
  which = images.identify(image, colors)
  assert sorted(which) == sorted(expected)
  np.testing.assert_array_equal(label, [expected[c] for c in which])
  assert len(list(gcp.data.train_batches(builder, split="train", pp="inception_crop(8)",
                                         per_host_batch=4, seed=0, epoch=0))) == 2


@pytest.mark.parametrize("make", ["missing", "empty", "flat"])
def test_missing_or_empty_folder_shows_the_layout(tmp_path, images, make):
  root = tmp_path / "data"
  if make != "missing":
    root.mkdir()
  if make == "flat":  # images straight in the split folder: no class folders
    (root / "train").mkdir()
    (root / "train" / "a.jpg").write_bytes(images.jpeg((1, 2, 3)))
  with pytest.raises(FileNotFoundError) as err:
    gcp.data.load_builder(f"folder:{root}")
  message = str(err.value)
  assert {"missing": "does not exist", "empty": "it has no sub-folders",
          "flat": "its folders (train) hold no class folders with images"}[make] in message
  assert f"{root}/\n├── train/" in message and "│   ├── n01440764/" in message


def test_unknown_split_names_the_folders(tree):
  builder = gcp.data.load_builder(f"folder:{tree[0]}")
  with pytest.raises(ValueError, match=r"Unknown split 'test'.*top-level folders"):
    gcp.data.num_examples(builder, "test")


# ------------------------------------------------- undecodable images are named

def test_skipped_images_are_named_to_the_caller(tree):
  root, _, _ = tree
  builder = gcp.data.load_builder(f"folder:{root}")
  for split, expected in (("train", ["train/cat/cat_2.jpg"]), ("val", [])):
    skipped = []
    batches = list(gcp.data.eval_batches(builder, split=split, pp=PP_EVAL, per_host_batch=4,
                                         skipped=skipped))
    assert skipped == expected
    assert sum(b["mask"].sum() for b in batches) + len(skipped) == \
        gcp.data.num_examples(builder, split)
  skipped = []
  list(gcp.data.train_batches(builder, split="train", pp="inception_crop(8)",
                              per_host_batch=5, seed=0, epoch=0, skipped=skipped))
  assert skipped == ["train/cat/cat_2.jpg"]


@pytest.fixture(scope="module")
def spoilt(tmp_path_factory, images):
  """12 good images and 3 garbage files (one the last file of the split) in train/."""
  root = tmp_path_factory.mktemp("spoilt")
  colors = images.colors(12)
  for i in range(15):
    folder_ = root / "train" / f"c{i % 3}"
    folder_.mkdir(parents=True, exist_ok=True)
    bad = i in (4, 9, 14)
    (folder_ / f"img{i:02d}.jpg").write_bytes(b"\xff\xd8 garbage" if bad else
                                              images.jpeg(colors[i % 12]))
  return gcp.data.load_builder(f"folder:{root}")


def test_every_pass_of_a_built_evaluation_is_the_same(spoilt):
  """`eval_passes` builds the pipeline once (per-epoch evaluation); each pass, also after
  one stopped early, yields the same batches and names the same undecodable files."""
  bad = sorted({"train/c1/img04.jpg", "train/c0/img09.jpg", "train/c2/img14.jpg"})
  passes = gcp.data.eval_passes(spoilt, split="train", pp=PP_EVAL, per_host_batch=4)
  first = []
  reference = list(passes(first))
  next(passes([]))  # stopped after one batch
  again = []
  for batch, expected in zip(passes(again), reference, strict=True):
    for key in ("image", "label", "mask"):
      np.testing.assert_array_equal(batch[key], expected[key])
  assert first == again == bad


def test_skipped_images_are_reported_once_across_a_resume(spoilt):
  bad = {"train/c1/img04.jpg", "train/c0/img09.jpg", "train/c2/img14.jpg"}
  skipped = []
  list(gcp.data.eval_batches(spoilt, split="train", pp=PP_EVAL, per_host_batch=4,
                             skipped=skipped))
  assert skipped == sorted(bad)  # the last file of the split too (listing order)
  kw = dict(split="train", pp="inception_crop(8)", per_host_batch=3, seed=1, epoch=2)
  # 15 files make 5 batches of 3; 12 decode: 3 come from a second pass, which drops the
  # garbage again without naming it twice.
  assert gcp.data.steps_per_epoch(spoilt, "train", 3) == 5
  full = []
  uninterrupted = list(gcp.data.train_batches(spoilt, skipped=full, **kw))
  assert sorted(full) == sorted(bad)
  split = set()
  for k in range(1, 5):  # interrupted after k steps, then resumed at step k
    before, after = [], []
    for step, batch in enumerate(gcp.data.train_batches(spoilt, skipped=before, **kw)):
      if step == k - 1:
        break
    resumed = list(gcp.data.train_batches(spoilt, start_step=k, skipped=after, **kw))
    assert before + after == full
    np.testing.assert_array_equal(resumed[0]["image"], uninterrupted[k]["image"])
    split.add((len(before), len(after)))
  assert len(split) > 1  # the resume point falls between the skipped images


def test_pipelines_are_traced_without_autograph(spoilt, tmp_path, images, monkeypatch):
  """gcp's tf.data functions are traced as written (`preprocess.without_autograph`):
  AutoGraph converts none of them, in any pipeline (folder conversion, the preflight
  batch, evaluation, training with RandAugment)."""
  from tensorflow.python.autograph.impl import api  # pylint: disable=no-name-in-module
  converted = []
  convert = api._convert_actual  # pylint: disable=protected-access

  def recording(entity, program_ctx):
    converted.append(getattr(entity, "__module__", "") or "")
    return convert(entity, program_ctx)
  monkeypatch.setattr(api, "_convert_actual", recording)
  root = tmp_path / "tiny"
  for i in range(3):
    (root / "train" / f"c{i}").mkdir(parents=True)
    (root / "train" / f"c{i}" / "a.jpg").write_bytes(images.jpeg(images.colors(3)[i]))
  assert folder.main([str(root), str(tmp_path)]) == 0
  gcp.data.first_batch(spoilt, split="train", pp=PP_EVAL, per_host_batch=2, train=False)
  list(gcp.data.eval_batches(spoilt, split="train", pp=PP_EVAL, per_host_batch=2))
  next(gcp.data.train_batches(spoilt, split="train", pp="inception_crop(8)|randaug(2, 9)",
                              per_host_batch=2, seed=0, epoch=0))
  assert not [m for m in converted if m.startswith("gcp")], converted
