"""The notebooks run top to bottom (with GCP_NOTEBOOK_SMOKE=1: a few steps and tiny sweeps)
and are committed without outputs."""
import os

import jax
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "notebooks")
ORDER = ("quickstart.ipynb", "analysis.ipynb")  # analysis uses quickstart's runs


def read(name):
  return nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)


@pytest.mark.parametrize("name", [*ORDER, "study.ipynb"])  # study: tests/test_study_command.py
def test_committed_without_outputs(name):
  for cell in read(name).cells:
    if cell.cell_type == "code":
      assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


def test_notebooks_execute(data_dir, tmp_path, monkeypatch):
  # The kernels inherit this environment: one CPU device as on a laptop, the prepared
  # digits, small settings, the session's compilation cache, and two compile-time savers
  # for a smoke run: the rbg generator (model.init compiles ~5x faster than with
  # threefry) and, for the quickstart's training compiles, XLA's quickest optimisation
  # level (the analysis runs second-order products, where optimised code pays).
  monkeypatch.setenv("GCP_NOTEBOOK_SMOKE", "1")
  monkeypatch.setenv("GCP_NOTEBOOK_RUNS", str(tmp_path / "runs"))
  monkeypatch.setenv("GCP_DATA_DIR", data_dir)
  monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", jax.config.jax_compilation_cache_dir)
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  monkeypatch.setenv("JAX_DEFAULT_PRNG_IMPL", "rbg")
  xla_flags = {"quickstart.ipynb": "--xla_backend_optimization_level=0 "
                                   "--xla_llvm_disable_expensive_passes=true",
               "analysis.ipynb": ""}
  for name in ORDER:
    monkeypatch.setenv("XLA_FLAGS", xla_flags[name])
    nb = read(name)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": NOTEBOOKS}}).execute()
    figures = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs
               if "image/png" in o.get("data", {})]
    assert len(figures) == {"quickstart.ipynb": 2, "analysis.ipynb": 4}[name], name
  for run in ("gap", "isqrt"):
    assert os.path.exists(tmp_path / "runs" / run / "metrics.jsonl")
