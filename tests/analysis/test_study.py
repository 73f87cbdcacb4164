"""The study's summary on synthetic per-run results: cross-run numbers (epochs to the
best, mCE against the same seed's baseline), the verdict of every claim, and study.md's
claims table. (The whole study runs in tests/test_study_command.py.)"""
import ml_collections
import numpy as np
import pytest

from gcp.analysis import study as study_lib


def config():
  study = ml_collections.ConfigDict()
  study.baseline = "gap"
  study.seeds = 3
  study.num_epochs = 3
  study.landscape_every_steps = 10
  study.fractions = (0.9, 0.99)
  study.runs = ml_collections.ConfigDict({"isqrt": {}, "gap": {}})
  for key in ("sharpness", "robustness", "transfer"):
    study[key] = ml_collections.ConfigDict()
  return study


def result(head, seed, *, auc, eigenvalue, transfer, corruption_error, top1,
           trace_significant=True):
  sharp = {"trace": 10.0, "trace_stderr": 0.5 if trace_significant else 20.0,
           "trace_significant": trace_significant, "trace_rel_error": 0.1,
           "trace_stopped_by": "error target" if trace_significant else "probe cap",
           "trace_probes": 12 if trace_significant else 60}
  return {"head": head, "seed": seed,
          "curves": {"epoch": [1, 2, 3], "step": [10, 20, 30], "eval_top1": top1},
          "sharpness": sharp,
          "robustness": {"clean_error": 0.02, "severities": [1, 2],
                         "errors": {"fog": [corruption_error, 2 * corruption_error]}},
          "metrics": {"train_loss_auc": auc, "landscape_loss_range": 1.0 + 0.01 * seed,
                      "landscape_grad_change": 1.0, "top_eigenvalue": eigenvalue,
                      "hessian_trace": 10.0, "mean_corruption_error": corruption_error,
                      "transfer_top1": transfer, "eval_top1": top1[-1],
                      "train_seconds": 5.0}}


def synthetic():
  rng = np.random.default_rng(0)
  results = []
  for seed in range(3):
    results.append(result("gap", seed, auc=1.0 + 0.01 * seed, eigenvalue=10.0 + seed,
                          transfer=0.9, corruption_error=0.2, top1=[0.5, 0.9, 0.95]))
    results.append(result("isqrt", seed, auc=0.8 + 0.01 * seed, eigenvalue=20.0 + seed,
                          transfer=0.9 + rng.normal(0, 0.05), corruption_error=0.1,
                          top1=[0.8, 0.975, 0.98], trace_significant=seed != 1))
  return results


def test_summary_numbers_and_verdicts():
  summary = study_lib.summarize(config(), synthetic())
  assert summary["heads"] == ["gap", "isqrt"] and summary["seeds"] == [0, 1, 2]
  runs = summary["runs"]
  # Best top-1 of the study 0.98: 90% (0.882) at epoch 2 for gap, epoch 2 for isqrt;
  # 99% (0.9702) never for gap, at epoch 2 for isqrt.
  assert runs["gap_seed0"]["metrics"]["epochs_to_0.9"] == 2.0
  assert np.isnan(runs["gap_seed0"]["metrics"]["epochs_to_0.99"])
  assert runs["isqrt_seed0"]["metrics"]["steps_to_0.99"] == 20.0
  # CE = sum of errors over severities / the baseline's: 0.3 / 0.6.
  assert runs["isqrt_seed1"]["metrics"]["mce"] == 0.5
  assert runs["gap_seed1"]["metrics"]["mce"] == 1.0
  verdicts = {k: v["verdict"] for k, v in summary["verdicts"]["isqrt"].items()}
  assert verdicts["train_loss_auc"] == "holds"            # 0.2 lower in every seed
  assert verdicts["top_eigenvalue"] == "reversed"         # 10 higher in every seed
  assert verdicts["mce"] == "holds"                       # 0.5 against the baseline's 1
  assert verdicts["transfer_top1"] == "not significant"   # noise around the same value
  assert verdicts["epochs_to_0.99"] == "not significant"  # gap never reaches it: no pairs
  difference = summary["verdicts"]["isqrt"]["train_loss_auc"]["difference"]
  np.testing.assert_allclose(difference["mean"], -0.2)


def test_markdown_has_a_row_per_claim_and_flags_traces():
  text = study_lib.markdown(study_lib.summarize(config(), synthetic()), "python -m gcp.study")
  claims_table = text.split("## The claims")[1].split("## Every measurement")[0]
  rows = [line for line in claims_table.splitlines() if line.startswith("| ")][1:]
  assert [row.split(" | ")[0].lstrip("| ") for row in rows] == list(study_lib.CLAIMS)
  assert "holds (-0.2" in claims_table and "reversed (+10" in claims_table
  assert "isqrt_seed1: 10 ± 20, not significant" in text
  assert "error target missed: 60 probes" in text


def test_heads_picks_some_runs_and_names_an_unknown_one():
  study = config()
  study.runs.dropcov = {}
  study.heads = "gap, isqrt"
  study.lock()  # as config flags give it
  assert study_lib.heads_of(study_lib.resolve(study)) == ["gap", "isqrt"]
  assert list(study.runs) == ["dropcov", "gap", "isqrt"]  # the caller's config is untouched
  study.heads = "gap,isqrt,mpncov"
  with pytest.raises(ValueError, match=r"config.heads names mpncov, not in config.runs "
                                       r"\(dropcov, gap, isqrt\)"):
    study_lib.resolve(study)
  study.heads = "isqrt,dropcov"
  with pytest.raises(ValueError, match=r"config.baseline 'gap' is not one of config.heads "
                                       r"\(dropcov, isqrt\)"):
    study_lib.resolve(study)
  study.heads = "gap"
  with pytest.raises(ValueError, match="config.heads needs the baseline and at least one"):
    study_lib.resolve(study)
