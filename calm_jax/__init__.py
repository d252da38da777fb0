"""calm_jax: Confident Adaptive Language Modeling (early-exit T5 decoding) in JAX/Flax."""

from calm_jax.decoding.early_exit import GenerateOutput
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate, generate_grid
from calm_jax.decoding.sampling import SamplingConfig
from calm_jax.model.config import T5Config
from calm_jax.model.hf_import import CheckpointError, load_hf_t5
from calm_jax.model.t5 import ForwardOutput, encode, exit_logits, forward, init_params

__all__ = [
    "CheckpointError", "ExitConfig", "ForwardOutput", "GenerateOutput", "SamplingConfig",
    "T5Config", "encode", "exit_logits", "forward", "generate", "generate_grid", "init_params",
    "load_hf_t5",
]
