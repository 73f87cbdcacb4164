"""Training curves from metrics.jsonl: epochs, and running time from its `wall_time`."""
import json
import os

import numpy as np

from gcp.analysis import compare, plots


def fake_run(workdir, rows):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def epoch_row(step, epoch, top1, wall_time):
  return {"step": step, "wall_time": wall_time, "epoch": epoch, "train_loss": 1.0 / epoch,
          "train_top1": top1 - 0.1, "eval_loss": 1.2 / epoch, "eval_top1": top1}


def test_curves_are_read_per_epoch_with_running_time(tmp_path):
  workdir = str(tmp_path / "run")
  fake_run(workdir, [{"step": 5, "wall_time": 4.0, "loss": 2.0}, epoch_row(10, 1, 0.5, 10.0),
                     epoch_row(20, 2, 0.7, 45.0), epoch_row(30, 3, 0.8, 60.0)])
  curves = compare.run_curves(workdir)
  assert curves["epoch"] == [1, 2, 3] and curves["seconds"] == [10.0, 45.0, 60.0]
  assert curves["eval_top1"] == [0.5, 0.7, 0.8]


def test_compare_runs_and_plot(tmp_path):
  for name, top1 in (("gap", 0.6), ("isqrt", 0.7)):
    fake_run(str(tmp_path / name), [epoch_row(10, 1, top1 - 0.1, 5.0),
                                     epoch_row(20, 2, top1, 9.0)])
  result = compare.compare_runs([str(tmp_path / "gap"), str(tmp_path / "isqrt")])
  assert list(result) == ["gap", "isqrt"]
  assert result["isqrt"]["final"] == {**{k: v[-1] for k, v in result["isqrt"].items()
                                         if k != "final"}, "best_eval_top1": 0.7}
  figure = plots.plot_comparison(result)
  assert len(figure.axes) == 4
  lines = figure.axes[2].get_lines()  # loss against wall-clock
  np.testing.assert_array_equal(lines[1].get_xdata(), [5.0, 9.0])
