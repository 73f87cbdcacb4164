"""`python -m gcp.analysis` end to end on a saved run (a small ResNet-18 iSQRT checkpoint
on 8 px digits): JSON and PNG files for every analysis, and errors that name the fix."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gcp import checkpoint, reporting
from gcp.analysis.__main__ import main
from gcp.config import base_config
from gcp.models import create_model

SPEC = dict(arch="resnet18", head="isqrt", num_classes=10, reduction_dim=4, width=2,
            small_input=True, num_iters=3)
SHAPES = jax.eval_shape(create_model(**SPEC).init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def saved_run(workdir, data_dir, seed):
  """What train_and_evaluate leaves: config.json, a checkpoint, metrics and events."""
  config = base_config()
  config.data.data_dir = data_dir
  config.data.eval_split = "test[:32]"
  config.data.eval_pp = "rgb|resize(8)|normalize(33.4, 78.6)"
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort())
  # Random variables of the right shapes (cheaper than compiling model.init's generators).
  rng = np.random.default_rng(seed)
  variables = jax.tree_util.tree_map_with_path(
      lambda path, x: (np.ones if path[-1].key in ("var", "scale") else np.zeros)(
          x.shape, np.float32) if len(x.shape) == 1 else
      rng.normal(0, 0.3, x.shape).astype(np.float32), SHAPES)
  checkpoint.save_variables(os.path.join(workdir, "checkpoints"), variables, SPEC)
  log = reporting.MetricLog(workdir)
  for epoch in (1, 2):
    log.write(4 * epoch, 3.0 * epoch, {"epoch": epoch, "train_loss": 2.0 / epoch,
                                       "train_top1": 0.1, "eval_loss": 2.1 / epoch,
                                       "eval_top1": 0.1 * epoch})
  log.close()
  return workdir


def test_cli_writes_every_analysis(data_dir, tmp_path, capsys):
  run = saved_run(str(tmp_path / "isqrt"), data_dir, seed=0)
  baseline = saved_run(str(tmp_path / "other"), data_dir, seed=1)
  code = main([run, "--analyses", "diagnostics,landscape,robustness",
               "--baseline", baseline, "--compare", baseline, "--num-batches", "1",
               "--batch-size", "16", "--etas=-1,0,1",
               "--corruptions", "fog,pixelate", "--severities", "2,4"])
  assert code == 0
  out = capsys.readouterr().out
  headline = json.loads(out[out.index("{"):])
  assert set(headline) == {"diagnostics", "landscape", "robustness", "compare"}
  written = tmp_path / "isqrt" / "analysis"
  assert f"to {written}" in out
  for name in headline:
    assert (written / f"{name}.png").stat().st_size > 5_000
  landscape = json.load(open(written / "landscape.json"))
  assert landscape["layer"] == "layer4_1" and landscape["eta"] == [-1.0, 0.0, 1.0]
  robustness = json.load(open(written / "robustness.json"))
  assert list(robustness["errors"]["errors"]) == ["fog", "pixelate"]
  assert robustness["baseline"]["severities"] == [2, 4]
  assert set(robustness["summary"]["ce"]) == {"fog", "pixelate"}
  assert json.load(open(written / "compare.json"))["other"]["final"]["eval_top1"] == 0.2


def test_cli_errors(tmp_path, capsys):
  assert main([str(tmp_path)]) == 1
  assert "config.json not found" in capsys.readouterr().err
  with pytest.raises(ValueError, match="unknown analyses"):
    from gcp.analysis import report
    report.analyze(str(tmp_path), analyses=("speed",))
