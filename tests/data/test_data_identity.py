"""A converted copy of an image folder belongs to one folder: found by its absolute path,
used only while it matches the folder's images, else rebuilt (small folders) or refused
with the command that rebuilds it; the same for a frame store's decoded videos."""
import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

import gcp.data
from gcp.data import folder, video

CLASSES = ["cat", "dog"]


def _write(root, images, colors, per_class: int, start: int = 0) -> None:
  """`per_class` JPEGs per class in root/train/<class>/ and one per class in root/val/,
  coloured by `colors[start:]` in order."""
  k = start
  for split, n in (("train", per_class), ("val", 1)):
    for name in CLASSES:
      (root / split / name).mkdir(parents=True, exist_ok=True)
      for i in range(n):
        (root / split / name / f"{name}_{k}.jpg").write_bytes(images.jpeg(colors[k]))
        k += 1


def _colors_of(builder, images, colors, split="train"):
  batches = gcp.data.eval_batches(builder, split=split, pp="resize(8)", per_host_batch=8)
  found = [b["image"][b["mask"]] for b in batches]
  return sorted(images.identify(np.concatenate(found), colors).tolist())


def test_changed_small_folder_rebuilds_its_copy_and_large_one_names_the_command(
    tmp_path, images, caplog, capsys):
  colors = images.colors(12)
  root, data_dir = tmp_path / "imgs", str(tmp_path / "tfds")
  _write(root, images, colors, per_class=2)  # train: colours 0-3, val: 4, 5
  assert folder.main([str(root), data_dir]) == 0
  copy = folder.converted_dir(str(root), data_dir)
  record = json.loads(open(os.path.join(copy, folder.SOURCE_FILE)).read())
  assert record["source"] == str(root) and record["images"] == 6
  assert folder.main([str(root), data_dir]) == 0  # nothing to do
  assert "is up to date: it matches the 6 images" in capsys.readouterr().out

  # Images added, one removed, one rewritten: larger than max_direct, the run stops.
  (root / "train" / "cat" / "extra.jpg").write_bytes(images.jpeg(colors[6]))
  (root / "train" / "dog" / "more.jpg").write_bytes(images.jpeg(colors[7]))
  os.remove(root / "train" / "cat" / "cat_0.jpg")
  (root / "train" / "dog" / "dog_2.jpg").write_bytes(images.jpeg(colors[8], (30, 30)))
  with pytest.raises(ValueError) as err:
    gcp.data.load_builder(f"folder:{root}", data_dir, folder_max_direct=6)
  message = str(err.value)
  assert (f"the converted copy {copy} of the image folder {root} does not match the folder: "
          "images: 2 added, 1 removed, 1 modified (size or time) since it was converted"
          in message)
  assert f"\n\n  python -m gcp.data.folder {root} {data_dir}\n" in message

  # Small enough: rebuilt, atomically, and the run reads the folder's images as they are.
  with caplog.at_level(logging.WARNING):
    builder = gcp.data.load_builder(f"folder:{root}", data_dir)
  assert "rebuilding the converted copy" in caplog.text
  assert not isinstance(builder, folder.FolderSource)
  assert gcp.data.num_examples(builder, "train") == 5
  assert _colors_of(builder, images, colors) == [1, 3, 6, 7, 8]
  assert os.listdir(os.path.dirname(copy)) == ["1.0.0"]  # no partial or old copy left
  assert not [d for d in os.listdir(os.path.join(data_dir, "gcp_folder"))
              if d.startswith(".")]
  assert folder.main([str(root), data_dir]) == 0
  assert "is up to date" in capsys.readouterr().out

  # A copy without a fingerprint (an earlier version's) never matches.
  with open(os.path.join(copy, folder.SOURCE_FILE), "w") as f:
    json.dump({"source": str(root)}, f)
  with pytest.raises(ValueError, match="it records no fingerprint of its folder"):
    gcp.data.load_builder(f"folder:{root}", data_dir, folder_max_direct=4)


