"""What a run shows and leaves behind: progress bar, TensorBoard, JSON lines, PNG curves.

Only process 0 writes; other hosts get no-op writers.
"""
import json
import os

from absl import logging
import jax
import tqdm


def info(message: str) -> None:
  """A line for the person running the job (process 0 only), kept clear of the progress bar."""
  logging.info(message)
  if jax.process_index() == 0:
    tqdm.tqdm.write(message)


class MetricLog:
  """Appends `{"step": ..., **metrics}` to `workdir/metrics.jsonl` and to TensorBoard.

  On resume, lines for steps after `resume_step` (written after the last checkpoint by a
  run that was then killed) are dropped so that the log matches the restored state.
  """

  def __init__(self, workdir: str, resume_step: int = 0):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._active = jax.process_index() == 0
    if not self._active:
      return
    import tensorflow as tf
    if os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if json.loads(line)["step"] <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(kept)
    self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict) -> None:
    if not self._active:
      return
    import tensorflow as tf
    metrics = {k: float(v) for k, v in metrics.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), **metrics}) + "\n")
    with self._tb.as_default(step=int(step)):
      for name, value in metrics.items():
        tf.summary.scalar(name, value)
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
