"""Training curves from metrics.jsonl, and wall-clock from TensorBoard event times across
a resume."""
import json
import os

import numpy as np
import tensorflow as tf
from tensorflow.core.util import event_pb2

from gcp.analysis import compare, plots


def write_events(path, events):
  """A TensorBoard events file of `(step, wall_time)` events; the first is the file's
  creation record, as a summary writer writes it."""
  with tf.io.TFRecordWriter(path) as writer:
    for i, (step, wall_time) in enumerate(events):
      event = event_pb2.Event(step=step, wall_time=wall_time)
      if i == 0:
        event.file_version = "brain.Event:2"
      writer.write(event.SerializeToString())


def fake_run(workdir, rows, sessions):
  os.makedirs(os.path.join(workdir, "tensorboard"))
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  for i, events in enumerate(sessions):
    write_events(os.path.join(workdir, "tensorboard", f"events.out.tfevents.{i}.host"),
                 events)


def epoch_row(step, epoch, top1):
  return {"step": step, "epoch": epoch, "train_loss": 1.0 / epoch, "train_top1": top1 - 0.1,
          "eval_loss": 1.2 / epoch, "eval_top1": top1}


def test_wall_clock_counts_each_session_from_its_start(tmp_path):
  # Session 1 starts at t=100: steps 10 and 20 logged at 110 and 130, then it is killed
  # after step 25 (t=140). Session 2 resumes at t=1000 from step 20: step 20 again at 1005,
  # 30 at 1020. The pause does not count: 40 s of session 1, then session 2's own time.
  workdir = str(tmp_path / "run")
  fake_run(workdir, [{"step": 5, "loss": 2.0}, epoch_row(10, 1, 0.5), epoch_row(20, 2, 0.7),
                     epoch_row(30, 3, 0.8)],
           [[(0, 100.0), (10, 110.0), (20, 130.0), (25, 140.0)],
            [(0, 1000.0), (20, 1005.0), (30, 1020.0)]])
  assert compare.elapsed_seconds(workdir) == {10: 10.0, 20: 45.0, 25: 40.0, 30: 60.0}
  curves = compare.run_curves(workdir)
  assert curves["epoch"] == [1, 2, 3] and curves["seconds"] == [10.0, 45.0, 60.0]
  assert curves["eval_top1"] == [0.5, 0.7, 0.8]


def test_compare_runs_and_plot(tmp_path):
  for name, top1 in (("gap", 0.6), ("isqrt", 0.7)):
    fake_run(str(tmp_path / name), [epoch_row(10, 1, top1 - 0.1), epoch_row(20, 2, top1)],
             [[(0, 0.0), (10, 5.0), (20, 9.0)]])
  result = compare.compare_runs([str(tmp_path / "gap"), str(tmp_path / "isqrt")])
  assert list(result) == ["gap", "isqrt"]
  assert result["isqrt"]["final"] == {**{k: v[-1] for k, v in result["isqrt"].items()
                                         if k != "final"}, "best_eval_top1": 0.7}
  figure = plots.plot_comparison(result)
  assert len(figure.axes) == 4
  lines = figure.axes[2].get_lines()  # loss against wall-clock
  np.testing.assert_array_equal(lines[1].get_xdata(), [5.0, 9.0])
