"""`python -m gcp.study --quick` as a user runs it, interrupted during its last run and
resumed; its outputs; and notebooks/study.ipynb on it. (The summary's numbers and verdicts
are tested on synthetic results in tests/analysis/test_study.py.)"""
import json
import os
import signal
import subprocess
import sys

import jax
import nbformat
import pytest
from nbclient import NotebookClient

from gcp import checkpoint
from gcp.analysis import study as study_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADS = ("gap", "isqrt")  # the baseline, then the others alphabetically
# --quick, smaller still: two heads, one epoch, one corruption per family, fewer Hessian
# products.
SMALLER = (f"--config.heads={','.join(HEADS)}", "--config.quick.num_epochs=1",
           "--config.quick.power_iters=3", "--config.quick.max_probes=6",
           "--config.sharpness.batch_size=64",
           "--config.robustness.corruptions=gaussian_noise,defocus_blur,fog,contrast")


def study_command(workdir, data_dir):
  return [sys.executable, "-m", "gcp.study", "configs/study.py", f"--workdir={workdir}",
          "--quick", f"--config.data_dir={data_dir}", *SMALLER]


def run_state(workdir, head):
  """What a reused run must keep: its checkpoint steps, metrics and measurement file."""
  run = os.path.join(workdir, "runs", f"{head}_seed0")
  with open(os.path.join(run, "metrics.jsonl")) as f:
    metrics = f.read()
  return (checkpoint.steps(os.path.join(run, "checkpoints")), metrics,
          os.stat(os.path.join(run, study_lib.RUN_FILE)).st_mtime_ns)


@pytest.fixture(scope="module")
def quick_study(data_dir, tmp_path_factory):
  """A --quick study stopped (SIGINT, as Ctrl-C) once its last run started, then run
  again to the end. Returns the workdir, the first run's state before the second launch,
  and the second launch's result."""
  workdir = str(tmp_path_factory.mktemp("study"))
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU, as on a laptop
  log = os.path.join(workdir, "first_launch.log")  # a file: a full stderr pipe would block
  with open(log, "w") as stderr:
    first = subprocess.Popen(study_command(workdir, data_dir), env=env, cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=stderr, text=True)
    started_last = False
    for line in first.stdout:
      if line.startswith(f"study [2/2] {HEADS[1]} seed 0"):
        started_last = True
        first.send_signal(signal.SIGINT)
        break
    first.communicate(timeout=600)
  with open(log) as f:
    assert started_last, f.read()[-3000:]
  assert first.returncode != 0
  before = {head: run_state(workdir, head) for head in HEADS[:1]}
  second = subprocess.run(study_command(workdir, data_dir), env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
  assert second.returncode == 0, second.stderr[-3000:]
  return workdir, before, second


def test_interrupted_study_resumes_and_reuses_finished_runs(quick_study):
  workdir, before, _ = quick_study
  for head in HEADS[:1]:  # neither retrained nor measured again
    assert run_state(workdir, head) == before[head], head
  steps = checkpoint.steps(os.path.join(workdir, "runs", f"{HEADS[1]}_seed0", "checkpoints"))
  assert max(steps) == 2000 // 64  # digits 0-4: 2,000 training images, batch 64, 1 epoch


def test_quick_study_writes_every_promised_file(quick_study):
  workdir, _, second = quick_study
  with open(os.path.join(workdir, "study.json")) as f:
    summary = json.load(f)
  assert summary["heads"] == list(HEADS) and summary["seeds"] == [0]
  assert set(summary["runs"]) == {f"{h}_seed0" for h in HEADS}
  for head in HEADS[1:]:
    assert {v["verdict"] for v in summary["verdicts"][head].values()} == {"not significant"}
  with open(os.path.join(workdir, "study.md")) as f:
    text = f.read()
  claims = text.split("## The claims")[1].split("## Every measurement")[0]
  rows = [line for line in claims.splitlines() if line.startswith("| ")][1:]
  assert [row.split(" | ")[0].lstrip("| ") for row in rows] == list(study_lib.CLAIMS)
  assert "## The claims" in second.stdout  # the table, printed
  for name in study_lib.FIGURES:
    with open(os.path.join(workdir, f"{name}.png"), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n", name


def test_study_notebook_executes(quick_study, monkeypatch):
  workdir, _, _ = quick_study
  monkeypatch.setenv("GCP_STUDY_DIR", workdir)
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
  nb = nbformat.read(os.path.join(ROOT, "notebooks", "study.ipynb"), as_version=4)
  NotebookClient(nb, timeout=300, kernel_name="python3",
                 resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
  figures = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
             if "image/png" in o.get("data", {})]
  assert len(figures) == 4
