"""The verdict of a claim from paired samples (holds, reversed, not significant) and the
t-interval against a tabulated quantile."""
import math

import numpy as np
import pytest

from gcp.analysis import stats


def test_summary_interval_is_the_t_interval():
  values = [1.0, 2.0, 4.0]
  result = stats.summary(values)
  mean, sd = 7 / 3, np.std(values, ddof=1)
  # t quantile for 2 degrees of freedom at 97.5%: 4.302652729749464 (tables).
  half = 4.302652729749464 * sd / math.sqrt(3)
  np.testing.assert_allclose(result["interval"], [mean - half, mean + half], rtol=1e-9)
  assert result["n"] == 3 and result["missing"] == 0


def test_summary_drops_missing_values_and_needs_two():
  result = stats.summary([float("nan"), 3.0])
  assert result["n"] == 1 and result["missing"] == 1 and result["stderr"] is None
  assert all(math.isnan(v) for v in result["interval"])


@pytest.mark.parametrize("candidate, baseline, lower_is_better, expected", [
    ([0.5, 0.6, 0.55], [1.0, 1.1, 1.05], True, stats.HOLDS),  # consistently lower
    ([1.5, 1.6, 1.55], [1.0, 1.1, 1.05], True, stats.REVERSED),  # consistently higher
    ([0.9, 1.2, 1.0], [1.0, 1.0, 1.05], True, stats.NOT_SIGNIFICANT),  # mixed signs
    ([0.98, 0.99, 0.985], [0.95, 0.96, 0.955], False, stats.HOLDS),  # higher is better
    ([0.5], [1.0], True, stats.NOT_SIGNIFICANT),  # one pair: no interval
])
def test_verdicts(candidate, baseline, lower_is_better, expected):
  result = stats.verdict(candidate, baseline, lower_is_better=lower_is_better)
  assert result["verdict"] == expected
  assert result["difference"]["n"] == len(candidate)


def test_one_sample_verdict_against_a_null():
  # An mCE against the baseline's 1: below 1 is better.
  assert stats.verdict([0.8, 0.85, 0.9], None, lower_is_better=True,
                       null=1.0)["verdict"] == stats.HOLDS
  assert stats.verdict([1.2, 0.7, 1.0], None, lower_is_better=True,
                       null=1.0)["verdict"] == stats.NOT_SIGNIFICANT


def test_paired_samples_must_match():
  with pytest.raises(ValueError, match="differ in number"):
    stats.verdict([1.0, 2.0], [1.0], lower_is_better=True)
