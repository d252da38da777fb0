"""Export of calm_jax T5 parameters as a Hugging Face T5 directory.

The directory holds `config.json` and `model.safetensors` (the tensors under the names
`hf_import` reads, so an export imports back unchanged) and, when a tokenizer directory is
given, its tokenizer files. It is written into a temporary directory beside the target and
renamed into place, so a failed export leaves nothing half-written.

Head tying: transformers 5 reads `tie_word_embeddings` only to set `scale_decoder_outputs`
and then ties every T5 head to the embedding, unless the checkpoint holds an
`lm_head.weight` that differs from `shared.weight`. An untied model is therefore written
with `lm_head.weight`, `tie_word_embeddings: false` (what older readers, and `hf_import`,
read) and an explicit `scale_decoder_outputs`, so every reader loads it untied with the
same scaling.
"""

from __future__ import annotations

import os
import shutil
from typing import Any, Dict, Optional

import jax
import numpy as np

from calm_jax.model.config import T5Config
from calm_jax.model.hf_import import _layer_mapping, _self_attention_name
from calm_jax.utils.files import write_json_atomically, write_directory_atomically

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Files of a Hugging Face tokenizer directory that travel with an export.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model",
                   "special_tokens_map.json", "added_tokens.json")


def _long_t5_fields(config: T5Config) -> Dict[str, Any]:
  """The LongT5 encoder's config.json fields (none for a T5)."""
  if not config.is_long:
    return {}
  return {"encoder_attention_type": config.encoder_attention_type,
          "local_radius": config.local_radius, "global_block_size": config.global_block_size}


def hf_config(config: T5Config) -> Dict[str, Any]:
  """config.json of a transformers T5ForConditionalGeneration (LongT5ForConditionalGeneration
  for a LongT5 encoder) with `config`'s shapes."""
  family = "LongT5" if config.is_long else "T5"
  return {
      **_long_t5_fields(config),
      "architectures": [f"{family}ForConditionalGeneration"],
      "model_type": family.lower(),
      "is_encoder_decoder": True,
      "vocab_size": config.vocab_size,
      "d_model": config.d_model,
      "d_kv": config.d_kv,
      "d_ff": config.d_ff,
      "num_layers": config.num_layers,
      "num_decoder_layers": config.num_decoder_layers,
      "num_heads": config.num_heads,
      "relative_attention_num_buckets": config.relative_attention_num_buckets,
      "relative_attention_max_distance": config.relative_attention_max_distance,
      "dropout_rate": config.dropout_rate,
      "layer_norm_epsilon": config.layer_norm_epsilon,
      "feed_forward_proj": config.feed_forward_proj,
      "tie_word_embeddings": config.tie_word_embeddings,
      "scale_decoder_outputs": config.scale_decoder_outputs,
      "pad_token_id": config.pad_token_id,
      "eos_token_id": config.eos_token_id,
      "decoder_start_token_id": config.decoder_start_token_id,
      "dtype": config.param_dtype,
  }


def _leaf(tree: Any, path: tuple) -> np.ndarray:
  for key in path:
    tree = tree[key]
  return np.asarray(tree)


def _layer_tensors(config: T5Config, stack_params: Any, stack: str,
                   count: int) -> Dict[str, np.ndarray]:
  """HF name -> tensor for every layer of one stack (leaves [count, ...] -> one layer)."""
  tensors = {}
  for index in range(count):
    for hf_name, (path, shape, convert) in _layer_mapping(config, stack, index).items():
      # The mapping's converters (transpose, identity) are their own inverses.
      tensor = convert(_leaf(stack_params["layers"], path)[index])
      if tensor.shape != tuple(shape):
        raise ValueError(f"parameter {stack}/layers/{'/'.join(path)} of layer {index} "
                         f"gives {hf_name} the shape {tensor.shape}, but the config expects "
                         f"{tuple(shape)}")
      tensors[hf_name] = tensor
  return tensors


def hf_tensors(config: T5Config, params: Any) -> Dict[str, np.ndarray]:
  """Every tensor of the Hugging Face checkpoint of `params`, by its name, as host arrays
  (contiguous, in the parameters' dtype)."""
  tensors = {"shared.weight": _leaf(params, ("shared", "embedding"))}
  for stack, count in (("encoder", config.num_layers), ("decoder", config.num_decoder_layers)):
    stack_params = params[stack]
    attention = f"{stack}.block.0.layer.0.{_self_attention_name(config, stack)}"
    tensors[f"{attention}.relative_attention_bias.weight"] = _leaf(stack_params,
                                                                   ("relative_bias",))
    if stack == "encoder" and config.has_global_tokens:
      tensors[f"{attention}.global_relative_attention_bias.weight"] = _leaf(
          stack_params, ("global_relative_bias",))
    tensors[f"{stack}.final_layer_norm.weight"] = _leaf(stack_params, ("final_norm", "scale"))
    tensors.update(_layer_tensors(config, stack_params, stack, count))
  has_head = "lm_head" in params
  if has_head == config.tie_word_embeddings:
    raise ValueError(f"the config's tie_word_embeddings is {config.tie_word_embeddings}, but "
                     f"the parameters {'have' if has_head else 'lack'} an lm_head")
  if has_head:
    tensors["lm_head.weight"] = _leaf(params, ("lm_head", "kernel")).T  # [d, V] -> [V, d]
  return {name: np.ascontiguousarray(t) for name, t in tensors.items()}


def _copy_tokenizer(tokenizer_dir: str, directory: str) -> None:
  names = [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(tokenizer_dir, n))]
  if not names:
    raise ValueError(f"tokenizer directory {tokenizer_dir!r} holds none of the tokenizer "
                     f"files {', '.join(TOKENIZER_FILES)}")
  for name in names:
    shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(directory, name))


def write_hf_t5(directory: str, config: T5Config, params: Any,
                tokenizer_dir: Optional[str] = None) -> None:
  """Writes config.json, model.safetensors and (given `tokenizer_dir`) the tokenizer files
  into the existing `directory`."""
  from safetensors.flax import save_file  # pylint: disable=import-outside-toplevel
  tensors = hf_tensors(config, params)
  if tokenizer_dir is not None:
    _copy_tokenizer(tokenizer_dir, directory)
  with jax.default_device(jax.devices("cpu")[0]):  # the arrays stay on the host
    save_file({name: jax.numpy.asarray(t) for name, t in tensors.items()},
              os.path.join(directory, WEIGHTS_FILE), metadata={"format": "pt"})
  write_json_atomically(os.path.join(directory, CONFIG_FILE), hf_config(config))


def export_hf_t5(directory: str, config: T5Config, params: Any,
                 tokenizer_dir: Optional[str] = None) -> str:
  """Writes a Hugging Face T5 directory at `directory` (replacing an older one) through a
  temporary directory and a rename; returns the directory."""
  if tokenizer_dir is not None and not os.path.isdir(tokenizer_dir):
    raise ValueError(f"tokenizer directory {tokenizer_dir!r} does not exist")
  write_directory_atomically(directory, lambda temporary: write_hf_t5(
      temporary, config, params, tokenizer_dir))
  return directory
