"""Frame stores (gcp.data.video): TSN sampling against TSM's index formulas, the frames
the pipeline actually reads (told by the synthetic moving squares), augmentation shared by
the frames of a clip, multi-view shapes, per-host splits, reported problems, and decoding
video files with PyAV."""
import json
import logging
import os

import jax
import numpy as np
import pytest
import tensorflow as tf

import gcp.data
from gcp.data import video
from references.moving_squares import Video

TRAIN_PP = "random_segments(3)|resize((32, 48))"  # no crop: frames stay identifiable


def tsm_test_starts(n, segments, snippet=1):
  """TSM's `_get_test_indices` (0-based): int(tick / 2 + tick * x)."""
  tick = (n - snippet + 1) / float(segments)
  return np.array([int(tick / 2.0 + tick * x) for x in range(segments)])


def clip_starts(n, segments, clips, snippet=1):
  """Clip k of K starts at fraction (k + 1/2) / K of each of the equal segments."""
  tick = max(n - snippet + 1, 1) / segments
  return np.array([[int(tick * (x + (k + 0.5) / clips)) for x in range(segments)]
                   for k in range(clips)])


def segment_bounds(n, segments, snippet=1):
  """[begin, end) of the starts of each of the equal segments (end = begin + 1 if empty)."""
  starts = max(n - snippet + 1, 1)
  begin = np.array([starts * t // segments for t in range(segments)])
  end = np.array([starts * (t + 1) // segments for t in range(segments)])
  return begin, np.maximum(end, begin + 1)


def frames_of(sampling, n, seed=(0, 0)):
  return sampling.frames(tf.constant(n), tf.constant(seed, tf.int64)).numpy()


# ------------------------------------------------------------------ sampling indices

@pytest.mark.parametrize("n,segments,snippet", [(48, 8, 1), (37, 8, 1), (8, 8, 1),
                                                (5, 8, 1), (37, 8, 3), (2, 4, 3)])
def test_centre_sampling_is_tsm_and_snippets_are_consecutive(n, segments, snippet):
  got = frames_of(video.center_segments(segments, snippet_frames=snippet), n)
  assert got.shape == (1, segments, snippet)
  starts = tsm_test_starts(n, segments, snippet) if n >= snippet else np.zeros(segments)
  # Frames p, p + 1, ... of a snippet, the last frame repeated past the end (TSM).
  np.testing.assert_array_equal(
      got[0], np.minimum(starts[:, None] + np.arange(snippet), n - 1))


@pytest.mark.parametrize("n,segments,clips", [(48, 8, 2), (37, 8, 2), (30, 4, 3)])
def test_test_clips_are_evenly_shifted(n, segments, clips):
  got = frames_of(video.center_segments(segments, clips=clips), n)
  np.testing.assert_array_equal(got[..., 0], clip_starts(n, segments, clips))
  assert (np.diff(got[..., 0], axis=0) > 0).all()  # later clips, later in every segment


@pytest.mark.parametrize("n,segments,snippet", [(37, 8, 1), (21, 4, 3), (5, 8, 1)])
def test_training_draws_every_start_of_each_segment_uniformly(n, segments, snippet):
  sample = tf.function(video.random_segments(segments, snippet_frames=snippet).frames)
  draws = np.stack([sample(n, tf.constant([7, s], tf.int64)).numpy()[0] for s in range(300)])
  np.testing.assert_array_equal(draws[:5], [sample(n, tf.constant([7, s], tf.int64))[0]
                                            for s in range(5)])  # seeded
  np.testing.assert_array_equal(draws[..., 1:] - draws[..., :-1], 1)  # consecutive
  begin, end = segment_bounds(n, segments, snippet)
  for t in range(segments):
    counts = np.bincount(draws[:, t, 0] - begin[t], minlength=end[t] - begin[t])
    assert len(counts) == end[t] - begin[t]  # never outside the segment
    # Every start drawn, each about 300 / length times (binomial, 5 sigma).
    expected = 300 / len(counts)
    assert (np.abs(counts - expected) < 5 * np.sqrt(expected) + 1).all(), counts


def test_bad_sampling_is_a_clear_error(frame_store):
  builder = gcp.data.load_builder(f"frames:{frame_store.root}")
  with pytest.raises(ValueError, match="starts with its frame sampling, random_segments"):
    gcp.data.image_shape(builder, "train", "inception_crop(24)|flip_lr")
  with pytest.raises(ValueError, match="snippet_frames must be a positive integer"):
    gcp.data.image_shape(builder, "train", "random_segments(8, snippet_frames=0)")
  with pytest.raises(ValueError, match="random_segments.*unexpected keyword.*clips"):
    gcp.data.image_shape(builder, "train", "random_segments(8, clips=2)")


# ------------------------------------------------------------------ the store

def test_store_lists_classes_splits_and_shapes(frame_store):
  builder = gcp.data.load_builder(f"frames:{frame_store.root}")
  assert isinstance(builder, video.FrameSource)
  assert builder.frame_names == video.FrameNames("", 5, ".jpg", 1)
  assert gcp.data.num_classes(builder) == 2
  assert builder.info.features["label"].names == list(frame_store.class_names)
  assert gcp.data.num_examples(builder, "train") == 8
  assert gcp.data.num_examples(builder, "val[:60%]") == 3
  assert gcp.data.steps_per_epoch(builder, "train", 3) == 2
  shape = lambda pp: gcp.data.image_shape(builder, "train", pp)  # noqa: E731
  assert shape("random_segments(4)|inception_crop(24)|flip_lr|normalize('imagenet')") == (
      4, 24, 24, 3)
  assert shape("random_segments(4, snippet_frames=3)|inception_crop(24)") == (4, 24, 24, 9)
  assert shape("center_segments(4, clips=2)|resize_shorter(32)|three_crop(32)") == (
      6, 4, 32, 32, 3)
  assert shape("center_segments(4, clips=2)|resize((24, 24))") == (2, 4, 24, 24, 3)
  with pytest.raises(ValueError, match=r"splits are its lists <split>_videofolder.txt: "
                                       r"train, val"):
    gcp.data.num_examples(builder, "test")


def test_eval_reads_the_centre_snippets_of_every_clip_once(frame_store, moving_squares):
  builder = gcp.data.load_builder(f"frames:{frame_store.root}")
  pp = "center_segments(4, snippet_frames=2, clips=2)|resize((32, 48))"
  batches = list(gcp.data.eval_batches(builder, split="val", pp=pp, per_host_batch=2))
  assert len(batches) == gcp.data.num_eval_batches(builder, "val", 2) == 3  # 5 videos
  assert all(b["image"].shape == (2, 2, 4, 32, 48, 6) for b in batches)
  mask = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(mask, [True] * 5 + [False])
  clips = np.concatenate([b["image"] for b in batches])[mask]
  labels = np.concatenate([b["label"] for b in batches])[mask]
  by_color = {v.color: v for v in frame_store.splits["val"]}
  seen = []
  for clip, label in zip(clips, labels):
    v = by_color[moving_squares.square(clip[0, 0, :, :, :3])[0]]
    seen.append(v.id)
    assert label == v.label
    frames = np.array([[[moving_squares.frame_index(v, moving_squares.square(
        clip[k, t, :, :, 3 * l:3 * l + 3])[1]) for l in range(2)] for t in range(4)]
        for k in range(2)])
    starts = clip_starts(v.num_frames, 4, 2, snippet=2)
    np.testing.assert_array_equal(frames[..., 0], starts)
    np.testing.assert_array_equal(frames[..., 1], np.minimum(starts + 1, v.num_frames - 1))
  assert sorted(seen) == sorted(v.id for v in frame_store.splits["val"])  # each once


def test_training_clips_are_random_in_their_segments_and_reproducible(frame_store,
                                                                      moving_squares):
  builder = gcp.data.load_builder(f"frames:{frame_store.root}")
  kw = dict(split="train", pp=TRAIN_PP, per_host_batch=3, seed=1)
  epoch = list(gcp.data.train_batches(builder, epoch=0, **kw))
  assert len(epoch) == 2 and epoch[0]["image"].shape == (3, 3, 32, 48, 3)
  assert epoch[0]["image"].dtype == np.float32 and epoch[0]["label"].dtype == np.int32
  by_color = {v.color: v for v in frame_store.splits["train"]}
  draws = {}
  for e in range(4):
    batches = epoch if e == 0 else list(gcp.data.train_batches(builder, epoch=e, **kw))
    for clip, label in zip(*(np.concatenate([b[k] for b in batches]) for k in
                             ("image", "label"))):
      v = by_color[moving_squares.square(clip[0])[0]]
      assert label == v.label
      frames = [moving_squares.frame_index(v, moving_squares.square(f)[1]) for f in clip]
      begin, end = segment_bounds(v.num_frames, 3)
      assert ((begin <= frames) & (frames < end)).all(), (v, frames)
      draws.setdefault(v.id, set()).add(tuple(frames))
  assert max(len(d) for d in draws.values()) > 1  # random, not fixed per video
  again = list(gcp.data.train_batches(builder, epoch=0, **kw))
  resumed = list(gcp.data.train_batches(builder, epoch=0, start_step=1, **kw))
  for a, b in zip(epoch, again):
    np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(epoch[1]["image"], resumed[0]["image"])
  np.testing.assert_array_equal(epoch[1]["label"], resumed[0]["label"])


def test_crop_and_flip_are_the_same_for_every_frame_of_a_clip(tmp_path, moving_squares):
  # Static videos (every frame the same JPEG): a clip's frames stay equal only if they
  # share the crop window and the flip; across clips the augmentation differs.
  videos = [Video(str(i), i % 2, 8, i, step=0) for i in range(4)]
  store = moving_squares.write(str(tmp_path / "static"), {"train": videos})
  builder = gcp.data.load_builder(f"frames:{store.root}")
  pp = "random_segments(4, snippet_frames=2)|inception_crop(16)|flip_lr"
  clips = np.concatenate([b["image"] for e in range(3) for b in gcp.data.train_batches(
      builder, split="train", pp=pp, per_host_batch=4, seed=0, epoch=e)])
  assert clips.shape == (12, 4, 16, 16, 6)
  frames = clips.reshape(12, 4, 16, 16, 2, 3)  # [clip, segment, H, W, snippet frame, RGB]
  np.testing.assert_array_equal(frames, np.broadcast_to(frames[:, :1, :, :, :1],
                                                        frames.shape))
  firsts = frames[:, 0, :, :, 0]
  assert len({f.tobytes() for f in firsts}) == len(firsts)  # each clip augmented anew


def test_multi_view_test_clips_are_clip_major_three_crops(frame_store):
  builder = gcp.data.load_builder(f"frames:{frame_store.root}")
  kw = dict(split="val", per_host_batch=5)
  views = next(gcp.data.eval_batches(
      builder, pp="center_segments(2, clips=2)|resize_shorter(32)|three_crop(32)", **kw))
  assert views["image"].shape == (5, 6, 2, 32, 32, 3)
  centres = next(gcp.data.eval_batches(
      builder, pp="center_segments(2, clips=2)|resize_shorter(32)|center_crop(32)", **kw))
  np.testing.assert_array_equal(views["image"][:, [1, 4]], centres["image"])
  full = next(gcp.data.eval_batches(builder, pp="center_segments(2, clips=2)", **kw))
  frames = full["image"]  # [5, 2, 2, 32, 48, 3] (no resize: frames of 32 x 48)
  np.testing.assert_array_equal(views["image"][:, [0, 3]], frames[..., :32, :])
  np.testing.assert_array_equal(views["image"][:, [2, 5]], frames[..., 16:, :])


def test_hosts_read_disjoint_parts_that_cover_the_split(frame_store, moving_squares,
                                                        monkeypatch):
  builder = gcp.data.load_builder(f"frames:{frame_store.root}")
  parts = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  for host in range(2):
    monkeypatch.setattr(jax, "process_index", lambda host=host: host)
    batches = list(gcp.data.eval_batches(builder, split="val", pp="center_segments(2)",
                                         per_host_batch=2))
    assert len(batches) == gcp.data.num_eval_batches(builder, "val", 2) == 2  # 3 and 2
    parts.append([moving_squares.square(clip[0])[0] for b in batches
                  for clip in b["image"][b["mask"]]])
  assert sorted(parts[0] + parts[1]) == sorted(v.color for v in frame_store.splits["val"])


# ------------------------------------------------------------------ problems

@pytest.fixture(scope="module")
def broken_store(tmp_path_factory, moving_squares):
  """A store whose train list has the good videos 1 and 9 (whose frame 2 is not a JPEG:
  listed fine, does not decode), then 2 without a folder, 3 with 8 of its 10 listed
  frames, 4 with an empty folder, 5 listed with 0 frames, 6 with label 7, a bad line."""
  good = [Video(str(i), 0, 6, i) for i in (1, 9)]
  store = moving_squares.write(str(tmp_path_factory.mktemp("broken")), {"train": good})
  root = store.root
  moving_squares.write(root, {"extra": [Video("3", 1, 8, 3)]})
  os.makedirs(os.path.join(root, "frames", "4"))
  os.remove(os.path.join(root, "extra_videofolder.txt"))
  with open(os.path.join(root, "frames", "9", "00002.jpg"), "wb") as f:
    f.write(b"not a jpeg")
  with open(os.path.join(root, "train_videofolder.txt"), "a") as f:
    f.write("2 6 0\n3 10 1\n4 5 0\n5 0 1\n6 6 7\nthis line is wrong\n\n")
  return root


def test_bad_lines_missing_frames_and_empty_videos_are_named(broken_store, caplog):
  with caplog.at_level(logging.WARNING):
    builder = gcp.data.load_builder(f"frames:{broken_store}")
  assert gcp.data.num_examples(builder, "train") == 2  # videos 1 and 9
  assert builder.videos["train"].ids == ["1", "9"]
  warning = caplog.text
  assert "train_videofolder.txt: left out 6 of 8 listed video(s)" in warning
  for expected in ("line 8 'this line is wrong': not '<video id> <number of frames> "
                   "<label>'",
                   "6 (line 7): label 7 is not one of the 2 classes of category.txt",
                   "5 (line 6): empty video (0 frames listed)",
                   f"2: no folder {broken_store}/frames/2",
                   "3: missing frames: 2 of the 10 listed (00009.jpg, 00010.jpg)",
                   "4: empty video (none of its 5 listed frames 00001.jpg"):
    assert expected in "\n".join(builder.videos["train"].problems)
  assert "... and 1 more" in warning  # the first 5 shown
  # A frame that is there but does not decode drops its video in the pipeline, counted.
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    batches = list(gcp.data.eval_batches(builder, split="train", pp="center_segments(3)",
                                         per_host_batch=2))
  assert sum(b["mask"].sum() for b in batches) == 1
  assert "train: skipped 1 video(s) that could not be decoded: 9\n" in caplog.text


def test_a_split_without_usable_videos_is_an_error_naming_them(tmp_path, moving_squares):
  store = moving_squares.write(str(tmp_path), {"train": [Video("1", 0, 6, 0)]})
  with open(os.path.join(store.root, "val_videofolder.txt"), "w") as f:
    f.write("2 6 0\n1 six 0\n")
  with pytest.raises(ValueError) as err:
    gcp.data.load_builder(f"frames:{store.root}")
  message = str(err.value)
  assert "val_videofolder.txt: left out 2 of 2 listed video(s)" in message
  assert "2: no folder" in message and "line 2 '1 six 0'" in message
  assert "no usable video: fix the list or the frames" in message
  assert "├── category.txt" in message  # the layout


def test_missing_store_parts_show_the_layout(tmp_path, moving_squares):
  with pytest.raises(FileNotFoundError, match="does not exist") as err:
    gcp.data.load_builder(f"frames:{tmp_path}/nowhere")
  assert "train_videofolder.txt    one video per line" in str(err.value)
  store = moving_squares.write(str(tmp_path / "store"), {"train": [Video("1", 0, 6, 0)]},
                               frames_dir="20bn-something-something-v1",
                               name="img_{:05d}.jpg")
  builder = gcp.data.load_builder(f"frames:{store.root}")  # its only folder holds frames
  assert builder.frame_names == video.FrameNames("img_", 5, ".jpg", 1)
  os.makedirs(os.path.join(store.root, "videos"))
  with pytest.raises(FileNotFoundError, match=r"several folders \(20bn-something-something-"
                                              r"v1, videos\): name the one holding"):
    gcp.data.load_builder(f"frames:{store.root}")
  os.remove(os.path.join(store.root, "category.txt"))
  with pytest.raises(FileNotFoundError, match="has no category.txt"):
    gcp.data.load_builder(f"frames:{store.root}")


def test_frame_names_are_detected():
  detect = video.FrameNames.detect
  assert detect(["00002.jpg", "00001.jpg", "x.txt"]) == video.FrameNames("", 5, ".jpg", 1)
  # TSN stores RGB and flow side by side: the images are the shortest-named kind.
  assert detect(["img_00001.jpg", "flow_x_00001.jpg", "flow_y_00001.jpg"]) == \
      video.FrameNames("img_", 5, ".jpg", 1)
  assert detect(["0.png", "1.png", "10.png"]) == video.FrameNames("", 0, ".png", 0)
  assert detect(["notes.txt"]) is None
  names = video.FrameNames("img_", 0, ".png", 0)
  assert [names.name(i) for i in (0, 11)] == ["img_0.png", "img_11.png"]
  assert list(names.tf_names(tf.constant([0, 11])).numpy()) == [b"img_0.png", b"img_11.png"]


# ------------------------------------------------------------------ decoding video files

def test_decode_writes_a_frame_store_and_lists_failures(tmp_path, moving_squares, caplog):
  pytest.importorskip("av")
  videos = tmp_path / "videos"
  (videos / "sub").mkdir(parents=True)
  right, left = Video("a1", 0, 6, 1), Video("a2", 1, 7, 2)
  moving_squares.write_video_file(str(videos / "a1.mp4"), right)
  moving_squares.write_video_file(str(videos / "sub" / "a2.webm"), left, codec="libvpx")
  (videos / "bad.mp4").write_bytes(b"not a video")
  (tmp_path / "train.txt").write_text("a1.mp4 0\nsub/a2.webm 1\nbad.mp4 0\ngone 1\nx\n")
  (tmp_path / "classes.txt").write_text("right\nleft\n")
  out = str(tmp_path / "store")
  argv = ["decode", str(videos), str(tmp_path / "train.txt"), out, "--split", "train",
          "--classes", str(tmp_path / "classes.txt"), "--workers", "2"]
  with caplog.at_level(logging.WARNING):
    assert video.main(argv) == 0
  for expected in ("left out 3 of 5 listed video(s)", "line 5 'x': not '<video file or id>",
                   "bad: cannot decode", "gone: no video file gone.*"):
    assert expected in caplog.text
  builder = gcp.data.load_builder(f"frames:{out}")
  assert builder.info.features["label"].names == ["right", "left"]
  assert builder.videos["train"].ids == ["a1", "a2"]
  np.testing.assert_array_equal(builder.videos["train"].num_frames, [6, 7])
  for v in (right, left):  # every frame decoded, in order (the square's position)
    for i in range(v.num_frames):
      data = tf.io.read_file(os.path.join(out, "frames", v.id, f"{i + 1:05d}.jpg"))
      color, x = moving_squares.square(tf.io.decode_jpeg(data).numpy())
      assert (color, moving_squares.frame_index(v, x)) == (v.color, i)
  # Resumable: decoded videos are kept; another split must use the same classes.
  os.remove(videos / "a1.mp4")
  assert video.main(argv[:5] + ["val"] + argv[6:]) == 0
  assert (tmp_path / "store" / "val_videofolder.txt").read_text() == "a1 6 0\na2 7 1\n"
  (tmp_path / "other.txt").write_text("a\nb\n")
  assert video.main(argv[:5] + ["test", "--classes", str(tmp_path / "other.txt")]) == 1


def test_ssv2_and_kinetics_annotations(tmp_path):
  labels = {"Pushing something from left to right": "1", "Holding something": "0"}
  (tmp_path / "labels.json").write_text(json.dumps(labels))
  (tmp_path / "train.json").write_text(json.dumps([
      {"id": "78687", "template": "Pushing [something] from left to right"},
      {"id": "42326", "template": "Holding [something]"},
      {"id": "1", "template": "Juggling [something]"}]))
  entries, names, problems = video.read_annotations(str(tmp_path / "train.json"),
                                                    str(tmp_path / "labels.json"))
  assert entries == [("78687", 1), ("42326", 0)]
  assert names == ["Holding something", "Pushing something from left to right"]
  assert problems == ["1: unknown template 'Juggling [something]'"]
  (tmp_path / "k400.csv").write_text(
      "label,youtube_id,time_start,time_end,split\n"
      "zumba,--GkrdYZ9Tc,0,10,val\nabseiling,0wR5jVB-WPk,417,427,val\n")
  entries, names, _ = video.read_annotations(str(tmp_path / "k400.csv"))
  assert names == ["abseiling", "zumba"]
  assert entries == [("--GkrdYZ9Tc_000000_000010", 1), ("0wR5jVB-WPk_000417_000427", 0)]
  entries, _, problems = video.read_annotations(str(tmp_path / "k400.csv"),
                                                known_classes=["zumba"])
  assert entries == [("--GkrdYZ9Tc_000000_000010", 0)]
  assert problems == ["0wR5jVB-WPk_000417_000427: label 'abseiling' is not a known class"]
  (tmp_path / "d48.json").write_text(json.dumps([{"vid_name": "-mmq0PT-u8k_00155",
                                                  "label": 26, "start_frame": 0}]))
  assert video.read_annotations(str(tmp_path / "d48.json"))[0] == [("-mmq0PT-u8k_00155", 26)]
