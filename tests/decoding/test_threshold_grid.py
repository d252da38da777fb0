"""Decoding under a grid of thresholds: the packed, deduplicated decoder equals the vmapped
`generate_grid` exactly, per-example thresholds equal decoding each example alone, and the
grid decode reports its progress."""

import dataclasses

import jax
import numpy as np
import pytest

from calm_jax.decoding import early_exit
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate, generate_grid, generate_with_thresholds
from calm_jax.decoding.measures import MeasureContext
from calm_jax.decoding.plan import DecodeConstants, DecodePlan
from calm_jax.decoding.sampling import SamplingConfig
from calm_jax.decoding.threshold_grid import GridDecode, decode_threshold_grid, same_decisions
from calm_jax.exit_classifiers.registry import init_classifier
from calm_jax.model.config import T5Config
from calm_jax.model.t5 import init_params

CONFIG = T5Config(vocab_size=53, d_model=16, d_kv=4, d_ff=24, num_layers=2,
                  num_decoder_layers=5, num_heads=4, feed_forward_proj="gated-gelu",
                  tie_word_embeddings=False, relative_attention_num_buckets=8,
                  relative_attention_max_distance=16)
L = CONFIG.num_decoder_layers
T = 8
B = 6


@pytest.fixture(scope="module")
def model():
  params = init_params(CONFIG, jax.random.PRNGKey(3))
  # Scale the weights up so that the random model's confidences spread over layers.
  params = jax.tree.map(lambda w: w * 1.5, params)
  rng = np.random.RandomState(1)
  ids = rng.randint(2, CONFIG.vocab_size, (B, 7)).astype(np.int32)
  mask = np.ones_like(ids)
  ids[1, 4:], mask[1, 4:] = 0, 0
  return params, ids, mask


def _grid_from_trace(model, exit_config, size, classifier_params=None):
  """Thresholds spread over the quantiles of the never-exit confidences (largest first),
  so the grid mixes pairs that never exit with pairs that exit at various layers."""
  params, ids, mask = model
  trace = np.asarray(generate(CONFIG, params, ids, mask,
                              exit=dataclasses.replace(exit_config, threshold=1.0),
                              max_decode_len=T, return_trace=True,
                              classifier_params=classifier_params).trace)[..., :-1]
  values = trace[np.isfinite(trace)]
  return np.concatenate([[1.0, values.max() + 1e-3],
                         np.quantile(values, np.linspace(0.95, 0.05, size - 2))]).astype(np.float32)


@pytest.mark.parametrize("exit_config", [
    ExitConfig(measure="softmax_diff"),
    ExitConfig(measure="state_saturation", min_exit_layer=2),
    ExitConfig(measure="softmax_max", tau=4.0),
    ExitConfig(measure="softmax_diff", tau=2.0, decay="code", exit_interval=2),
    ExitConfig(measure="state_saturation", propagation="full_compute"),
    ExitConfig(measure="monotone_heuristic"),
    ExitConfig(measure="softmax_pruned", pruning="decaying", top_k=20, min_top_k=3),
    ExitConfig(measure="contrastive_weighted", min_exit_layer=3, contrastive_token=True),
], ids=["softmax_diff", "saturation_min2", "max_tau", "diff_code_decay", "full_compute",
        "monotone", "pruned_decaying", "contrastive_token"])
