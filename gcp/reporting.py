"""What a run shows and leaves behind: progress bar, TensorBoard, JSON lines, PNG curves.

Only process 0 writes; other hosts get no-op writers.
"""
import atexit
import json
import logging as std_logging
import os
import subprocess
import sys
import time

from absl import logging
import jax
import tqdm


METRICS_FILE = "metrics.jsonl"
_LIBRARIES = (f"{os.sep}orbax{os.sep}", f"{os.sep}tensorflow_datasets{os.sep}")


def _not_library_chatter(record) -> bool:
  return record.levelno >= std_logging.ERROR or not any(lib in record.pathname
                                                    for lib in _LIBRARIES)


# What C and C++ libraries write straight to file descriptor 2 that a user need not see:
# TensorFlow's oneDNN banner (printed while it loads, whatever TF_CPP_MIN_LOG_LEVEL says)
# and libjpeg's complaints about damaged JPEGs, whose images the pipeline skips and lists.
NATIVE_NOISE = (
    r"WARNING: All log messages before absl::InitializeLog\(\)",
    r"\S+ \S+ +\d+ port\.cc:\d+\] oneDNN custom operations are on",
    r"\S+ \S+ +\d+ jpeg_mem\.cc:\d+\] ",
    # libjpeg's messages (jerror.h) about a damaged file
    r"Corrupt JPEG data", r"Premature end of JPEG", r"Unsupported marker type",
    r"Invalid JPEG file structure", r"Not a JPEG file", r"Bogus ", r"Huffman table",
    r"Quantization table", r"Unsupported JPEG process", r"Empty JPEG image",
    r"Improper call to JPEG library", r"Input file read error")
# The filter: a child process, so that it outlives a crash of ours and forwards its last
# words; it ignores Ctrl-C and SIGTERM and ends when the last writer closes the pipe.
_FILTER = """
import re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
noise = re.compile(sys.argv[1].encode())
for line in sys.stdin.buffer:
  if not noise.match(line):
    sys.stdout.buffer.write(line)
    sys.stdout.buffer.flush()
"""


def quiet_console(argv: list[str]) -> None:
  """A console with only what a user needs, unless `argv` asks for logs (`-v N` /
  `--verbosity=N`): TensorFlow's C++ INFO and WARNING lines, Orbax's and TFDS's Python
  warnings, and the `NATIVE_NOISE` lines are not shown. Python's own output (progress
  bars, messages, tracebacks) goes to the terminal directly; what native code writes to
  file descriptor 2 passes a filter process. Call before TensorFlow loads."""
  if any(a == "-v" or a.startswith(("-v=", "--verbosity", "--v=")) for a in argv[1:]):
    return
  # At least 2 (errors only); jax's import already set its own default of 1.
  level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "")
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = str(max(int(level) if level.isdigit() else 0, 2))
  logging.set_verbosity(logging.WARNING)
  logging.get_absl_logger().addFilter(_not_library_chatter)
  sys.stderr.flush()
  terminal = os.dup(2)
  child = subprocess.Popen([sys.executable, "-c", _FILTER, "|".join(NATIVE_NOISE)],
                           stdin=subprocess.PIPE, stdout=terminal, close_fds=True)
  os.dup2(child.stdin.fileno(), 2)
  child.stdin.close()
  sys.stderr = os.fdopen(terminal, "w", buffering=1)
  logging.get_absl_handler().python_handler.stream = sys.stderr

  def close():  # the filter prints what is left and ends when fd 2 closes
    os.close(2)
    child.wait()
  atexit.register(close)


def info(message: str) -> None:
  """A line for the person running the job (process 0 only), kept clear of the progress bar."""
  logging.info(message)
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


def warn(message: str) -> None:
  """A warning for the person running the job (process 0 only), kept clear of the progress
  bar."""
  if jax.process_index() == 0:
    tqdm.tqdm.write(f"warning: {message}", file=sys.stderr)


class MetricLog:
  """Appends `{"step": ..., "wall_time": ..., **metrics}` to `workdir/metrics.jsonl` and to
  TensorBoard (`workdir/tensorboard`).

  `wall_time` is the run's running time in seconds (summed over its sessions; the time
  between an interruption and the resume does not count). TensorBoard's events carry it too,
  as `started + wall_time`, so TensorBoard's "relative" axis is running time.

  On resume, lines for steps after `resume_step` (written after the last checkpoint by a
  run that was then stopped) are dropped, and the TensorBoard events are written afresh from
  the kept lines, so that both match the restored state.
  """

  def __init__(self, workdir: str, resume_step: int = 0, started: float | None = None):
    self.path = os.path.join(workdir, METRICS_FILE)
    self.started = time.time() if started is None else started
    self._active = jax.process_index() == 0
    if not self._active:
      return
    from tensorboard.summary.writer.event_file_writer import EventFileWriter
    tensorboard = os.path.join(workdir, "tensorboard")
    kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step] if (
        os.path.exists(self.path)) else []
    with open(self.path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in kept)
    if os.path.isdir(tensorboard):
      for name in os.listdir(tensorboard):
        if name.startswith("events.out.tfevents."):
          os.remove(os.path.join(tensorboard, name))
    self._tb = EventFileWriter(tensorboard)
    for row in kept:
      self._event(row)

  def _event(self, row: dict) -> None:
    from tensorboard.compat.proto import event_pb2, summary_pb2
    values = [summary_pb2.Summary.Value(tag=k, simple_value=v) for k, v in row.items()
              if k not in ("step", "wall_time")]
    self._tb.add_event(event_pb2.Event(
        wall_time=self.started + row.get("wall_time", 0.0), step=row["step"],
        summary=summary_pb2.Summary(value=values)))

  def write(self, step: int, wall_time: float, metrics: dict) -> None:
    if not self._active:
      return
    row = {"step": int(step), "wall_time": round(float(wall_time), 3),
           **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    self._event(row)
    self._tb.flush()

  def close(self) -> None:
    if self._active:
      self._tb.close()


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_path: str, png_path: str, title: str = "") -> None:
  """Loss and top-1 (train and eval) against epochs, from a metrics.jsonl file."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = read_metrics(metrics_path)
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
  for prefix, style in (("train", "-"), ("eval", "o-")):
    pts = [r for r in rows if f"{prefix}_loss" in r]
    epochs = [r["epoch"] for r in pts]
    ax_loss.plot(epochs, [r[f"{prefix}_loss"] for r in pts], style, label=prefix)
    ax_acc.plot(epochs, [100 * r[f"{prefix}_top1"] for r in pts], style, label=prefix)
  ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
  ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="top-1 accuracy")
  for ax in (ax_loss, ax_acc):
    ax.grid(alpha=0.3)
    ax.legend()
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)


def progress_bar(total: int, initial: int, desc: str) -> tqdm.tqdm:
  """Steps with ETA; the caller sets the images/s postfix."""
  return tqdm.tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                   disable=jax.process_index() != 0)
