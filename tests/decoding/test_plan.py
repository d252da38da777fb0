"""The decoder's static plan (`DecodePlan`): one compiled program per plan whatever the
runtime threshold, the logits width and row buckets it gives, where it runs the measure, and
its checks; `row_buckets`."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.measures import build_measure
from calm_jax.decoding.plan import DecodePlan, row_buckets
from calm_jax.decoding.sampling import SamplingConfig
from calm_jax.model.config import T5Config

CONFIG = T5Config(vocab_size=53, d_model=16, d_kv=4, d_ff=24, num_layers=2,
                  num_decoder_layers=5, num_heads=4, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False)
L = CONFIG.num_decoder_layers


def test_row_buckets():
  assert row_buckets(1) == (1,)
  assert row_buckets(2) == (2, 1)
  assert row_buckets(8) == (8, 2, 1)
  assert row_buckets(200) == (200, 50, 13, 4)
  assert row_buckets(7) == (7, 2, 1)
  assert row_buckets(200, count=4, ratio=2) == (200, 100, 50, 25)
  assert row_buckets(7, ratio=2) == (7, 4, 2, 1)


def test_plans_are_hashable_and_equal_across_runtime_values():
  first = DecodePlan.checked(CONFIG, ExitConfig(threshold=0.3, tau=2.0, classifier_path="a"),
                             SamplingConfig(), 8, False)
  second = DecodePlan.checked(CONFIG, ExitConfig(threshold=0.9), SamplingConfig(), 8, False)
  assert first == second and hash(first) == hash(second)
  assert first.exit == ExitConfig().compiled_part()
  assert first.compact  # row compaction unless turned off (the threshold grid's vmap)
  others = [
      DecodePlan.checked(CONFIG, ExitConfig(min_exit_layer=2), SamplingConfig(), 8, False),
      DecodePlan.checked(CONFIG, ExitConfig(), SamplingConfig(temperature=1.0), 8, False),
      DecodePlan.checked(CONFIG, ExitConfig(), SamplingConfig(), 9, False),
      DecodePlan.checked(CONFIG, ExitConfig(), SamplingConfig(), 8, True),
      DecodePlan.checked(CONFIG.replace(eos_token_id=3), ExitConfig(), SamplingConfig(), 8,
                         False),
  ]
  assert all(other != first for other in others)
  assert len({hash(plan) for plan in others + [first]}) == len(others) + 1
  # The measure is built from the plan's exit config, with its options bound.
  static = DecodePlan.checked(CONFIG, ExitConfig(measure="static", static_exit_layer=3),
                              SamplingConfig(), 8, False)
  assert static.measure == build_measure(ExitConfig(measure="static", static_exit_layer=3))
  assert static.needs is static.measure.needs


@pytest.mark.parametrize("exit_config", [
    ExitConfig(measure="softmax_diff"), ExitConfig(measure="oracle"),
    ExitConfig(measure="state_saturation"), ExitConfig(measure="static", static_exit_layer=2),
    ExitConfig(measure="meta_mlp"), ExitConfig(measure="softmax_topk", top_k=8),
], ids=lambda value: value.measure)
def test_layers_and_trace_width(exit_config):
  plan = DecodePlan.checked(CONFIG, exit_config, SamplingConfig(), 8, False)
  assert plan.num_layers == L
  assert plan.trace_width == 0
  assert DecodePlan.checked(CONFIG, exit_config, SamplingConfig(), 8, True).trace_width == L


def test_buckets():
  plan = DecodePlan.checked(CONFIG, ExitConfig(), SamplingConfig(), 8, False)
  assert plan.buckets(8) == (8, 4, 2, 1) and plan.buckets(7) == (7, 4, 2, 1)
  assert plan.buckets(1) == (1,)
  assert plan.buckets(200) == (200, 50, 13, 4)  # quarters above 8 rows
  assert plan.phase_buckets(200) == (200, 50)  # a never-exit decode's token loops
  assert plan.phase_buckets(8) == (8, 2) and plan.phase_buckets(1) == (1,)
  assert dataclasses.replace(plan, fixed_rows=13).buckets(200) == (13,)
  assert dataclasses.replace(plan, compact=False).buckets(8) == (8,)
  assert dataclasses.replace(plan, compact=False).phase_buckets(8) == (8,)
  # full_compute runs every layer on every row.
  full = DecodePlan.checked(CONFIG, ExitConfig(propagation="full_compute"), SamplingConfig(),
                            8, False)
  assert full.full_compute and full.buckets(8) == (8,)
  assert not plan.full_compute


def _checks(plan, layer, exit_point, allow_early):
  return bool(plan.checks_at(jnp.int32(layer), jnp.asarray(exit_point),
                             jnp.asarray(allow_early)))


def test_a_full_logits_measure_runs_only_where_it_can_decide_or_at_layer_l():
  plain = DecodePlan.checked(CONFIG, ExitConfig(), SamplingConfig(), 8, False)
  traced = DecodePlan.checked(CONFIG, ExitConfig(), SamplingConfig(), 8, True)
  assert plain.needs.logits == "full"
  never, some = np.array([False, False]), np.array([False, True])
  for layer in range(1, L):
    assert not _checks(plain, layer, True, never), layer  # lambda >= 1: no exit before L
    assert _checks(plain, layer, True, some), layer
    assert not _checks(plain, layer, False, some), layer  # not an exit point
    # The trace records every exit point's confidence, exits allowed or not.
    assert _checks(traced, layer, True, never), layer
    assert not _checks(traced, layer, False, some), layer
  assert _checks(plain, L, True, never)  # layer L's logits give the token
  assert _checks(plain, L, True, jnp.asarray(False))  # one threshold for every row


@pytest.mark.parametrize("exit_config", [
    ExitConfig(measure="state_saturation"), ExitConfig(measure="monotone_heuristic"),
    ExitConfig(measure="contrastive_jsd"), ExitConfig(measure="softmax_topk", top_k=8),
    ExitConfig(measure="meta_mlp"),
], ids=lambda exit_config: exit_config.measure)
def test_other_measures_run_at_every_exit_point(exit_config):
  """Cheap measures, subset measures and those whose state spans exit points."""
  plan = DecodePlan.checked(CONFIG, exit_config, SamplingConfig(), 8, False)
  never = np.array([False, False])
  for layer in range(1, L + 1):
    assert _checks(plan, layer, True, never), layer
    assert not _checks(plan, layer, False, np.array([True, True])), layer


def test_a_measure_that_looks_at_any_earlier_layer_runs_at_every_layer():
  plan = DecodePlan.checked(CONFIG, ExitConfig(measure="contrastive_weighted", min_exit_layer=3),
                            SamplingConfig(), 8, False)
  assert plan.needs.every_layer
  for layer in range(1, L + 1):
    assert _checks(plan, layer, False, np.array([False, False])), layer


@pytest.mark.parametrize("arguments, message", [
    (dict(max_decode_len=0), "max_decode_len must be a positive integer, got 0"),
    (dict(exit_config=ExitConfig(measure="static")), r"ExitConfig.static_exit_layer=0 must be "
     r"in \[1, 5\] for the 'static' measure"),
    (dict(exit_config=ExitConfig(min_exit_layer=6)), r"ExitConfig.min_exit_layer=6 must be in "
     r"\[1, 5\]"),
    (dict(exit_config=ExitConfig(measure="softmax_topk", top_k=54)), r"ExitConfig.top_k=54 "
     r"must be an integer in \[2, 53\]"),
    (dict(sampling=SamplingConfig(top_k=54)), r"top_k must be an integer in \[0, 53\]"),
])
def test_checked_rejects_a_bad_static_choice(arguments, message):
  values = dict(model=CONFIG, exit_config=ExitConfig(), sampling=SamplingConfig(),
                max_decode_len=8, return_trace=False)
  values.update(arguments)
  with pytest.raises(ValueError, match=message):
    DecodePlan.checked(**values)
