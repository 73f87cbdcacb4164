"""Videos as folders of frames (the Something-Something V1 layout of TSN / TSM), TSN
segment sampling, and the command that decodes video files into that layout once.

    config.data.name = "frames:/path/to/something/v1"
    config.data.train_split, config.data.eval_split = "train", "val"
    config.data.train_pp = "random_segments(8)|inception_crop(224)|flip_lr|normalize('imagenet')"
    config.data.eval_pp = ("center_segments(8, clips=2)|resize_shorter(256)|three_crop(256)|"
                           "normalize('imagenet')")   # SSv1's 2 clips x 3 crops at 256

Layout (`LAYOUT` below, shown by every error about it): a folder of frames per video, an
annotation list per split (`<split>_videofolder.txt`: "video_id num_frames label" per line,
TSM's lists) and the class names (`category.txt`, TSM's). Frames are numbered from 1 (or 0)
in any one naming for the whole store, found in the first video's folder: `00001.jpg`
(Something-Something V1, and what `decode` writes), `img_00001.jpg` (TSN / mmaction), ...

At load, every listed video is checked: a bad list line, an empty video (0 frames), a
missing video folder or missing frames (its first or last listed frame absent) leave the
video out, with one warning per split naming the first few ids and the reason; a split with
no usable video is an error. (A frame that is present but does not decode drops its video
in the pipeline, counted in the log like an undecodable image.)

Sampling and preprocessing: the preprocessing string of a frame store starts with a
sampling op, followed by ops of `gcp.data.preprocess` applied to every frame:

- `random_segments(T, snippet_frames=1)` (training): the frames are cut into T segments of
  equal length (up to rounding), and a random snippet start is drawn in each;
- `center_segments(T, snippet_frames=1, clips=1)` (testing): the centre of each segment;
  with K clips, clip k starts at fraction (k + 1/2) / K of each segment (TSN's evenly
  shifted test clips; the centre for K = 1).

The sampling is part of the preprocessing strings as the other differences between training
and testing are (random vs. centre crop): `train_pp` and `eval_pp` may sample different T
(TSN tests 25 segments of a model trained on 3). The model's `snippet_frames` must match.

A snippet is `snippet_frames` consecutive frames from each start (clamped at the last
frame; AMS-Net*: 3), stacked along the channels frame-major (RGB RGB RGB): C = 3 x
snippet_frames. Every frame of a clip is preprocessed with the clip's seed, so that random
ops (crop window, flip) are identical across the clip's frames (stateless ops, same seed,
same frame size). Examples are `image` `[T, H, W, C]`; with a view op (`three_crop`,
`ten_crop`) or K > 1 clips `[V, T, H, W, C]`, V = clips x crops (clip-major).
`gcp.data.pipeline` batches, shuffles, shards and pads them as it does images.

Decoding video files (Something-Something V2 .webm, Kinetics / Diving48 .mp4) into a frame
store, once per split, with PyAV (`pip install av`):

    python -m gcp.data.video decode VIDEOS_DIR LIST_FILE OUT_ROOT --split train

LIST_FILE is one of (video files are found anywhere under VIDEOS_DIR by name, without the
extension; that name is the video id):
- Something-Something V2: `something-something-v2-{train,validation}.json`, with
  `--classes something-something-v2-labels.json`;
- Kinetics: the official csv (`label,youtube_id,time_start,time_end,...`; files named
  `<youtube_id>_<start:06d>_<end:06d>.mp4`); classes: the sorted labels of the first split
  decoded (or `--classes`, one name per line);
- Diving48: `Diving48_V2_{train,test}.json` (`vid_name`, `label`);
- any other: a text file of "<video file or id> <label>" lines (labels 0..K-1), with
  `--classes` (one name per line) or numbered classes.
It writes `OUT_ROOT/frames/<id>/00001.jpg, ...`, `OUT_ROOT/<split>_videofolder.txt` and
`OUT_ROOT/category.txt`, with a progress bar; videos that fail to decode or have no frame
are left out and listed. Run it again to resume: the frames of a video are kept if they
were decoded from the same file (absolute path, size, modification time) with the same
`--short_side` and `--quality`, as `OUT_ROOT/decoded.jsonl` records; others are decoded
again (and replace the old frames once complete). Frames of a video whose file is not
found are kept as they are (with an info line): they cannot be checked.
"""
import argparse
import collections
import concurrent.futures
import csv
import dataclasses
import json
import os
import re
import shutil
import sys
import types

