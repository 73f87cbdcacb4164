"""A synthetic video data set with known content: a bright square moves right (label 0) or
left (label 1) over a static dark gradient, 3 px per frame; each video's square has its own
colour, so that a decoded frame tells which video it is from and which frame it is.

Fixtures (import them into a test module or conftest.py to use them there):
- `moving_squares`: the `MovingSquares` helper (frames, stores, video files, identification);
- `frame_store`: a `FrameStore` written once per module in the frame-store layout of
  `gcp.data.video`: train (8 videos, 6-10 frames of 32 x 48) and val (5 videos), classes
  "moving right" / "moving left"; train on it with
  `config.data.name = f"frames:{frame_store.root}"`, train_split "train", eval_split "val".
"""
import dataclasses
import itertools
import os

import numpy as np
import pytest
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Video:
  id: str
  label: int  # 0: the square moves right, 1: left
  num_frames: int
  color: int  # index into MovingSquares.COLORS
  step: int = 3  # pixels per frame (0: a static video, every frame the same)


@dataclasses.dataclass(frozen=True)
class FrameStore:
  root: str
  splits: dict  # split -> [Video]
  class_names: tuple = ("moving right", "moving left")


class MovingSquares:
  H, W, SIDE = 32, 48, 10
  # Bright colours (a channel at 255, the others 0 / 128 / 255): 127 apart in some channel.
  COLORS = np.array([c for c in itertools.product((0, 128, 255), repeat=3) if 255 in c],
                    np.uint8)
  BRIGHT = 160  # the background stays below it in every channel, the square above

  def square_x(self, video: Video, index: int) -> int:
    """Left edge of the square in frame `index`."""
    if video.label == 0:
      return 2 + video.step * index
    return self.W - self.SIDE - 2 - video.step * index

  def frame(self, video: Video, index: int) -> np.ndarray:
    """Frame `index` `[H, W, 3]` uint8: the gradient R = x, G = y (0-80), B = 40, and the
    square."""
    y, x = np.mgrid[:self.H, :self.W]
    image = np.stack([80 * x // self.W, 80 * y // self.H, np.full_like(x, 40)], -1)
    top, left = 3 + 5 * (video.color % 3), self.square_x(video, index)
    image[top:top + self.SIDE, left:left + self.SIDE] = self.COLORS[video.color]
    return image.astype(np.uint8)

  def write(self, root: str, splits: dict, *, frames_dir: str = "frames",
            class_names=FrameStore.class_names, name="{:05d}.jpg") -> FrameStore:
    """Writes the frame store `root`: frames (JPEG) named `name`.format(1-based number),
    `category.txt` and one `<split>_videofolder.txt` per split."""
    os.makedirs(root, exist_ok=True)
    for split, videos in splits.items():
      with open(os.path.join(root, f"{split}_videofolder.txt"), "w") as f:
        for video in videos:
          folder = os.path.join(root, frames_dir, video.id)
          os.makedirs(folder, exist_ok=True)
          for i in range(video.num_frames):
            with open(os.path.join(folder, name.format(i + 1)), "wb") as g:
              g.write(tf.io.encode_jpeg(self.frame(video, i), quality=95).numpy())
          f.write(f"{video.id} {video.num_frames} {video.label}\n")
    with open(os.path.join(root, "category.txt"), "w") as f:
      f.writelines(f"{n}\n" for n in class_names)
    return FrameStore(str(root), splits, tuple(class_names))

  def write_video_file(self, path: str, video: Video, codec: str = "mpeg4", fps: int = 10):
    """Encodes `video` as a video file with PyAV (e.g. `.mp4` with mpeg4, `.webm` with
    libvpx)."""
    import av
    with av.open(path, "w") as container:
      stream = container.add_stream(codec, rate=fps)
      stream.width, stream.height, stream.pix_fmt = self.W, self.H, "yuv420p"
      for i in range(video.num_frames):
        frame = av.VideoFrame.from_ndarray(self.frame(video, i), format="rgb24")
        container.mux(stream.encode(frame))
      container.mux(stream.encode())

  def square(self, image: np.ndarray) -> tuple[int, float]:
    """(colour index, x of the centre) of the square in an RGB image (0-255 units)."""
    mask = image.max(-1) > self.BRIGHT
    color = image[mask].mean(0)
    x = np.nonzero(mask)[1]
    return (int(np.abs(self.COLORS.astype(float) - color).max(-1).argmin()),
            (x.min() + x.max()) / 2)

  def frame_index(self, video: Video, center_x: float) -> int:
    """Which frame of `video` shows its square centred at `center_x`."""
    left = center_x - (self.SIDE - 1) / 2
    return int(round(abs(left - self.square_x(video, 0)) / video.step))


@pytest.fixture(scope="session")
def moving_squares():
  return MovingSquares()


@pytest.fixture(scope="module")
def frame_store(tmp_path_factory, moving_squares) -> FrameStore:
  frames = [6, 7, 8, 9, 10, 6, 7, 8, 6, 8, 10, 7, 9]
  videos = [Video(str(1001 + i), i % 2, n, i) for i, n in enumerate(frames)]
  return moving_squares.write(str(tmp_path_factory.mktemp("frame_store")),
                              {"train": videos[:8], "val": videos[8:]})
