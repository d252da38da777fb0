"""Where a run's model comes from: a calm_jax params export (what training writes to
`<workdir>/model`), a Hugging Face checkpoint, or fresh initialisation."""

from __future__ import annotations

from typing import Any, Tuple

import jax
import ml_collections

from calm_jax.model.config import T5Config
from calm_jax.model.hf_import import CheckpointError, hf_t5_config, load_hf_t5
from calm_jax.model.t5 import init_params

# ConfigDict fields under `model` that are not T5Config fields.
SOURCE_FIELDS = ("hf_path", "checkpoint")


def t5_config_from(model_config: ml_collections.ConfigDict) -> T5Config:
  """T5Config from the `model` section of a run config (unknown fields are errors)."""
  values = {k: v for k, v in model_config.items() if k not in SOURCE_FIELDS}
  return T5Config.from_dict(values)


def check_source(model_config: ml_collections.ConfigDict) -> None:
  """At most one source is named, and a named export exists (checked before any work)."""
  checkpoint = model_config.get("checkpoint", "")
  if checkpoint and model_config.hf_path:
    raise ValueError(f"model.checkpoint={checkpoint!r} and model.hf_path="
                     f"{model_config.hf_path!r} are both set; name one model source")
  if checkpoint:
    # Imported here: the export reader pulls in Orbax, which decoding alone never needs.
    from calm_jax.training.checkpoints import is_export  # pylint: disable=import-outside-toplevel
    if not is_export(checkpoint):
      raise ValueError(f"model.checkpoint={checkpoint!r} is not a calm_jax params export "
                       "(a directory with config.json and params/, as `train` writes to "
                       "<workdir>/model)")


def source_config(model_config: ml_collections.ConfigDict) -> T5Config:
  """The run model's T5Config without loading any parameters (the export's or checkpoint's
  config.json, or the section's fields): what the checks compare the vocabulary, the exit
  settings and the memory estimate with before any model work."""
  check_source(model_config)
  if model_config.get("checkpoint", ""):
    from calm_jax.training.checkpoints import read_export_config  # pylint: disable=import-outside-toplevel
    return read_export_config(model_config.checkpoint)
  if model_config.hf_path:
    try:
      config = hf_t5_config(model_config.hf_path)
    except CheckpointError as error:
      raise CheckpointError(f"model.hf_path={model_config.hf_path!r}: {error}") from None
    return config.replace(dtype=model_config.dtype, param_dtype=model_config.param_dtype)
  return t5_config_from(model_config)


def describe_source(model_config: ml_collections.ConfigDict, seed: int) -> str:
  """Where the run's model comes from, as a run announces it."""
  if model_config.get("checkpoint", ""):
    return f"calm_jax export {model_config.checkpoint}"
  if model_config.hf_path:
    return f"Hugging Face checkpoint {model_config.hf_path}"
  return f"fresh random initialisation (seed {seed}, untrained)"


def is_random(model_config: ml_collections.ConfigDict) -> bool:
  """Whether the run's model is freshly initialised (no checkpoint, no export)."""
  return not (model_config.get("checkpoint", "") or model_config.hf_path)


def load_model(model_config: ml_collections.ConfigDict, seed: int) -> Tuple[T5Config, Any]:
  """(config, params): from the export `checkpoint`, imported from `hf_path`, or freshly
  initialised when neither is set. The size fields of the section apply only to fresh
  initialisation; an export or import brings its own configuration."""
  check_source(model_config)
  if model_config.get("checkpoint", ""):
    from calm_jax.training.checkpoints import load_exported  # pylint: disable=import-outside-toplevel
    return load_exported(model_config.checkpoint)
  if model_config.hf_path:
    return load_hf_t5(model_config.hf_path, dtype=model_config.dtype,
                      param_dtype=model_config.param_dtype)
  config = t5_config_from(model_config)
  return config, init_params(config, jax.random.PRNGKey(seed))
