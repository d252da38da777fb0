"""The one registry of learned exit classifiers: name -> module, default options and what
the classifier looks at, and the checks of options and parameters.

| name              | looks at                                  | options (default)            |
|-------------------|-------------------------------------------|------------------------------|
| `meta_linear`     | this layer's state                        | -                            |
| `meta_mlp`        | this layer's state                        | hidden_width (d_model)       |
| `three_state_mlp` | the last three exit points' states        | hidden_width (d_model)       |
| `lstm`            | this token's states at every exit point   | num_layers (2), width (64)   |
|                   | so far, oldest first                      |                              |
| `attention`       | this layer's states of every position so  | width (64), num_heads (4)    |
|                   | far (causal, one attention-only layer)    |                              |

Options are never stored apart from the parameters: they are read off the parameter shapes
(`classifier_options`), so a parameter tree alone says which module it belongs to, and the
decoder needs nothing but the classifier's name (`ExitConfig.measure`) and its parameters.
A confidence measure is learned exactly when its name is registered here (`is_learned`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from calm_jax.exit_classifiers.modules import (LayerLSTM, MetaLinear, MetaMLP,
                                               PositionAttention, ThreeStateMLP)

Array = jnp.ndarray
Params = Any


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
  """A registered classifier: its module, options and what it looks at."""

  name: str
  module: Callable[..., nn.Module]  # (**options) -> the Flax module
  defaults: Mapping[str, Optional[int]]  # option -> default; None means d_model
  # params -> options, read off the parameter shapes
  options_of: Callable[[Params], Dict[str, int]]
  # 'state' (this layer's), 'exit_points' (the last three), 'layers' (all exit points so
  # far, recurrent) or 'positions' (this layer's states of all positions so far)
  context: str


CLASSIFIERS: Dict[str, ClassifierSpec] = {
    spec.name: spec for spec in [
        ClassifierSpec("meta_linear", MetaLinear, {}, lambda p: {}, "state"),
        ClassifierSpec("meta_mlp", MetaMLP, {"hidden_width": None},
                       lambda p: {"hidden_width": p["hidden"]["kernel"].shape[1]}, "state"),
        ClassifierSpec("three_state_mlp", ThreeStateMLP, {"hidden_width": None},
                       lambda p: {"hidden_width": p["hidden"]["kernel"].shape[1]},
                       "exit_points"),
        ClassifierSpec("lstm", LayerLSTM, {"num_layers": 2, "width": 64},
                       lambda p: {"num_layers": sum(k.startswith("cells_") for k in p),
                                  "width": p["cells_0"]["recurrent"]["kernel"].shape[0]},
                       "layers"),
        ClassifierSpec("attention", PositionAttention, {"width": 64, "num_heads": 4},
                       lambda p: {"width": p["embedding"]["kernel"].shape[1],
                                  "num_heads": p["query"]["kernel"].shape[1]}, "positions"),
    ]
}


def is_learned(measure: str) -> bool:
  """Whether confidence measure `measure` is a learned exit classifier (needs parameters)."""
  return measure in CLASSIFIERS


def get_classifier(name: str) -> ClassifierSpec:
  if name not in CLASSIFIERS:
    raise ValueError(f"unknown exit classifier {name!r}; registered: "
                     f"{', '.join(sorted(CLASSIFIERS))}")
  return CLASSIFIERS[name]


def check_classifier_options(name: str, d_model: int,
                             options: Mapping[str, Any]) -> Dict[str, int]:
  """The classifier's options with defaults filled in, or a ValueError naming the bad one
  (training configs call it before any model is loaded)."""
  spec = get_classifier(name)
  unknown = sorted(set(options) - set(spec.defaults))
  if unknown:
    allowed = ", ".join(spec.defaults) or "none"
    raise ValueError(f"unknown option(s) {unknown} for exit classifier {name!r}; allowed: "
                     f"{allowed}")
  filled = {key: d_model if default is None else default
            for key, default in spec.defaults.items()}
  filled.update(options)
  for key, value in filled.items():
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"exit classifier {name!r} option {key}={value!r} must be a positive "
                       "integer")
  if name == "attention" and filled["width"] % filled["num_heads"]:
    raise ValueError(f"exit classifier 'attention': width={filled['width']} must be a "
                     f"multiple of num_heads={filled['num_heads']}")
  return {key: int(value) for key, value in filled.items()}


def _init_inputs(spec: ClassifierSpec, d_model: int, options: Mapping[str, int]):
  """(arguments, method) that make `init` touch every parameter."""
  if spec.context == "exit_points":
    return (jnp.zeros((1, 3, d_model)),), None
  if spec.context == "layers":
    carry = initial_lstm_carry_shape(1, options["num_layers"], options["width"])
    return (carry, jnp.zeros((1, d_model))), None
  if spec.context == "positions":
    return (jnp.zeros((1, 2, d_model)),), PositionAttention.init_all
  return (jnp.zeros((1, d_model)),), None


def initial_lstm_carry_shape(batch: int, num_layers: int, width: int) -> Tuple[Array, Array]:
  """Zero (outputs, memories) of a LayerLSTM, each [batch, num_layers, width]."""
  zeros = jnp.zeros((batch, num_layers, width), jnp.float32)
  return zeros, zeros


def init_classifier(name: str, model_config, rng: Array, **options) -> Params:
  """Fresh parameters (a plain nested dict) of classifier `name` for the model's d_model."""
  d_model = model_config.d_model
  options = check_classifier_options(name, d_model, options)
  spec = get_classifier(name)
  arguments, method = _init_inputs(spec, d_model, options)
  variables = spec.module(**options).init(rng, *arguments, method=method)
  return flax.core.unfreeze(variables["params"])


