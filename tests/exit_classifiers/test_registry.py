"""The registry of learned exit classifiers (`exit_classifiers.registry`): options read off
parameter shapes, and bad classifiers, options and parameters rejected."""

import functools

import jax
import numpy as np
import pytest

from calm_jax.exit_classifiers import registry
from calm_jax.exit_classifiers.registry import check_classifier_params, init_classifier

NAMES = ["attention", "lstm", "meta_linear", "meta_mlp", "three_state_mlp"]


@pytest.fixture(scope="module")
def model(classifier_model):
  """conftest's classifier_model: the tiny T5, its batch and one random head per
  classifier."""
  return classifier_model


def test_options_are_read_off_parameter_shapes(model):
  config, options = model.base_config, model.options
  for name in NAMES:
    params = init_classifier(name, config, jax.random.PRNGKey(0), **options[name])
    expected = dict(options[name])
    assert registry.classifier_options(name, params) == expected
    assert check_classifier_params(name, params, config.d_model) == expected
  defaults = init_classifier("lstm", config, jax.random.PRNGKey(0))
  assert registry.classifier_options("lstm", defaults) == {"num_layers": 2, "width": 64}
  mlp = init_classifier("meta_mlp", config, jax.random.PRNGKey(0))
  assert registry.classifier_options("meta_mlp", mlp) == {"hidden_width": config.d_model}
  three = init_classifier("lstm", config, jax.random.PRNGKey(0), num_layers=3, width=4)
  assert registry.classifier_options("lstm", three) == {"num_layers": 3, "width": 4}


def test_bad_classifiers_and_options_are_rejected(model):
  config = model.base_config
  init = functools.partial(init_classifier, model_config=config, rng=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="unknown exit classifier 'mlp'"):
    init("mlp")
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['heads'\] for exit classifier "
                     "'attention'; allowed: width, num_heads"):
    init("attention", heads=2)
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['width'\] .*allowed: none"):
    init("meta_linear", width=2)
  with pytest.raises(ValueError, match="option num_layers=0 must be a positive integer"):
    init("lstm", num_layers=0)
  with pytest.raises(ValueError, match="width=6 must be a multiple of num_heads=4"):
    init("attention", width=6)
  head = model.heads["meta_mlp"]
  wrong_width = jax.tree.map(lambda w: w, head)
  wrong_width["out"]["kernel"] = np.zeros((5, 2), np.float32)
  with pytest.raises(ValueError, match=r"parameter \['out'\]\['kernel'\] has shape \(5, 2\), "
                     r"expected \(12, 2\)"):
    check_classifier_params("meta_mlp", wrong_width, config.d_model)
  with pytest.raises(ValueError, match="parameters do not look like an exit classifier 'lstm'"):
    check_classifier_params("lstm", head, config.d_model)
  with pytest.raises(ValueError, match="'meta_linear' parameters have an unexpected entry "
                     r"\['hidden'\]"):
    check_classifier_params("meta_linear", head, config.d_model)


def test_parameter_check_traces_the_classifier_once_per_shape(model, monkeypatch):
  # Every decode call checks its classifier parameters; tracing the module's init each time
  # cost several times a batch-1 decode of the demo model.
  config = model.base_config
  traced = []
  real_init = registry.init_classifier
  monkeypatch.setattr(registry, "init_classifier",
                      lambda *args, **kw: traced.append(args[0]) or real_init(*args, **kw))
  registry._expected_shapes.cache_clear()  # pylint: disable=protected-access
  mlp = init_classifier("meta_mlp", config, jax.random.PRNGKey(0), hidden_width=7)
  for _ in range(3):
    assert check_classifier_params("meta_mlp", mlp, config.d_model) == {"hidden_width": 7}
  assert traced == ["meta_mlp"]
  wider = init_classifier("meta_mlp", config, jax.random.PRNGKey(0), hidden_width=9)
  assert check_classifier_params("meta_mlp", wider, config.d_model) == {"hidden_width": 9}
  bad = jax.tree.map(np.asarray, wider)
  bad["out"]["kernel"] = np.zeros((5, 2), np.float32)
  with pytest.raises(ValueError, match=r"\['out'\]\['kernel'\] has shape \(5, 2\), expected "
                     r"\(9, 2\)"):
    check_classifier_params("meta_mlp", bad, config.d_model)
  assert traced == ["meta_mlp", "meta_mlp"]  # one more trace, for the new width only