from absl import logging
import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
import tqdm

from gcp.data import preprocess
from gcp.data.folder import SplitSource, replace_dir

FRAMES_DIR = "frames"
CLASSES_FILE = "category.txt"
LIST_SUFFIX = "_videofolder.txt"
MANIFEST_FILE = "decoded.jsonl"  # what `decode` decoded each frames/<id> from: JSON lines
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
VIDEO_EXTENSIONS = (".webm", ".mp4", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg",
                    ".flv")
SHOWN_PROBLEMS = 5  # ids named in a warning or error

LAYOUT = """\
{root}/
├── frames/                  one folder per video (or the data set's own, e.g.
│   │                        20bn-something-something-v1/, if it is the only folder)
│   ├── 1/                   a video id
│   │   ├── 00001.jpg        its frames, numbered from 1 (or 0): 00001.jpg, img_00001.jpg,
│   │   └── ...              ... (one naming for the whole store)
│   └── ...
├── category.txt             class names, one per line: line i names label i
├── train_videofolder.txt    one video per line: <video id> <number of frames> <label>
└── val_videofolder.txt      (TSM's lists; split <s> reads <s>_videofolder.txt)"""


def expected_layout(root: str) -> str:
  return ("Expected the frame store layout (Something-Something V1 / TSM; "
          "`python -m gcp.data.video decode` writes it from video files):\n\n" +
          LAYOUT.format(root=root.rstrip("/")))


# --------------------------------------------------------------------------- the store

@dataclasses.dataclass(frozen=True)
class FrameNames:
  """How frame files are named: `prefix`, the number (zero-padded to `width` digits; 0: not
  padded), `suffix`; the first frame has the number `start`."""
  prefix: str = ""
  width: int = 5
  suffix: str = ".jpg"
  start: int = 1

  _FILE = re.compile(r"^(.*?)(\d+)(" + "|".join(re.escape(e) for e in IMAGE_EXTENSIONS) +
                     r")$", re.IGNORECASE)

  def name(self, index: int) -> str:
    """The file of frame `index` (0-based)."""
    return f"{self.prefix}{str(index + self.start).zfill(self.width)}{self.suffix}"

  def tf_names(self, index: tf.Tensor) -> tf.Tensor:
    """`name` of an int tensor of 0-based frame indices, elementwise."""
    number = tf.strings.as_string(index + self.start, width=self.width or -1, fill="0")
    return self.prefix + number + self.suffix

  @classmethod
  def detect(cls, files) -> "FrameNames | None":
    """The naming of the most numerous numbered images among `files` (ties: the shorter
    prefix, e.g. TSN's `img_` before `flow_x_`); None if there are none."""
    numbers = collections.defaultdict(list)
    for f in files:
      m = cls._FILE.match(f)
      if m:
        numbers[(m[1], m[3])].append(m[2])
    if not numbers:
      return None
    (prefix, suffix), found = min(numbers.items(),
                                  key=lambda kv: (-len(kv[1]), len(kv[0][0]), kv[0]))
    first = min(found, key=int)
    width = len(first) if len(first) > 1 and first.startswith("0") else 0
    return cls(prefix, width, suffix, int(first))


@dataclasses.dataclass
class VideoList:
  """The usable videos of a split, and why the others were left out."""
  ids: list[str]
  num_frames: np.ndarray  # int32
  labels: np.ndarray  # int32
  problems: list[str]  # "<id or line>: <reason>"


def _subdirs(path: str) -> list[str]:
  with os.scandir(path) as it:
    return sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))


def _frames_root(root: str) -> str:
  dirs = _subdirs(root)
  if FRAMES_DIR in dirs or len(dirs) == 1:
    return os.path.join(root, FRAMES_DIR if FRAMES_DIR in dirs else dirs[0])
  what = (f"several folders ({', '.join(dirs)}): name the one holding the frames "
          f"'{FRAMES_DIR}'" if dirs else "no folder of frames")
  raise FileNotFoundError(f"frame store {root} has {what}. {expected_layout(root)}")


