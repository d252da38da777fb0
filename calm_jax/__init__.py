"""calm_jax: Confident Adaptive Language Modeling (early-exit T5 decoding) in JAX/Flax."""

from calm_jax.model.config import T5Config
from calm_jax.model.hf_import import CheckpointError, load_hf_t5
from calm_jax.model.t5 import ForwardOutput, encode, exit_logits, forward, init_params

__all__ = [
    "CheckpointError", "ForwardOutput", "T5Config", "encode", "exit_logits", "forward",
    "init_params", "load_hf_t5",
]