def test_packed_grid_equals_vmapped_grid(model, exit_config):
  params, ids, mask = model
  thresholds = _grid_from_trace(model, exit_config, 8)
  expected = generate_grid(CONFIG, params, ids, mask, thresholds=thresholds, exit=exit_config,
                           max_decode_len=T)
  got = decode_threshold_grid(CONFIG, params, ids, mask, thresholds=thresholds,
                              exit=exit_config, max_decode_len=T, batch_size=4)
  np.testing.assert_array_equal(got.tokens, np.asarray(expected.tokens))
  np.testing.assert_array_equal(got.exit_layers, np.asarray(expected.exit_layers))
  # The walk decodes in the backend's layer layout, the vmapped grid stacked: the same
  # products in other kernels, equal to float32 rounding (tokens and exits exactly).
  np.testing.assert_allclose(got.confidences, np.asarray(expected.confidences), rtol=1e-4,
                             atol=1e-5)
  # Some pairs were copied from the never-exit pass, some decoded, some exit early.
  assert 0 < got.decoded_pairs < thresholds.size * B
  assert (got.exit_layers[0] == L * (got.exit_layers[0] > 0)).all()  # lambda = 1
  assert ((got.exit_layers > 0) & (got.exit_layers < L)).any()
  np.testing.assert_array_equal(got.full_tokens, got.tokens[0])


def test_packed_grid_equals_vmapped_grid_for_the_attention_classifier(model):
  """A learned measure with a store of earlier positions: its parameters reach every
  decode of the walk, and copied pairs still equal decoded ones."""
  params, ids, mask = model
  exit_config = ExitConfig(measure="attention")
  head = jax.tree.map(lambda w: 2.0 * w, init_classifier(
      "attention", CONFIG, jax.random.PRNGKey(2), width=8, num_heads=2))
  thresholds = _grid_from_trace(model, exit_config, 6, head)
  expected = generate_grid(CONFIG, params, ids, mask, thresholds=thresholds, exit=exit_config,
                           max_decode_len=T, classifier_params=head)
  got = decode_threshold_grid(CONFIG, params, ids, mask, thresholds=thresholds,
                              exit=exit_config, max_decode_len=T, classifier_params=head)
  np.testing.assert_array_equal(got.tokens, np.asarray(expected.tokens))
  np.testing.assert_array_equal(got.exit_layers, np.asarray(expected.exit_layers))
  # The walk decodes in the backend's layer layout, the vmapped grid stacked: the same
  # products in other kernels, equal to float32 rounding (tokens and exits exactly).
  np.testing.assert_allclose(got.confidences, np.asarray(expected.confidences), rtol=1e-4,
                             atol=1e-5)
  assert 0 < got.decoded_pairs < thresholds.size * B
  assert ((got.exit_layers > 0) & (got.exit_layers < L)).any()


def test_layer_sums_and_token_counts(model):
  params, ids, mask = model
  thresholds = np.array([1.0, 0.2, 0.0], np.float32)
  got = decode_threshold_grid(CONFIG, params, ids, mask, thresholds=thresholds,
                              exit=ExitConfig(), max_decode_len=T)
  np.testing.assert_array_equal(got.layer_sums, got.exit_layers.sum(-1))
  np.testing.assert_array_equal(got.num_tokens, (got.exit_layers > 0).sum(-1))
  assert (got.num_tokens >= 1).all()
  # lambda = 0 with softmax_diff (confidence >= 0 always) exits every token at layer 1.
  assert set(np.unique(got.exit_layers[2])) <= {0, 1}


def test_static_measure_decodes_once_for_the_whole_grid(model):
  params, ids, mask = model
  exit_config = ExitConfig(measure="static", static_exit_layer=2)
  got = decode_threshold_grid(CONFIG, params, ids, mask, thresholds=[0.9, 0.1],
                              exit=exit_config, max_decode_len=T)
  once = generate(CONFIG, params, ids, mask, exit=exit_config, max_decode_len=T)
  for k in range(2):
    np.testing.assert_array_equal(got.tokens[k], np.asarray(once.tokens))
    np.testing.assert_array_equal(got.exit_layers[k], np.asarray(once.exit_layers))


