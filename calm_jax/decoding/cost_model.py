"""What a decode's tokens cost in arithmetic: the ideal speedup early exit can give.

A token that leaves at layer e of L ran e decoder layers, the measure's checks at the exit
points up to e, the exit head (unless a check already computed its logits) and, with
state propagation, the K/V projections of the L - e layers it skipped. Pricing each piece
in multiply-adds per example (equal to the weight elements read per token at batch 1, where
decoding is bound by memory bandwidth, and proportional to FLOPs at large batch) and summing
over a decode's generated tokens gives its work; the token loop's ideal speedup is the
work of the same decoder at lambda = 1 on the same inputs over its own work. A whole decode
also runs the encoder and each layer's cross-attention K/V once per input, the same for
every configuration; its products span all input positions at once, so multiply-adds price
it badly against the loop's one-position steps. Its share of the reference's time is
measured instead (the evaluate mode times it in the same rounds), and `with_fixed_part`
turns the loop's ideal into the whole decode's (Amdahl's law). A measured wall-clock
speedup is judged against that ideal (realized / ideal): what is lost between the two is
the decoder's machinery (loops, branches, row compaction), not the exit rule.

It works on the host, on exit layers [N, T] (0 after EOS) from any decoder.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import numpy as np

from calm_jax.decoding.exit_rule import ExitConfig, exit_point_layers
from calm_jax.decoding.measures import Needs, build_measure
from calm_jax.model.config import T5Config


@dataclasses.dataclass(frozen=True)
class WorkPrices:
  """Multiply-adds per example of each piece of one token's work."""

  layer_weights: int  # one decoder layer's weight products and norms
  attention_position: int  # one layer's attention to one cached position (q.k and p.v)
  input_len: int  # encoder positions every layer's cross-attention reads
  head: int  # the exit head: final norm and the d x V product
  kv_write: int  # one skipped layer's propagated K/V: its norm and d x 2*inner
  first_check: int  # the measure at the first exit point a token reaches
  later_check: int  # the measure at each later exit point
  checks_at_lambda_one: bool  # the measure still runs where no exit is allowed


def layer_weight_elements(config: T5Config) -> int:
  """One decoder layer's weight elements (its cross-attention K/V projections excluded:
  they run once per input), which is also its multiply-adds per example."""
  d, inner = config.d_model, config.inner_dim
  attention = 4 * d * inner + 2 * d * inner  # self q, k, v, o; cross q, o (cross K/V cached)
  feed_forward = (3 if config.is_gated else 2) * d * config.d_ff
  return attention + feed_forward + 3 * d  # three RMS norms


def _check_prices(config: T5Config, needs: Needs, classifier_size: int):
  """(first check, later checks) of a measure with these needs."""
  head = config.d_model * config.vocab_size + config.vocab_size  # product and softmax
  if needs.logits == "full":
    return head, head
  if needs.logits == "subset":  # the full softmax once, then K head rows per check
    return head, (config.d_model + 1) * needs.subset_width
  # Hidden-state measures: a learned classifier's parameters, or a few d-wide products.
  cheap = max(classifier_size, 3 * config.d_model)
  return cheap, cheap


def work_prices(config: T5Config, exit_config: ExitConfig, input_len: int,
                classifier_params=None) -> WorkPrices:
  """The prices of one token's pieces for this model, measure and input length."""
  needs = build_measure(exit_config).needs
  classifier_size = 0
  if classifier_params is not None:
    classifier_size = int(sum(np.size(leaf) for leaf in jax.tree.leaves(classifier_params)))
  first, later = _check_prices(config, needs, classifier_size)
  d, inner = config.d_model, config.inner_dim
  return WorkPrices(
      layer_weights=layer_weight_elements(config), attention_position=2 * inner,
      input_len=int(input_len), head=d * config.vocab_size + d, kv_write=2 * d * inner + d,
      first_check=first, later_check=later,
      checks_at_lambda_one=needs.every_exit_point or needs.logits != "full")