def read_classes(path: str) -> list[str]:
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def _parse_list(path: str, num_classes: int) -> tuple[list[tuple[str, int, int]], list[str]]:
  """`(id, num_frames, label)` of each good line of an annotation list, and the problems
  of the others (bad lines, labels out of range, empty videos)."""
  entries, problems = [], []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      fields = line.rsplit(maxsplit=2)  # the id may hold spaces
      try:
        video, frames, label = fields[0].strip(), int(fields[1]), int(fields[2])
      except (ValueError, IndexError):
        problems.append(f"line {number} {line.strip()!r}: not '<video id> <number of "
                        "frames> <label>'")
        continue
      if not 0 <= label < num_classes:
        problems.append(f"{video} (line {number}): label {label} is not one of the "
                        f"{num_classes} classes of {CLASSES_FILE}")
      elif frames < 1:
        problems.append(f"{video} (line {number}): empty video ({frames} frames listed)")
      else:
        entries.append((video, frames, label))
  return entries, problems


def _frames_problem(video_dir: str, num_frames: int, names: FrameNames) -> str | None:
  """Why the frames 0 .. num_frames - 1 of a video are not all there (first and last
  checked; the full list only to explain a problem), or None."""
  if all(os.path.isfile(os.path.join(video_dir, names.name(i))) for i in (0, num_frames - 1)):
    return None
  try:
    files = set(os.listdir(video_dir))
  except (FileNotFoundError, NotADirectoryError):
    return f"no folder {video_dir}"
  missing = [names.name(i) for i in range(num_frames) if names.name(i) not in files]
  if len(missing) == num_frames:
    return (f"empty video (none of its {num_frames} listed frames {names.name(0)}, ... in "
            f"{video_dir}, which holds {len(files)} file(s))")
  return (f"missing frames: {len(missing)} of the {num_frames} listed ("
          f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")


def _check_frames(frames_root: str, entries, names: FrameNames, desc: str) -> list:
  """The problem (or None) of each entry's frames, checked by threads (file systems
  answer many requests at once); a progress bar if it takes a while."""
  def check(chunk):
    return [_frames_problem(os.path.join(frames_root, v), n, names) for v, n, _ in chunk]

  chunks = [entries[i:i + 256] for i in range(0, len(entries), 256)]
  with concurrent.futures.ThreadPoolExecutor(16) as pool, tqdm.tqdm(
      total=len(entries), desc=desc, unit="video", delay=2, dynamic_ncols=True,
      disable=jax.process_index() != 0) as bar:
    results = []
    for result in pool.map(check, chunks):
      results.extend(result)
      bar.update(len(result))
  return results


def _report(what: str, problems: list[str], total: int) -> str:
  shown = "\n".join("  " + p for p in problems[:SHOWN_PROBLEMS])
  more = (f"\n  ... and {len(problems) - SHOWN_PROBLEMS} more"
          if len(problems) > SHOWN_PROBLEMS else "")
  return f"{what}: left out {len(problems)} of {total} listed video(s):\n{shown}{more}"


def scan(root: str) -> tuple[str, FrameNames, list[str], dict[str, VideoList]]:
  """Reads and checks the frame store `root`: (frames folder, frame naming, class names,
  {split: VideoList}). Problems are logged (a warning per split).

  Raises:
    FileNotFoundError: `root` is missing or not in the layout (the message shows it).
    ValueError: a split has no usable video (the message names the first problems).
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(f"frame store {root} does not exist. {expected_layout(root)}")
  lists = sorted(f for f in os.listdir(root) if f.endswith(LIST_SUFFIX))
  missing = [name for name, found in ((CLASSES_FILE, os.path.isfile(os.path.join(
      root, CLASSES_FILE))), (f"<split>{LIST_SUFFIX}", lists)) if not found]
  if missing:
    raise FileNotFoundError(f"frame store {root} has no {' and no '.join(missing)}. "
                            f"{expected_layout(root)}")
  frames_root = _frames_root(root)
  classes = read_classes(os.path.join(root, CLASSES_FILE))
  parsed = {f[:-len(LIST_SUFFIX)]: _parse_list(os.path.join(root, f), len(classes))
            for f in lists}
  names = None
  for video, _, _ in (e for entries, _ in parsed.values() for e in entries):
    if os.path.isdir(os.path.join(frames_root, video)):
      names = FrameNames.detect(os.listdir(os.path.join(frames_root, video)))
      if names:
        break
  if names is None:
    raise FileNotFoundError(f"frame store {root}: no listed video has a folder of numbered "
                            f"frames in {frames_root}. {expected_layout(root)}")
  splits = {}
  for split, (entries, problems) in parsed.items():
    found = _check_frames(frames_root, entries, names, f"checking {split} frames")
    problems = problems + [f"{v}: {p}" for (v, _, _), p in zip(entries, found) if p]
    good = [e for e, p in zip(entries, found) if p is None]
    what = f"frame store {root}, {split}{LIST_SUFFIX}"
    if not good:
      raise ValueError(_report(what, problems, len(problems)) +
                       f"\nno usable video: fix the list or the frames. "
                       f"{expected_layout(root)}")
    if problems:
      logging.warning("%s\nFix the list or the frames to use them (python -m "
                      "gcp.data.video decode writes consistent ones).",
                      _report(what, problems, len(good) + len(problems)))
    splits[split] = VideoList([v for v, _, _ in good],
                              np.array([n for _, n, _ in good], np.int32),
                              np.array([l for _, _, l in good], np.int32), problems)
  return frames_root, names, classes, splits


class FrameSource(SplitSource):
  """A frame store read directly from its files, in place of a TFDS builder.

  `gcp.data.pipeline` reads it through `num_examples(split)`, `read(split, shuffle_seed=)`,
  `preprocessing(pp)` and `info.features`; splits accept the TFDS slicing syntax
  (`train[:10%]`) and `tfds.split_for_jax_process`.
  """

  image_shape = (None, None, 3)  # a stored frame
  SPLITS = f"its lists <split>{LIST_SUFFIX}"

  def __init__(self, root: str):
    self.root = root
    self.name = f"frames:{root}"
    self.frames_root, self.frame_names, classes, self.videos = scan(root)
    self._split_infos = {
        split: tfds.core.SplitInfo(name=split, shard_lengths=[len(v.ids)], num_bytes=0)
        for split, v in self.videos.items()}
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Video(shape=(None, None, None, 3)),
        "label": tfds.features.ClassLabel(names=classes)})
    self.info = types.SimpleNamespace(name=self.name, features=features,
                                      splits=self._split_infos)


  def read(self, split, *, shuffle_seed: int | None = None) -> tf.data.Dataset:
    """`{"image": {"dir": the video's folder, "num_frames": int32}, "label": int32,
    "name": the video id}` of `split`; in a random order fixed by `shuffle_seed`, else in
    the list's order."""
    parts = [(name, slice(start, end)) for name, start, end in self._slices(split)]
    ids = np.array([v for name, s in parts for v in self.videos[name].ids[s]], dtype=str)
    frames = np.concatenate([self.videos[name].num_frames[s] for name, s in parts])
    labels = np.concatenate([self.videos[name].labels[s] for name, s in parts])
    if shuffle_seed is not None:
      order = np.random.default_rng(shuffle_seed).permutation(len(labels))
      ids, frames, labels = ids[order], frames[order], labels[order]
    dirs = np.array([os.path.join(self.frames_root, v) for v in ids], dtype=str)
    return tf.data.Dataset.from_tensor_slices(
        {"image": {"dir": dirs, "num_frames": frames}, "label": labels, "name": ids})

  def preprocessing(self, pp: str) -> "ClipPreprocess":
    return build(pp, self.frame_names)


def load(root: str) -> FrameSource:
  """The frame store `root` (see `scan` for what is checked and raised)."""
  return FrameSource(os.path.abspath(os.path.expanduser(root)))


# --------------------------------------------------------------------------- sampling

@dataclasses.dataclass(frozen=True)
class Sampling:
  """TSN segment sampling of `clips` clips of `num_segments` snippets of `snippet_frames`
  consecutive frames; `random`: a random snippet per segment (training), else evenly
  shifted (testing)."""
  num_segments: int
  snippet_frames: int = 1
  clips: int = 1
  random: bool = False

  def __post_init__(self):
    for field in ("num_segments", "snippet_frames", "clips"):
      value = getattr(self, field)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"frame sampling: {field} must be a positive integer, got "
                         f"{value!r}")
    if self.random and self.clips != 1:
      raise ValueError("random frame sampling draws one clip")

  def frames(self, num_frames, seed=None) -> tf.Tensor:
    """0-based frame indices `[clips, num_segments, snippet_frames]` (int32) of a video
    of `num_frames` frames; `seed` (int `[2]`) draws the random starts."""
    n = tf.cast(num_frames, tf.int64)
    starts = tf.maximum(n - self.snippet_frames + 1, 1)  # possible snippet starts
    t = tf.range(self.num_segments, dtype=tf.int64)
    if self.random:
      begin = starts * t // self.num_segments
      length = tf.maximum(starts * (t + 1) // self.num_segments - begin, 1)
      u = tf.random.stateless_uniform([self.num_segments], seed, dtype=tf.float64)
      first = (begin + tf.minimum(tf.cast(u * tf.cast(length, tf.float64), tf.int64),
                                  length - 1))[None]
    else:  # floor(starts * (t + (k + 1/2) / K) / T), exactly in integers
      k = tf.range(self.clips, dtype=tf.int64)[:, None]
      first = starts * (2 * self.clips * t + 2 * k + 1) // (2 * self.clips * self.num_segments)
    index = first[..., None] + tf.range(self.snippet_frames, dtype=tf.int64)
    return tf.cast(tf.minimum(index, n - 1), tf.int32)


def random_segments(num_segments: int, snippet_frames: int = 1) -> Sampling:
  """Training: a random snippet start in each of `num_segments` equal segments."""
  return Sampling(num_segments, snippet_frames, random=True)


def center_segments(num_segments: int, snippet_frames: int = 1, clips: int = 1) -> Sampling:
  """Testing: the centre of each segment; `clips` clips with evenly shifted starts."""
  return Sampling(num_segments, snippet_frames, clips)


SAMPLINGS = {f.__name__: f for f in (random_segments, center_segments)}


class ClipPreprocess:
  """A frame store's preprocessing: a sampling op, then per-frame ops with the clip's seed.

  `gcp.data.preprocess.Preprocess`'s interface for `gcp.data.pipeline`: `decode(video,
  seed)` samples the frames and reads and decodes them (may raise: a missing or corrupt
  frame; the pipeline drops those videos), `finish(frames, seed)` preprocesses them into
  the clip `[T, H, W, C]` or `[V, T, H, W, C]` (module docstring); `__call__` does both.
  Each stage traces the frame ops once (`tf.map_fn` over the frames).
  """

  def __init__(self, sampling: Sampling, frame_pp: preprocess.Preprocess, names: FrameNames):
    self.sampling, self.frame_pp, self.names = sampling, frame_pp, names

  @staticmethod
  def _seeds(seed):
    """(sampling seed, frames seed): one random draw each per clip."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, 2))

  def decode(self, video, seed) -> tf.Tensor:
    """The clip's frames `[K * T * L, h, w, C]` uint8, decoded (and cropped, if the first
    frame op is fused with decoding); frames of differing sizes raise (the pipeline drops
    the video)."""
    sample_seed, frame_seed = self._seeds(seed)
    index = self.sampling.frames(video["num_frames"], sample_seed)
    paths = tf.reshape(video["dir"] + "/" + self.names.tf_names(index), [-1])
    return tf.map_fn(lambda path: self.frame_pp.decode(tf.io.read_file(path), frame_seed),
                     paths, fn_output_signature=tf.uint8)

  def finish(self, frames: tf.Tensor, seed) -> tf.Tensor:
    _, frame_seed = self._seeds(seed)
    return self._arrange(tf.map_fn(lambda frame: self.frame_pp.finish(frame, frame_seed),
                                   frames, fn_output_signature=tf.float32))

  def __call__(self, video, seed) -> tf.Tensor:
    return self.finish(self.decode(video, seed), seed)

  def _arrange(self, frames: tf.Tensor) -> tf.Tensor:
    """`[K * T * L, (V,) H, W, C]` frames, clip-, segment-, snippet-major -> the clip."""
    s = self.sampling
    views = frames.shape.rank == 5
    dims = tf.shape(frames)
    x = tf.reshape(frames, tf.concat([[s.clips, s.num_segments, s.snippet_frames],
                                      dims[1:]], 0))
    # Snippet frames next to the channels, which they join; views next to the clips.
    x = tf.transpose(x, [0, 3, 1, 4, 5, 2, 6] if views else [0, 1, 3, 4, 2, 5])
    num_views = s.clips * (frames.shape[1] if views else 1)
    channels = s.snippet_frames * frames.shape[-1]
    lead = [num_views] if num_views > 1 else []
    x = tf.reshape(x, tf.concat([tf.constant(lead + [s.num_segments], tf.int32),
                                 dims[-3:-1], [channels]], 0))
    x.set_shape(lead + [s.num_segments, *frames.shape[-3:-1], channels])
    return x


def build(pp: str, names: FrameNames) -> ClipPreprocess:
  """The preprocessing `pp` of a frame store: "<sampling op>|<per-frame ops>"."""
  first, _, rest = pp.partition("|")
  if preprocess.parse_op(first)[0] not in SAMPLINGS:
    raise ValueError(
        f"the preprocessing of a frame store starts with its frame sampling, "
        f"random_segments(T) (training) or center_segments(T) (testing), e.g. "
        f"\"random_segments(8)|inception_crop(224)|flip_lr|normalize('imagenet')\"; got "
        f"{pp!r}")
  sampling = preprocess.make_op(SAMPLINGS, first, "frame sampling op")
  return ClipPreprocess(sampling, preprocess.build(rest, FrameSource.image_shape), names)


# --------------------------------------------------------------------------- decoding

DECODED_NAMES = FrameNames()  # 00001.jpg, ... as Something-Something V1


def read_annotations(list_file: str, classes_file: str | None = None,
                     known_classes: list[str] | None = None):
  """The videos of an annotation file (see the module docstring for the formats).

  Returns `(entries, class_names, problems)`: entries `(video id, label)`, class names (or
  None: numbered), and the bad lines. String labels (Kinetics) are numbered by
  `known_classes`, else `classes_file`, else their sorted set.
  """
  entries, problems = [], []
  names = read_classes(classes_file) if classes_file and not classes_file.endswith(
      ".json") else None
  if list_file.endswith(".json"):
    with open(list_file) as f:
      items = json.load(f)
    if items and "template" in items[0]:  # Something-Something V2
      if not classes_file:
        raise ValueError("Something-Something V2 needs --classes "
                         "something-something-v2-labels.json")
      with open(classes_file) as f:
        ids = {k: int(v) for k, v in json.load(f).items()}
      names = sorted(ids, key=ids.get)
      for item in items:
        template = item["template"].replace("[", "").replace("]", "")
        if template in ids:
          entries.append((str(item["id"]), ids[template]))
        else:
          problems.append(f"{item['id']}: unknown template {item['template']!r}")
    else:  # Diving48 (vid_name, label)
      for item in items:
        entries.append((item["vid_name"], int(item["label"])))
  elif list_file.endswith(".csv"):  # Kinetics
    with open(list_file, newline="") as f:
      rows = list(csv.DictReader(f))
    names = known_classes or names or sorted({r["label"] for r in rows})
    ids = {n: i for i, n in enumerate(names)}
    for r in rows:
      video = f"{r['youtube_id']}_{int(float(r['time_start'])):06d}_" \
              f"{int(float(r['time_end'])):06d}"
      if r["label"] in ids:
        entries.append((video, ids[r["label"]]))
      else:
        problems.append(f"{video}: label {r['label']!r} is not a known class")
  else:
    with open(list_file) as f:
      for number, line in enumerate(f, 1):
        fields = line.rsplit(maxsplit=1)
        if not fields:
          continue
        try:
          entries.append((_stem(fields[0]), int(fields[1])))
        except (ValueError, IndexError):
          problems.append(f"line {number} {line.strip()!r}: not '<video file or id> "
                          "<label>'")
  return entries, names, problems


def _stem(path: str) -> str:
  name = os.path.basename(path)
  return name[:-len(os.path.splitext(name)[1])] if name.lower().endswith(
      VIDEO_EXTENSIONS) else name


def decode_video(path: str, out_dir: str, *, short_side: int = 0, quality: int = 95) -> int:
  """Writes the frames of the video file `path` as `out_dir/00001.jpg, ...` (resized so
  that the shorter side is `short_side` if > 0); returns their number. The folder appears
  complete or not at all (written beside it, then moved into place, replacing an older
  one); nothing if no frame decodes."""
  import av  # pylint: disable=import-outside-toplevel  (only this command needs PyAV)
  partial = out_dir + ".partial"
  shutil.rmtree(partial, ignore_errors=True)
  os.makedirs(partial)
  count = 0
  try:
    with av.open(path) as container:
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      for frame in container.decode(stream):
        size = {}
        if short_side:
          scale = short_side / min(frame.width, frame.height)
          size = dict(width=round(frame.width * scale), height=round(frame.height * scale))
        frame.to_image(**size).save(os.path.join(partial, DECODED_NAMES.name(count)),
                                    quality=quality)
        count += 1
    if count:
      replace_dir(partial, out_dir)
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  return count


def _source(path: str, short_side: int, quality: int) -> dict:
  """What a video's frames are decoded from: its file (absolute path, size, modification
  time) and the decoding settings."""
  st = os.stat(path)
  return {"source": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
          "short_side": short_side, "quality": quality}


def _read_manifest(out_root: str) -> dict[str, dict]:
  """A frame store's `MANIFEST_FILE`: video id -> `_source` of its frames (the last line of
  an id counts; a line cut short by a killed run is ignored)."""
  manifest = {}
  try:
    with open(os.path.join(out_root, MANIFEST_FILE)) as f:
      for line in f:
        try:
          entry = json.loads(line)
          manifest[entry.pop("video")] = entry
        except (ValueError, KeyError, AttributeError, TypeError):
          continue
  except FileNotFoundError:
    pass
  return manifest


def _write_manifest(out_root: str, manifest: dict[str, dict]) -> None:
  """Rewrites `MANIFEST_FILE` with one line per video (replacing the file at once)."""
  path = os.path.join(out_root, MANIFEST_FILE)
  with open(path + ".tmp", "w") as f:
    f.writelines(json.dumps({"video": v, **source}) + "\n" for v, source in manifest.items())
  os.replace(path + ".tmp", path)


def _index_videos(videos_dir: str) -> dict[str, str]:
  """Video files under `videos_dir` by name without extension (the first of duplicates)."""
  found, duplicates = {}, []
  for dirpath, dirnames, filenames in os.walk(videos_dir, followlinks=True):
    dirnames.sort()
    for f in sorted(filenames):
      if f.lower().endswith(VIDEO_EXTENSIONS):
        (duplicates.append(f) if _stem(f) in found else
         found.setdefault(_stem(f), os.path.join(dirpath, f)))
  if duplicates:
    logging.warning("%s: %d video file name(s) occur more than once (using the first), "
                    "e.g. %s", videos_dir, len(duplicates), duplicates[0])
  return found


def decode(videos_dir: str, list_file: str, out_root: str, split: str, *,
           classes_file: str | None = None, short_side: int = 0, quality: int = 95,
           workers: int = 8, progress: bool = True) -> dict:
  """Decodes the videos of `list_file` into the frame store `out_root` as split `split`.

  Frames decoded earlier are kept if `MANIFEST_FILE` records the same source file and
  settings (see the module docstring), else decoded again. Returns `{"videos": number
  listed, "problems": ["<id or line>: <reason>", ...]}` (videos not found, not decodable or
  without frames, bad annotation lines).
  """
  classes_path = os.path.join(out_root, CLASSES_FILE)
  known = read_classes(classes_path) if os.path.isfile(classes_path) else None
  entries, names, problems = read_annotations(list_file, classes_file, known)
  if names is None:
    names = known or [str(i) for i in range(max((l for _, l in entries), default=-1) + 1)]
  if known and known != names:
    raise ValueError(f"{classes_path} (from an earlier split) differs from the classes of "
                     f"{list_file}: decode every split with the same --classes, or into "
                     "another OUT_ROOT")
  problems += [f"{v}: label {l} is not one of the {len(names)} classes" for v, l in entries
               if not 0 <= l < len(names)]
  entries = [(v, l) for v, l in entries if 0 <= l < len(names)]
  listed = len(entries) + len(problems)
  files = _index_videos(videos_dir)
  frames_root = os.path.join(out_root, FRAMES_DIR)
  os.makedirs(frames_root, exist_ok=True)
  manifest = _read_manifest(out_root)
  unchecked = []  # ids whose frames are kept without their file

  def run(entry):
    """(video, label, number of frames, problem or None, `_source` if decoded now)."""
    video, label = entry
    out = os.path.join(frames_root, video)
    if video not in files:
      if os.path.isdir(out):
        unchecked.append(video)
        return video, label, len(os.listdir(out)), None, None
      return video, label, 0, f"no video file {video}.* under {videos_dir}", None
    source = _source(files[video], short_side, quality)
    if os.path.isdir(out) and manifest.get(video) == source:  # decoded from this very file
      return video, label, len(os.listdir(out)), None, None
    try:
      count = decode_video(files[video], out, short_side=short_side, quality=quality)
    except Exception as e:  # pylint: disable=broad-except  (one bad file must not stop all)
      return video, label, 0, f"cannot decode {files[video]}: {type(e).__name__}: {e}", None
    if not count:
      return video, label, 0, f"empty video: no frame in {files[video]}", None
    return video, label, count, None, source

  decoded = {}
  with concurrent.futures.ThreadPoolExecutor(workers) as pool, tqdm.tqdm(
      total=len(entries), desc=f"decoding {split}", unit="video", disable=not progress,
      dynamic_ncols=True) as bar, open(os.path.join(out_root, MANIFEST_FILE), "a") as log:
    for video, label, count, problem, source in pool.map(run, entries):
      if problem:
        problems.append(f"{video}: {problem}")
        bar.set_postfix(skipped=len(problems), refresh=False)
      else:
        decoded[video] = (count, label)
      if source:  # recorded at once: a killed run keeps what it decoded
        manifest[video] = source
        log.write(json.dumps({"video": video, **source}) + "\n")
        log.flush()
      bar.update()
  _write_manifest(out_root, manifest)
  if unchecked:
    logging.info("%d video(s) of %s have no file under %s: kept their frames as decoded "
                 "earlier, unchecked (e.g. %s)", len(unchecked), list_file, videos_dir,
                 unchecked[0])
  with open(os.path.join(out_root, f"{split}{LIST_SUFFIX}"), "w") as f:
    f.writelines(f"{v} {n} {l}\n" for v, (n, l) in decoded.items())
  if not known:
    with open(classes_path, "w") as f:
      f.writelines(f"{n}\n" for n in names)
  if problems:
    logging.warning(_report(f"decoding {list_file} into {out_root}", problems, listed))
  return {"videos": len(decoded), "problems": problems}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m gcp.data.video",
      description="Frame stores for video training (--config.data.name=frames:ROOT).",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=expected_layout("OUT_ROOT"))
  commands = parser.add_subparsers(dest="command", required=True)
  dec = commands.add_parser(
      "decode", formatter_class=argparse.RawDescriptionHelpFormatter,
      help="decode video files (PyAV) into a frame store, one split per run",
      description=__doc__[__doc__.index("Decoding video files"):])
  dec.add_argument("videos_dir", help="folder holding the video files (searched recursively)")
  dec.add_argument("list_file", help="annotations: SSv2 / Diving48 .json, Kinetics .csv, or "
                                     "'<video file or id> <label>' lines")
  dec.add_argument("out_root", help="the frame store to write (or extend)")
  dec.add_argument("--split", required=True, help="split name, e.g. train or val")
  dec.add_argument("--classes", default=None, help="class names: one per line, or SSv2's "
                                                   "labels .json")
  dec.add_argument("--short_side", type=int, default=0,
                   help="resize frames to this shorter side (default 0: keep)")
  dec.add_argument("--quality", type=int, default=95, help="JPEG quality")
  dec.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  args = parser.parse_args(argv)
  try:
    import av  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    print("error: decoding needs PyAV: pip install av", file=sys.stderr)
    return 1
  try:
    result = decode(args.videos_dir, args.list_file, args.out_root, args.split,
                    classes_file=args.classes, short_side=args.short_side,
                    quality=args.quality, workers=args.workers)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  root = os.path.abspath(args.out_root)
  print(f"{args.split}: {result['videos']:,} videos" +
        (f", {len(result['problems'])} left out (see the warning)" if result["problems"]
         else "") + f"\nwrote {root}; train with --config.data.name=frames:{root}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