def test_per_example_thresholds_equal_decoding_each_alone(model):
  params, ids, mask = model
  exit_config = ExitConfig(measure="softmax_diff")
  thresholds = _grid_from_trace(model, exit_config, B)[::-1].copy()  # one per example
  both = generate_with_thresholds(CONFIG, params, ids, mask, thresholds=thresholds,
                                  exit=exit_config, max_decode_len=T)
  for b in range(B):
    alone = generate(CONFIG, params, ids[b:b + 1], mask[b:b + 1],
                     exit=dataclasses.replace(exit_config, threshold=float(thresholds[b])),
                     max_decode_len=T)
    np.testing.assert_array_equal(np.asarray(both.tokens)[b], np.asarray(alone.tokens)[0])
    np.testing.assert_array_equal(np.asarray(both.exit_layers)[b],
                                  np.asarray(alone.exit_layers)[0])
    np.testing.assert_allclose(np.asarray(both.confidences)[b],
                               np.asarray(alone.confidences)[0], atol=1e-5)
  assert len(set(np.asarray(both.exit_layers)[:, 0].tolist())) > 1  # exits really differ


def test_same_decisions_on_hand_made_traces():
  exit_config = ExitConfig(min_exit_layer=2)
  nan = np.nan
  trace = np.array([  # [B=4, T=2, L=4]
      [[0.99, 0.2, 0.3, 0.9], [nan] * 4],  # layer 1 is no exit point; layer 4 is L
      [[0.1, 0.1, 0.7, 0.1], [nan] * 4],  # 0.7 at layer 3 before the exit at L
      [[0.1, 0.2, 0.8, nan], [0.1, 0.9, nan, nan]],  # exited at 3 and at 2
      [[0.1, 0.2, 0.8, nan], [nan] * 4],  # exited at 3, clearing lambda by only 0.05
  ], np.float32)
  exit_layers = np.array([[4, 0], [4, 0], [3, 2], [3, 0]])
  lam = lambda value: np.full((4, 2), value, np.float32)
  same = lambda value, margin=0.0: same_decisions(trace, exit_layers, lam(value), exit_config,
                                                  4, margin).tolist()
  assert same(0.75) == [True, True, True, True]
  assert same(0.7) == [True, False, True, True]  # row 1 would now leave at layer 3
  # Row 0 would leave at layer 3 (0.3); rows 2 and 3 see only 0.2 before their exits.
  assert same(0.3) == [False, False, True, True]
  assert same(0.75, margin=0.06) == [True, False, False, False]  # near ties (0.7, 0.8) decode
  assert same(0.85) == [True, True, False, False]  # the exits at 0.8 no longer clear it


def test_bad_arguments(model):
  params, ids, mask = model
  for margin in (-1, float("nan"), "0.1"):
    with pytest.raises(ValueError, match=r"margin must be a number >= 0, got"):
      decode_threshold_grid(CONFIG, params, ids, mask, thresholds=[0.5], max_decode_len=T,
                            margin=margin)
  with pytest.raises(ValueError, match="batch_size must be a positive integer, got 2.5"):
    decode_threshold_grid(CONFIG, params, ids, mask, thresholds=[0.5], max_decode_len=T,
                          batch_size=2.5)
  with pytest.raises(ValueError, match=r"thresholds\[1\] = nan"):
    decode_threshold_grid(CONFIG, params, ids, mask, thresholds=[0.5, np.nan], max_decode_len=T)
  with pytest.raises(ValueError, match="batch_size must be a positive integer, got -2"):
    decode_threshold_grid(CONFIG, params, ids, mask, thresholds=[0.5], max_decode_len=T,
                          batch_size=-2)
  with pytest.raises(ValueError, match="thresholds has 2 entries but the batch has 6"):
    generate_with_thresholds(CONFIG, params, ids, mask, thresholds=[0.5, 0.4],
                             max_decode_len=T)