def decode_work(exit_layers: np.ndarray, prices: WorkPrices, exit_config: ExitConfig,
                num_layers: int) -> float:
  """Multiply-adds of a decode under `exit_config` whose tokens left at `exit_layers`
  [N, T] (0 = no token). At lambda >= 1 a thresholded measure on the full logits checks
  only at layer L (whose logits give the token); the oracle first runs a full pass."""
  needs = _needs(exit_config)
  early_allowed = exit_config.threshold < 1.0 or not needs.thresholded
  exit_layers = np.asarray(exit_layers)
  positions = np.broadcast_to(np.arange(exit_layers.shape[1]), exit_layers.shape)
  ran = exit_layers > 0
  e, t = exit_layers[ran].astype(np.float64), positions[ran].astype(np.float64)
  per_layer = (prices.layer_weights
               + prices.attention_position * (t + 1 + prices.input_len))  # [tokens]
  layers = e * per_layer
  checks = _checks(e, prices, exit_config, num_layers, early_allowed)
  emitted_by_check = exit_config.measure != "static" and _needs(exit_config).logits == "full"
  head = 0.0 if emitted_by_check else prices.head * _token_heads(e, exit_config, num_layers)
  propagated = 0.0
  if exit_config.propagation == "copy_state":
    propagated = (num_layers - e) * prices.kv_write
  else:  # full_compute: every layer runs on true states whatever the exit
    layers = num_layers * per_layer
  total = layers + checks + head + propagated
  if needs.final_top1:  # the oracle's full pass
    total = total + num_layers * per_layer + prices.head
  return float(np.sum(total))


def _needs(exit_config: ExitConfig) -> Needs:
  return build_measure(exit_config).needs


def _token_heads(e: np.ndarray, exit_config: ExitConfig, num_layers: int):
  """[tokens] 1 where the emitted token needed the full head outside the checks."""
  if _needs(exit_config).logits == "subset":
    return (e == num_layers).astype(np.float64)  # early exits emit from the kept subset
  return np.ones_like(e)


def _checks(e: np.ndarray, prices: WorkPrices, exit_config: ExitConfig, num_layers: int,
            early_allowed: bool) -> np.ndarray:
  """[tokens] multiply-adds of the measure's checks of each token."""
  if exit_config.measure == "static":
    return np.zeros_like(e)
  needs = _needs(exit_config)
  if needs.every_layer:
    points = np.arange(1, num_layers + 1)
  else:
    points = np.asarray(exit_point_layers(exit_config, num_layers))
  if not early_allowed and not prices.checks_at_lambda_one:
    points = np.asarray([num_layers])
  count = np.sum(points[None, :] <= e[:, None], axis=1).astype(np.float64)  # [tokens]
  return np.where(count > 0, prices.first_check + (count - 1) * prices.later_check, 0.0)


def ideal_speedup(reference_work: float, work: float) -> Optional[float]:
  """Work of the lambda = 1 decoder over this configuration's work (None without work)."""
  return reference_work / work if work > 0 else None


def with_fixed_part(loop_ideal: Optional[float], fixed_share: float) -> Optional[float]:
  """The ideal speedup of a whole decode whose token loop alone would gain `loop_ideal`,
  when a share `fixed_share` in [0, 1) of the reference's time goes to work every
  configuration does once per input (the encoder, the cross-attention K/V) and no exit
  shortens: 1 / (fixed_share + (1 - fixed_share) / loop_ideal)."""
  if not 0.0 <= fixed_share < 1.0:
    raise ValueError(f"fixed_share must be in [0, 1), got {fixed_share!r}")
  if loop_ideal is None:
    return None
  return 1.0 / (fixed_share + (1.0 - fixed_share) / loop_ideal)


def synchronized_work(shallow_steps: np.ndarray, deep_passes: np.ndarray,
                      prices: WorkPrices, exit_config: ExitConfig, num_layers: int,
                      exit_layers: Optional[np.ndarray] = None) -> float:
  """Weight elements a synchronized (FREE) decode reads at batch 1, from its shallow steps
  and deep passes ([N] each): a step runs layers 1..s, the measure and the head (the
  shallow token; neither where lambda >= 1), a deep pass layers s+1..L and the head once for all the positions it
  covers. This is the ideal where decoding is bound by streaming the weights; counted in
  multiply-adds, every token a pass covers runs the deep layers, so a model small enough
  to be bound by arithmetic or per-step overhead instead gains nothing from the passes'
  shared weight reads. With `exit_layers` [N, T] (0 = no token) every generated token's
  attention in all L layers is added as decode_work prices it (at position t: t + 1 cached
  and input_len encoder positions), so the two compare; without, it is left out."""
  shallow = exit_config.shallow_exit_layer
  logits_measure = _needs(exit_config).logits == "full"
  step = shallow * prices.layer_weights
  if exit_config.threshold < 1.0:  # at lambda >= 1 nothing exits: no measure, no head at s
    step += prices.first_check + (0 if logits_measure else prices.head)
  deep = (num_layers - shallow) * prices.layer_weights + prices.head
  attention = 0.0
  if exit_layers is not None:
    exit_layers = np.asarray(exit_layers)
    positions = np.broadcast_to(np.arange(exit_layers.shape[1]), exit_layers.shape)
    t = positions[exit_layers > 0].astype(np.float64)
    attention = num_layers * prices.attention_position * np.sum(t + 1 + prices.input_len)
  return float(np.sum(shallow_steps) * step + np.sum(deep_passes) * deep + attention)