def classifier_options(name: str, params: Params) -> Dict[str, int]:
  """The options a parameter tree was built with, read off its shapes."""
  try:
    return get_classifier(name).options_of(params)
  except (KeyError, TypeError, IndexError, AttributeError) as error:
    raise ValueError(f"parameters do not look like an exit classifier {name!r} (missing or "
                     f"malformed entry: {error!r})") from None


def _leaf_shapes(tree: Params) -> Dict[str, Tuple[int, ...]]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in flat}


def check_classifier_params(name: str, params: Params, d_model: int) -> Dict[str, int]:
  """Checks that `params` is a complete classifier `name` for states of width d_model;
  returns its options. ValueError naming the first bad entry."""
  if params is None:
    raise ValueError(f"measure {name!r} is a learned exit classifier and needs its parameters "
                     "(classifier_params=..., or config.exit.classifier_path)")
  options = classifier_options(name, params)
  expected = _expected_shapes(name, d_model, tuple(sorted(options.items())))
  got = _leaf_shapes(params)
  for key in sorted(set(expected) | set(got)):
    if key not in got:
      raise ValueError(f"exit classifier {name!r} parameters lack {key} (shape "
                       f"{expected[key]})")
    if key not in expected:
      raise ValueError(f"exit classifier {name!r} parameters have an unexpected entry {key}")
    if got[key] != expected[key]:
      raise ValueError(f"exit classifier {name!r} parameter {key} has shape {got[key]}, "
                       f"expected {expected[key]} (options {options}, d_model {d_model})")
  return options


@functools.lru_cache(maxsize=64)
def _expected_shapes(name: str, d_model: int, options: Tuple[Tuple[str, int], ...]
                     ) -> Dict[str, Tuple[int, ...]]:
  """The leaf shapes of classifier `name` built with `options` for width d_model: traced
  once per (name, width, options), since every decode call checks its parameters (tracing
  the module's init took about 8 ms, four times a batch-1 decode of the demo model)."""
  return _leaf_shapes(jax.eval_shape(
      lambda: init_classifier(name, _Width(d_model), jax.random.PRNGKey(0), **dict(options))))


@dataclasses.dataclass(frozen=True)
class _Width:
  """Stands in for a model config where only d_model matters."""

  d_model: int


def build_classifier(name: str, params: Params) -> nn.Module:
  """The module of classifier `name` with the options its parameters were built with."""
  return get_classifier(name).module(**classifier_options(name, params))


def apply_classifier(name: str, params: Params, *args, method=None):
  """classifier `name`'s module applied with `params` (options read off their shapes)."""
  return build_classifier(name, params).apply({"params": params}, *args, method=method)


def confidence_from_logits(logits: Array) -> Array:
  """P(consistent) = softmax(logits)[..., 1], float32."""
  return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]
