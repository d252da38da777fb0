"""FREE's adaptive threshold between decode calls (calm_jax.decoding.free_adaptive): the
judged pairs of each output are collected, the mixture refitted up to the cap, and the next
call decodes at the new lambda. Outputs here are hand-made (no model runs)."""

import types

import numpy as np
import pytest

from calm_jax.calibration.beta_mixture import fit_beta_mixture
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.free_adaptive import AdaptiveThreshold, decode_batches
from calm_jax.decoding.synchronized import UNCHECKED


def _output(seed, count=64):
  """A hand-made SynchronizedOutput: [4, count / 4] confidences, agreed where high, and a
  column of deep-layer tokens (UNCHECKED) whose confidences must be ignored."""
  rng = np.random.default_rng(seed)
  agreed = (rng.uniform(size=count) < 0.6).astype(np.int32)
  confidences = np.where(agreed == 1, rng.beta(8, 2, count), rng.beta(2, 5, count))
  agreed, confidences = agreed.reshape(4, -1), confidences.reshape(4, -1)
  agreed[:, 0] = UNCHECKED
  confidences[:, 0] = 0.0  # would pull the fit towards 0 if it were read
  return types.SimpleNamespace(confidences=confidences, deep_agreed=agreed)


def test_observe_refits_on_the_judged_pairs_until_the_cap():
  adaptive = AdaptiveThreshold(threshold=0.5, target=0.9, max_refits=2, min_pairs=32)
  outputs = [_output(seed) for seed in range(3)]
  first = adaptive.observe(outputs[0])
  judged = outputs[0].deep_agreed != UNCHECKED
  expected = fit_beta_mixture(outputs[0].confidences[judged], outputs[0].deep_agreed[judged])
  assert adaptive.mixture == expected and first == expected.threshold(0.9)
  assert 0.5 < first < 1.0
  second = adaptive.observe(outputs[1])
  assert adaptive.refits == 2 and second != first
  assert adaptive.observe(outputs[2]) == second and adaptive.refits == 2  # capped


def test_no_fit_before_enough_pairs_with_both_verdicts():
  adaptive = AdaptiveThreshold(threshold=0.7, min_pairs=32)
  all_agree = types.SimpleNamespace(confidences=np.full((2, 40), 0.9),
                                    deep_agreed=np.ones((2, 40), np.int32))
  assert adaptive.observe(all_agree) == 0.7 and adaptive.refits == 0


def test_decode_batches_decodes_each_batch_at_the_latest_lambda():
  adaptive = AdaptiveThreshold(threshold=0.4, max_refits=1)
  seen = []

  def decode(ids, mask, exit_config):
    seen.append(exit_config.threshold)
    return _output(len(seen))
  exit_config = ExitConfig(decoding="synchronized", adaptive_threshold="beta_mixture")
  decode_batches(decode, [(None, None)] * 3, exit_config, adaptive)
  assert seen[0] == 0.4 and seen[1] == seen[2] == adaptive.threshold != 0.4


@pytest.mark.parametrize("bad, message", [(dict(target=1.0), "target must be in"),
                                          (dict(min_pairs=2), "min_pairs >= 4")])
def test_bad_settings_are_refused(bad, message):
  with pytest.raises(ValueError, match=message):
    AdaptiveThreshold(threshold=0.5, **bad)