def test_a_copy_belongs_to_its_folder_only(tmp_path, images, caplog):
  """The issue's scenario: /a/imgs converted, then folder:/b/imgs with the same data_dir
  trains on /b/imgs; /a/imgs' copy still serves /a/imgs, even where it is absent."""
  colors = images.colors(12)
  a, b, data_dir = tmp_path / "a" / "imgs", tmp_path / "b" / "imgs", str(tmp_path / "tfds")
  _write(a, images, colors, per_class=3)  # train: colours 0-5
  _write(b, images, colors, per_class=1, start=8)  # train: colours 8, 9
  folder.convert(str(a), data_dir, progress=False)
  builder = gcp.data.load_builder(f"folder:{b}", data_dir)
  assert isinstance(builder, folder.FolderSource) and builder.root == str(b)
  assert _colors_of(builder, images, colors) == [8, 9]
  legacy = os.path.join(data_dir, "gcp_folder", "imgs", "1.0.0")  # found by name only
  os.makedirs(legacy)
  for name, content in (("dataset_info.json", {}), (folder.SOURCE_FILE, {"source": str(b)})):
    with open(os.path.join(legacy, name), "w") as f:
      json.dump(content, f)
  with pytest.raises(ValueError, match=r"holds more than 1 images: convert it once") as err:
    gcp.data.load_builder(f"folder:{b}", data_dir, folder_max_direct=1)
  assert f"(the copy {legacy} was written by an earlier version of gcp" in str(err.value)

  os.rename(a, tmp_path / "a" / "moved")  # the source is not on this machine
  with caplog.at_level(logging.INFO, logger="absl"):  # gcp.reporting may have quietened it
    builder = gcp.data.load_builder(f"folder:{a}", data_dir, folder_max_direct=1)
  assert "is not on this machine: using its converted copy" in caplog.text
  assert _colors_of(builder, images, colors) == [0, 1, 2, 3, 4, 5]


def test_the_fingerprint_covers_paths_sizes_and_times(tmp_path, images):
  root = tmp_path / "imgs"
  _write(root, images, images.colors(6), per_class=1)
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  before = folder.fingerprint(folder.scan(str(root)))
  (root / "train" / "cat" / "notes.txt").write_text("changed, but not an image")
  assert folder.fingerprint(folder.scan(str(root))) == before
  path = root / "train" / "cat" / "cat_0.jpg"
  os.utime(path, ns=(0, path.stat().st_mtime_ns + 1))
  assert folder.fingerprint(folder.scan(str(root))) != before


# ------------------------------------------------------------------ frame stores

def test_decode_reuses_frames_only_from_the_same_file_and_settings(tmp_path, moving_squares,
                                                                   monkeypatch):
  pytest.importorskip("av")
  from references.moving_squares import Video
  videos = tmp_path / "videos"
  videos.mkdir()
  clip = Video("a1", 0, 4, 1)
  moving_squares.write_video_file(str(videos / "a1.mp4"), clip)
  (tmp_path / "train.txt").write_text("a1.mp4 0\n")
  out = tmp_path / "store"
  calls = []
  decode_video = video.decode_video
  monkeypatch.setattr(video, "decode_video",
                      lambda path, *a, **k: calls.append(path) or decode_video(path, *a, **k))

  def decode(**settings):
    calls.clear()
    video.decode(str(videos), str(tmp_path / "train.txt"), str(out), "train", workers=1,
                 progress=False, **settings)
    return len(calls)

  assert decode() == 1
  manifest = video._read_manifest(str(out))
  assert manifest["a1"]["source"] == str(videos / "a1.mp4")
  assert (manifest["a1"]["short_side"], manifest["a1"]["quality"]) == (0, 95)
  assert decode() == 0  # the same file and settings: kept
  assert decode(short_side=16) == 1  # other settings: decoded again, in place
  frame = tf.io.decode_jpeg(tf.io.read_file(str(out / "frames" / "a1" / "00001.jpg")))
  assert min(frame.shape[:2]) == 16
  assert decode(short_side=16) == 0
  os.utime(videos / "a1.mp4", ns=(0, 10**9))  # the file changed
  assert decode(short_side=16) == 1
  os.remove(out / video.MANIFEST_FILE)  # frames without a record (an earlier version's)
  assert decode(short_side=16) == 1
  assert sorted(os.listdir(out / "frames")) == ["a1"]  # no partial or old folder left
  with open(out / video.MANIFEST_FILE, "a") as f:
    f.write('{"video": "a1", "sou')  # a line cut short by a killed run
  assert decode(short_side=16) == 0
