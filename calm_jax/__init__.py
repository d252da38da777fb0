"""calm_jax: Confident Adaptive Language Modeling (early-exit T5 decoding) in JAX/Flax.

The public names below are imported on first use, so that the NumPy-only parts
(the `calm_jax.calibration` package, `calm_jax.data.metrics`) load without JAX.
"""

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    "CheckpointError": "calm_jax.model.hf_import",
    "ExitConfig": "calm_jax.decoding.exit_rule",
    "ForwardOutput": "calm_jax.model.t5",
    "GenerateOutput": "calm_jax.decoding.early_exit",
    "SamplingConfig": "calm_jax.decoding.sampling",
    "T5Config": "calm_jax.model.config",
    "encode": "calm_jax.model.t5",
    "exit_logits": "calm_jax.model.t5",
    "forward": "calm_jax.model.t5",
    "generate": "calm_jax.decoding.generate",
    "generate_grid": "calm_jax.decoding.generate",
    "init_params": "calm_jax.model.t5",
    "load_hf_t5": "calm_jax.model.hf_import",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  if name not in _EXPORTS:
    raise AttributeError(f"module 'calm_jax' has no attribute {name!r}")
  value = getattr(importlib.import_module(_EXPORTS[name]), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))