@pytest.mark.parametrize("exit_config, small_buckets_run", [
    (ExitConfig(measure="softmax_diff"), True), (ExitConfig(measure="softmax_max", tau=3.0), True),
    (ExitConfig(measure="state_saturation"), True), (ExitConfig(measure="oracle"), True),
    (ExitConfig(measure="static", static_exit_layer=2), False),
], ids=["softmax_diff", "softmax_max_tau", "state_saturation", "oracle", "static"])
def test_running_only_the_running_rows_changes_nothing(model, exit_config, small_buckets_run):
  """The compacted layer loop (layers on a bucket of running rows) equals running every
  row, on a batch where rows leave at different layers so the smaller buckets are used."""
  params, ids, mask = model
  if exit_config.measure in ("oracle", "static"):
    thresholds = np.zeros(B, np.float32)  # not used by these measures
  else:
    thresholds = _grid_from_trace(model, exit_config, B)[::-1].copy()  # one per example
    thresholds[-1] = 1.0  # one row never exits early

  def run(compact):
    plan = DecodePlan(CONFIG, exit_config.compiled_part(), SamplingConfig(), T,
                      return_trace=True, compact=compact)
    constants = DecodeConstants(MeasureContext(params, model_config=CONFIG), thresholds,
                                np.float32(exit_config.tau))
    return jax.jit(early_exit.generate_impl, static_argnames=("plan",))(
        plan, constants, ids, mask, jax.random.PRNGKey(0))

  compact, dense = run(True), run(False)
  np.testing.assert_array_equal(np.asarray(compact.tokens), np.asarray(dense.tokens))
  np.testing.assert_array_equal(np.asarray(compact.exit_layers), np.asarray(dense.exit_layers))
  np.testing.assert_allclose(np.asarray(compact.confidences), np.asarray(dense.confidences),
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(compact.trace), np.asarray(dense.trace), atol=1e-6)
  # Where the loop went on with at most half of the rows running, a smaller bucket ran.
  layers = np.asarray(dense.exit_layers)  # [B, T]
  running_after = np.stack([(layers > l).sum(axis=0) for l in range(1, L)])  # [L-1, T]
  assert ((running_after > 0) & (running_after <= B // 2)).any() == small_buckets_run
  if exit_config.measure not in ("oracle", "static"):
    assert (layers[-1][layers[-1] > 0] == L).all()  # lambda = 1 in a mixed batch
  # The public entry (compacted) agrees too.
  public = generate_with_thresholds(CONFIG, params, ids, mask, thresholds=thresholds,
                                    exit=exit_config, max_decode_len=T)
  np.testing.assert_array_equal(np.asarray(public.tokens), np.asarray(dense.tokens))


def test_skipped_rows_return_padding_and_change_nothing_else(model):
  params, ids, mask = model
  exit_config = ExitConfig(measure="softmax_diff")
  thresholds = _grid_from_trace(model, exit_config, B)[::-1].copy()
  skip = np.array([False, True, False, False, True, False])
  both = generate_with_thresholds(CONFIG, params, ids, mask, thresholds=thresholds,
                                  exit=exit_config, max_decode_len=T)
  some = generate_with_thresholds(CONFIG, params, ids, mask, thresholds=thresholds,
                                  exit=exit_config, max_decode_len=T, skip_rows=skip)
  np.testing.assert_array_equal(np.asarray(some.tokens)[skip], CONFIG.pad_token_id)
  np.testing.assert_array_equal(np.asarray(some.exit_layers)[skip], 0)
  np.testing.assert_array_equal(np.asarray(some.tokens)[~skip], np.asarray(both.tokens)[~skip])
  np.testing.assert_array_equal(np.asarray(some.exit_layers)[~skip],
                                np.asarray(both.exit_layers)[~skip])
  with pytest.raises(ValueError, match=r"skip_rows must be a bool array \[6\], got int64 \(2,\)"):
    generate_with_thresholds(CONFIG, params, ids, mask, thresholds=thresholds,
                             exit=exit_config, max_decode_len=T, skip_rows=np.array([0, 1]))


def test_monotone_heuristic_rows_equal_decoding_alone_in_a_mixed_batch(model):
  """A stateful measure runs at every exit point, so a never-exit row (lambda = 1) reports
  the same exit confidence alone as in a batch where other rows can exit."""
  params, ids, mask = model
  exit_config = ExitConfig(measure="monotone_heuristic")
  thresholds = np.array([1.0, 0.3, 0.2, 0.1, 0.05, 0.0], np.float32)
  both = generate_with_thresholds(CONFIG, params, ids, mask, thresholds=thresholds,
                                  exit=exit_config, max_decode_len=T, return_trace=True)
  layers = np.asarray(both.exit_layers)
  assert ((layers > 0) & (layers < L)).any() and (layers[0][layers[0] > 0] == L).all()
  assert (np.asarray(both.confidences)[0] > 0).any()  # the rise was seen by row 0 too
  for b in range(B):
    alone = generate(CONFIG, params, ids[b:b + 1], mask[b:b + 1],
                     exit=dataclasses.replace(exit_config, threshold=float(thresholds[b])),
                     max_decode_len=T)
    np.testing.assert_array_equal(np.asarray(both.tokens)[b], np.asarray(alone.tokens)[0])
    np.testing.assert_array_equal(layers[b], np.asarray(alone.exit_layers)[0])
    np.testing.assert_allclose(np.asarray(both.confidences)[b],
                               np.asarray(alone.confidences)[0], atol=1e-5)


def test_grid_decode_reports_every_pair_once_filled():
  """decode_threshold_grid calls progress with a growing count that ends at K * B."""
  config = T5Config(vocab_size=40, d_model=16, d_kv=4, d_ff=24, num_layers=1,
                    num_decoder_layers=4, num_heads=2, feed_forward_proj="gated-gelu",
                    tie_word_embeddings=False)
  params = init_params(config, jax.random.PRNGKey(0))
  ids = np.random.RandomState(0).randint(2, 40, (6, 5)).astype(np.int32)
  calls = []
  grid = decode_threshold_grid(config, params, ids, None, thresholds=[1.0, 0.9, 0.5, 0.1],
                               exit=ExitConfig(measure="state_saturation"), max_decode_len=4,
                               progress=lambda filled, decoded: calls.append((filled, decoded)))
  filled = [c[0] for c in calls]
  assert filled == sorted(filled) and filled[-1] == 4 * 6
  assert calls[-1][1] == grid.decoded_pairs > 0


def _random_grid(rng, examples, decoded):
  """A GridDecode of `examples` rows under 3 thresholds, 4 positions, random fields."""
  return GridDecode(
      thresholds=np.array([1.0, 0.5, 0.1], np.float32),
      tokens=rng.integers(0, 9, (3, examples, 4)).astype(np.int32),
      exit_layers=rng.integers(0, 3, (3, examples, 4)).astype(np.int32),
      confidences=rng.random((3, examples, 4)).astype(np.float32),
      full_tokens=rng.integers(0, 9, (examples, 4)).astype(np.int32),
      full_exit_layers=rng.integers(0, 3, (examples, 4)).astype(np.int32),
      num_layers=2, decoded_pairs=decoded)


def test_grid_parts_round_trip_and_concatenate_along_the_examples():
  rng = np.random.default_rng(0)
  first, second = _random_grid(rng, 2, 3), _random_grid(rng, 3, 4)
  back = GridDecode.from_arrays(first.to_arrays())
  assert (back.num_layers, back.decoded_pairs) == (2, 3)
  joined = GridDecode.concatenate([back, second])
  assert joined.decoded_pairs == 7 and joined.num_layers == 2
  np.testing.assert_array_equal(joined.thresholds, first.thresholds)
  for field in ("tokens", "exit_layers", "confidences"):  # [K, B, T]: examples on axis 1
    np.testing.assert_array_equal(getattr(joined, field)[:, :2], getattr(first, field))
    np.testing.assert_array_equal(getattr(joined, field)[:, 2:], getattr(second, field))
  for field in ("full_tokens", "full_exit_layers"):  # [B, T]
    np.testing.assert_array_equal(getattr(joined, field),
                                  np.concatenate([getattr(first, field),
                                                  getattr(second, field)]))
