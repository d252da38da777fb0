"""Where a run's model comes from: a Hugging Face checkpoint or fresh initialisation."""

from __future__ import annotations

from typing import Any, Tuple

import jax
import ml_collections

from calm_jax.model.config import T5Config
from calm_jax.model.hf_import import load_hf_t5
from calm_jax.model.t5 import init_params

# ConfigDict fields under `model` that are not T5Config fields.
SOURCE_FIELDS = ("hf_path",)


def t5_config_from(model_config: ml_collections.ConfigDict) -> T5Config:
  """T5Config from the `model` section of a run config (unknown fields are errors)."""
  values = {k: v for k, v in model_config.items() if k not in SOURCE_FIELDS}
  return T5Config.from_dict(values)


def load_model(model_config: ml_collections.ConfigDict, seed: int) -> Tuple[T5Config, Any]:
  """(config, params): imported from `hf_path` when set, else freshly initialised."""
  if model_config.hf_path:
    return load_hf_t5(model_config.hf_path, dtype=model_config.dtype,
                      param_dtype=model_config.param_dtype)
  config = t5_config_from(model_config)
  return config, init_params(config, jax.random.PRNGKey(seed))
