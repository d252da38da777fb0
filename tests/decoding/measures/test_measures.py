"""The registry of confidence measures (`measures/__init__.py`): its names, the builders, the
declarations the decoder reads, and `checked_measure` (generic checks + the measure's own)."""

import pytest

from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.measures import MEASURES, Measure, build_measure, checked_measure
from calm_jax.exit_classifiers.registry import is_learned
from calm_jax.model.config import T5Config

NAMES = [
    "attention", "contrastive_jsd", "contrastive_weighted", "lstm", "meta_linear",
    "meta_mlp", "monotone_heuristic", "oracle", "softmax_diff", "softmax_max",
    "softmax_pruned", "softmax_topk", "state_saturation", "static", "three_state_mlp"]


def _needs(name):
  return build_measure(ExitConfig(measure=name)).needs


def test_registry_names_and_flags():
  assert sorted(MEASURES) == NAMES
  assert _needs("monotone_heuristic").every_exit_point
  assert not any(_needs(m).every_exit_point for m in ["softmax_diff", "softmax_max", "oracle"])
  assert _needs("softmax_diff").logits == "full" and _needs("softmax_max").logits == "full"
  assert _needs("state_saturation").logits != "full"
  assert _needs("oracle").final_top1 and not _needs("oracle").thresholded
  assert not _needs("static").thresholded
  assert [name for name in NAMES if is_learned(name)] == [
      "attention", "lstm", "meta_linear", "meta_mlp", "three_state_mlp"]


@pytest.mark.parametrize("name", NAMES)
def test_every_builder_gives_a_measure_of_its_name(name):
  measure = MEASURES[name](ExitConfig(measure=name))
  assert isinstance(measure, Measure)
  assert measure.name == name
  assert build_measure(ExitConfig(measure=name)) == measure
  hash(measure)  # part of the decoder's static plan


@pytest.mark.parametrize("check", [
    lambda exit_config: build_measure(exit_config),
    lambda exit_config: checked_measure(exit_config, T5Config(num_decoder_layers=6)),
], ids=["build_measure", "checked_measure"])
def test_unknown_measure_is_rejected(check):
  with pytest.raises(ValueError, match="unknown confidence measure 'bogus'; registered: "
                     "attention, .*, monotone_heuristic, oracle, softmax_diff, softmax_max, "
                     ".*, state_saturation, static, three_state_mlp$"):
    check(ExitConfig(measure="bogus"))


@pytest.mark.parametrize("fields, message", [
    (dict(threshold=-0.1), r"ExitConfig.threshold \(lambda\) must be >= 0, got -0.1"),
    (dict(measure="static", min_exit_layer=7), r"ExitConfig.min_exit_layer=7 must be in "
     r"\[1, 6\]"),
])
def test_checked_measure_checks_the_generic_fields_too(fields, message):
  with pytest.raises(ValueError, match=message):
    checked_measure(ExitConfig(**fields), T5Config(num_decoder_layers=6))


@pytest.mark.parametrize("fields", [
    dict(), dict(threshold=0.0), dict(threshold=1.5, tau=4.0, decay="code"),
    dict(min_exit_layer=6, exit_interval=3), dict(measure="static", static_exit_layer=6),
    dict(measure="oracle", propagation="full_compute"),
    # A static layer is only checked for the static measure.
    dict(measure="softmax_max", static_exit_layer=99),
])
def test_checked_measure_accepts(fields):
  exit_config = ExitConfig(**fields)
  assert checked_measure(exit_config, T5Config(num_decoder_layers=6)) == build_measure(
      exit_config)
