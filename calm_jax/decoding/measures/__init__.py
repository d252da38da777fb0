"""Confidence measures, one small object per measure with its options bound, built once
per decode from the `ExitConfig` (`build_measure`).

| family         | measures                                              | module        |
|----------------|-------------------------------------------------------|---------------|
| softmax        | softmax_diff, softmax_max, monotone_heuristic         | softmax       |
| saturation     | state_saturation                                      | saturation    |
| pruned vocab   | softmax_topk, softmax_pruned                          | pruned        |
| contrastive    | contrastive_weighted, contrastive_jsd                 | contrastive   |
| learned        | the exit classifiers of `calm_jax.exit_classifiers`   | learned       |
| analysis exits | static, oracle                                        | fixed         |

`base` defines the interface (`Measure`, `Needs`, `MeasureContext`, `LayerInputs`,
`PositionStore`).
"""

from __future__ import annotations

from typing import Callable, Dict

from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.measures.base import (LayerInputs, Measure, MeasureContext, Needs,
                                             PositionStore)
from calm_jax.decoding.measures.contrastive import ContrastiveJSD, ContrastiveWeighted
from calm_jax.decoding.measures.fixed import OracleExit, StaticExit
from calm_jax.decoding.measures.learned import BY_CONTEXT
from calm_jax.decoding.measures.pruned import PrunedSoftmax, SoftmaxPruned
from calm_jax.decoding.measures.saturation import StateSaturation
from calm_jax.decoding.measures.softmax import MonotoneHeuristic, SoftmaxDiff, SoftmaxMax
from calm_jax.exit_classifiers.registry import CLASSIFIERS
from calm_jax.model.config import T5Config

__all__ = ["LayerInputs", "Measure", "MeasureContext", "Needs", "PositionStore", "MEASURES",
           "build_measure", "checked_measure"]

# name -> (exit config -> the measure with its options bound)
MEASURES: Dict[str, Callable[[ExitConfig], Measure]] = {
    "softmax_diff": lambda exit_config: SoftmaxDiff(),
    "softmax_max": lambda exit_config: SoftmaxMax(),
    "monotone_heuristic": lambda exit_config: MonotoneHeuristic(),
    "state_saturation": lambda exit_config: StateSaturation(),
    "softmax_topk": lambda exit_config: PrunedSoftmax(top_k=exit_config.top_k),
    "softmax_pruned": lambda exit_config: SoftmaxPruned(
        top_k=exit_config.top_k, pruning=exit_config.pruning,
        min_top_k=exit_config.min_top_k),
    "contrastive_weighted": lambda exit_config: ContrastiveWeighted(
        alpha=exit_config.contrastive_alpha, emit_contrastive=exit_config.contrastive_token),
    "contrastive_jsd": lambda exit_config: ContrastiveJSD(
        alpha=exit_config.contrastive_alpha, emit_contrastive=exit_config.contrastive_token,
        exit_rule=exit_config.compiled_part(), by_distance=exit_config.jsd_by_distance),
    "static": lambda exit_config: StaticExit(layer=exit_config.static_exit_layer),
    "oracle": lambda exit_config: OracleExit(),
}


def _learned(name: str) -> Callable[[ExitConfig], Measure]:
  """The builder of learned classifier `name`'s measure (class by what it looks at)."""
  measure_class = BY_CONTEXT[CLASSIFIERS[name].context]
  return lambda exit_config: measure_class(classifier=name)


MEASURES.update({name: _learned(name) for name in CLASSIFIERS})


def build_measure(exit_config: ExitConfig) -> Measure:
  """The measure `exit_config.measure` with its options bound; ValueError for an unknown
  name."""
  if exit_config.measure not in MEASURES:
    raise ValueError(f"unknown confidence measure {exit_config.measure!r}; registered: "
                     f"{', '.join(sorted(MEASURES))}")
  return MEASURES[exit_config.measure](exit_config)


def checked_measure(exit_config: ExitConfig, model_config: T5Config) -> Measure:
  """The measure of `exit_config` for this model, after checking the config's generic
  fields and the measure's own options; call before compiling anything."""
  exit_config.validate(model_config.num_decoder_layers)
  measure = build_measure(exit_config)
  measure.validate(model_config)
  return measure
