"""Study 6, the oracle decodes (calm_jax.analysis.oracle), on hand-made outputs with
known answers."""

import pytest

from calm_jax.analysis import oracle


def test_oracle_rows_by_hand(decodes):
  full, copy, true_cache = decodes()
  result = oracle.oracle_study(full, [copy, true_cache], ["ab", "x"], num_layers=4,
                               similarity="exact_match")
  assert [r.name for r in result.rows] == ["full", "oracle_copy_state", "oracle_full_compute"]
  by_name = {r.name: r for r in result.rows}
  assert by_name["full"].mean_exit_layer == 4.0 and by_name["full"].layer_speedup == 1.0
  assert by_name["full"].token_agreement == 1.0 and by_name["full"].reference_quality == 0.5
  row = by_name["oracle_copy_state"]
  assert row.num_tokens == 5 and row.mean_exit_layer == 2.0 and row.layer_speedup == 2.0
  assert row.token_agreement == pytest.approx((2 / 3 + 1) / 2)
  assert row.same_as_full_fraction == 0.5 and row.reference_quality == 0.0
  row = by_name["oracle_full_compute"]
  assert row.mean_exit_layer == 2.0 and row.same_as_full_fraction == 1.0
  assert row.reference_quality == 0.5


def test_oracle_rejects_impossible_exit_layers_and_mismatched_references(decodes):
  full, copy, _ = decodes()
  deep = oracle.DecodedOutputs(copy.name, copy.tokens, copy.exit_layers + 3, copy.texts)
  with pytest.raises(ValueError, match="exit layers must lie in 0..4, found 3..6"):
    oracle.oracle_study(full, [deep], ["ab", "x"], num_layers=4, similarity="exact_match")
  with pytest.raises(ValueError, match="1 references for 2 examples"):
    oracle.oracle_study(full, [copy], ["ab"], num_layers=4, similarity="exact_match")
