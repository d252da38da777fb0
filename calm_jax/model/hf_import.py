"""Import of Hugging Face T5 and LongT5 checkpoints (local directories, or Hub names when
online). A LongT5 checkpoint (`model_type` 'longt5') differs only in its encoder's attention
blocks (`LocalSelfAttention` or `TransientGlobalSelfAttention`, the latter with a global
layer norm per layer and a second relative bias table in block 0).

Every tensor of the checkpoint is accounted for: a tensor the mapping does not know, one it
expects but cannot find, or one whose shape differs is an error naming the tensor.
"""

from __future__ import annotations

import json
import os
import re
from typing import Callable, Dict, Iterator, List, Tuple

import jax
import numpy as np

from calm_jax.model.config import DTYPES, T5Config, config_from_hf

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")
# Aliases of `shared.weight` that some checkpoints store again.
EMBEDDING_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
# Present in original t5-* checkpoints but never used by the model (T5 cross-attention
# has no position bias); accepted and dropped.
UNUSED_TENSORS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
MODEL_TYPES = ("t5", "longt5")
# The encoder self-attention module's name in the checkpoint, by encoder_attention_type.
ENCODER_ATTENTION_NAMES = {"full": "SelfAttention", "local": "LocalSelfAttention",
                           "transient-global": "TransientGlobalSelfAttention"}


class CheckpointError(ValueError):
  """A Hugging Face checkpoint that cannot be imported as it is."""


# ----------------------------------------------------------------------------- locating

def resolve_checkpoint_dir(path: str) -> str:
  """A local directory as is; otherwise a Hub model name resolved to its local snapshot."""
  path = os.path.expanduser(str(path))
  if os.path.isdir(path):
    return path
  if os.path.exists(path):
    raise CheckpointError(f"{path!r} is a file; expected a Hugging Face T5 directory "
                          "(config.json plus model.safetensors or pytorch_model.bin)")
  if path.startswith((".", "/", "~")) or not HUB_NAME.match(path):
    raise CheckpointError(f"no such directory: {path!r} (and it is not a Hub model name)")
  return _download_from_hub(path)


def _download_from_hub(name: str) -> str:
  from huggingface_hub import snapshot_download  # pylint: disable=import-outside-toplevel
  try:
    return snapshot_download(name, allow_patterns=["config.json", "*.safetensors", "*.json",
                                                   "pytorch_model*.bin"])
  except Exception as error:  # the hub raises many types: offline, missing repo, auth
    raise CheckpointError(
        f"{name!r} is not a local directory and could not be fetched from the Hugging Face "
        f"Hub ({type(error).__name__}: {error}). Pass the path of a local T5 directory "
        "when the machine is offline.") from error


def _read_hf_config(directory: str) -> dict:
  config_path = os.path.join(directory, "config.json")
  if not os.path.isfile(config_path):
    raise CheckpointError(f"missing file {config_path}: a Hugging Face T5 directory needs "
                          "config.json")
  try:
    with open(config_path, encoding="utf-8") as f:
      hf = json.load(f)
  except json.JSONDecodeError as error:
    raise CheckpointError(f"{config_path} line {error.lineno}: not valid JSON ({error.msg})") from error
  if not isinstance(hf, dict):
    raise CheckpointError(f"{config_path}: expected a JSON object, got {type(hf).__name__}")
  model_type = hf.get("model_type")
  if model_type not in MODEL_TYPES:
    raise CheckpointError(f"{config_path}: model_type is {model_type!r}; only 't5' "
                          "(T5 v1.0, v1.1, Flan-T5) and 'longt5' can be imported")
  return hf


# ----------------------------------------------------------------------------- reading

def _weight_files(directory: str) -> List[str]:
  """The weight files of a checkpoint, preferring safetensors; sharded or not."""
  for name in WEIGHT_FILES:
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
      continue
    if not name.endswith(".index.json"):
      return [path]
    shards = _index_shards(path)
    missing = [s for s in shards if not os.path.isfile(os.path.join(directory, s))]
    if missing or not shards:
      raise CheckpointError(f"{path} names shard files that are missing: {missing or 'none listed'}")
    return [os.path.join(directory, s) for s in shards]
  raise CheckpointError(f"no weights in {directory}: expected one of {', '.join(WEIGHT_FILES)}")


def _index_shards(index_path: str) -> List[str]:
  """Shard file names listed in a `*.index.json` weight map."""
  try:
    with open(index_path, encoding="utf-8") as f:
      index = json.load(f)
  except json.JSONDecodeError as error:
    raise CheckpointError(f"{index_path} line {error.lineno}: not valid JSON ({error.msg})") from error
  weight_map = index.get("weight_map") if isinstance(index, dict) else None
  if not isinstance(weight_map, dict):
    raise CheckpointError(f"{index_path}: expected an object with a 'weight_map' object")
  return sorted(set(weight_map.values()))


def _read_safetensors(path: str) -> Iterator[Tuple[str, np.ndarray]]:
  from safetensors import safe_open  # pylint: disable=import-outside-toplevel
  # The flax reader understands bfloat16, which NumPy's does not; keep tensors on the host.
  with jax.default_device(jax.devices("cpu")[0]):
    with safe_open(path, framework="flax") as f:
      for name in f.keys():
        yield name, np.asarray(f.get_tensor(name))


def _read_torch_bin(path: str) -> Iterator[Tuple[str, np.ndarray]]:
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise CheckpointError(f"{path} is a PyTorch pickle; reading it needs torch installed "
                          "(or convert the checkpoint to model.safetensors)") from error
  state = torch.load(path, map_location="cpu", weights_only=True)
  for name, tensor in state.items():
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
      yield name, tensor.float().numpy().astype(jax.numpy.bfloat16)
    else:
      yield name, tensor.numpy()


def read_hf_tensors(directory: str) -> Dict[str, np.ndarray]:
  """Every tensor of the checkpoint by its Hugging Face name."""
  tensors: Dict[str, np.ndarray] = {}
  for path in _weight_files(directory):
    reader = _read_safetensors if path.endswith(".safetensors") else _read_torch_bin
    try:
      tensors.update(reader(path))
    except CheckpointError:
      raise
    except Exception as error:  # safetensors and torch raise their own error types
      raise CheckpointError(f"{path} cannot be read as a weight file "
                            f"({type(error).__name__}: {error})") from error
  return tensors


# ----------------------------------------------------------------------------- mapping

def _linear(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x.T)  # torch Linear [out, in] -> Dense kernel [in, out]


def _identity(x: np.ndarray) -> np.ndarray:
  return x


def _self_attention_name(cfg: T5Config, stack: str) -> str:
  return ENCODER_ATTENTION_NAMES[cfg.encoder_attention_type] if stack == "encoder" else "SelfAttention"


def _ffn_names(cfg: T5Config) -> Tuple[str, ...]:
  return ("wi_0", "wi_1", "wo") if cfg.is_gated else ("wi", "wo")


def _layer_mapping(cfg: T5Config, stack: str, index: int) -> Dict[str, Tuple[tuple, tuple, Callable]]:
  """HF name -> (our path inside the layer, expected HF shape, converter), for one layer."""
  d, inner, ff = cfg.d_model, cfg.inner_dim, cfg.d_ff
  prefix = f"{stack}.block.{index}.layer"
  self_attention = _self_attention_name(cfg, stack)
  attention_blocks = [("0", self_attention, "self_attn")]
  if stack == "decoder":
    attention_blocks.append(("1", "EncDecAttention", "cross_attn"))
  mapping = {}
  for sub, hf_name, ours in attention_blocks:
    for proj, shape in (("q", (inner, d)), ("k", (inner, d)), ("v", (inner, d)), ("o", (d, inner))):
      mapping[f"{prefix}.{sub}.{hf_name}.{proj}.weight"] = ((ours, proj, "kernel"), shape, _linear)
    mapping[f"{prefix}.{sub}.layer_norm.weight"] = ((f"{ours}_norm", "scale"), (d,), _identity)
  if stack == "encoder" and cfg.has_global_tokens:
    mapping[f"{prefix}.0.{self_attention}.global_input_layer_norm.weight"] = (
        ("global_norm", "scale"), (d,), _identity)
  ffn_sub = "2" if stack == "decoder" else "1"
  for proj in _ffn_names(cfg):
    shape = (d, ff) if proj == "wo" else (ff, d)
    mapping[f"{prefix}.{ffn_sub}.DenseReluDense.{proj}.weight"] = (("ffn", proj, "kernel"), shape, _linear)
  mapping[f"{prefix}.{ffn_sub}.layer_norm.weight"] = (("ffn_norm", "scale"), (d,), _identity)
  return mapping


def _check_shape(name: str, array: np.ndarray, expected: tuple) -> None:
  if tuple(array.shape) != tuple(expected):
    raise CheckpointError(f"tensor {name} has shape {tuple(array.shape)} but the config "
                          f"expects {tuple(expected)}")


def _take(tensors: Dict[str, np.ndarray], name: str, expected: tuple) -> np.ndarray:
  if name not in tensors:
    raise CheckpointError(f"missing tensor {name} (expected shape {tuple(expected)})")
  array = tensors.pop(name)
  _check_shape(name, array, expected)
  return array


def _set_path(tree: dict, path: tuple, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _stack_layers(cfg: T5Config, tensors: Dict[str, np.ndarray], stack: str, count: int) -> dict:
  per_layer = []
  for index in range(count):
    layer: dict = {}
    for hf_name, (path, shape, convert) in _layer_mapping(cfg, stack, index).items():
      _set_path(layer, path, convert(_take(tensors, hf_name, shape)))
    per_layer.append(layer)
  return jax.tree.map(lambda *xs: np.stack(xs), *per_layer)  # leaves [count, ...]


def _pop_embedding_aliases(cfg: T5Config, tensors: Dict[str, np.ndarray], shared: np.ndarray) -> None:
  aliases = list(EMBEDDING_ALIASES) + (["lm_head.weight"] if cfg.tie_word_embeddings else [])
  for name in aliases:
    if name not in tensors:
      continue
    alias = tensors.pop(name)
    _check_shape(name, alias, shared.shape)
    if not np.array_equal(alias, shared):
      raise CheckpointError(f"tensor {name} differs from shared.weight, but the config ties "
                            "them (tie_word_embeddings is true)" if name == "lm_head.weight"
                            else f"tensor {name} differs from shared.weight; T5 shares one "
                            "embedding between encoder and decoder")


def params_from_hf_tensors(cfg: T5Config, tensors: Dict[str, np.ndarray]) -> dict:
  """Maps HF tensors onto our parameter tree; refuses missing, extra or misshapen tensors."""
  tensors = dict(tensors)
  for name in UNUSED_TENSORS:
    tensors.pop(name, None)
  buckets = (cfg.relative_attention_num_buckets, cfg.num_heads)
  shared = _take(tensors, "shared.weight", (cfg.vocab_size, cfg.d_model))
  _pop_embedding_aliases(cfg, tensors, shared)
  params = {"shared": {"embedding": shared}}
  for stack, count in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
    attention = f"{stack}.block.0.layer.0.{_self_attention_name(cfg, stack)}"
    params[stack] = {
        "relative_bias": _take(tensors, f"{attention}.relative_attention_bias.weight", buckets),
        "final_norm": {"scale": _take(tensors, f"{stack}.final_layer_norm.weight", (cfg.d_model,))},
    }
    if stack == "encoder" and cfg.has_global_tokens:
      params[stack]["global_relative_bias"] = _take(
          tensors, f"{attention}.global_relative_attention_bias.weight", buckets)
    params[stack]["layers"] = _stack_layers(cfg, tensors, stack, count)
  if not cfg.tie_word_embeddings:
    head = _take(tensors, "lm_head.weight", (cfg.vocab_size, cfg.d_model))
    params["lm_head"] = {"kernel": _linear(head)}
  if tensors:
    extra = sorted(tensors)
    raise CheckpointError(f"{len(extra)} tensor(s) in the checkpoint that a T5 with this "
                          f"config does not have: {', '.join(extra[:8])}"
                          + (" ..." if len(extra) > 8 else ""))
  dtype = cfg.jnp_param_dtype
  return jax.tree.map(lambda x: np.asarray(x).astype(dtype), params)


def load_hf_t5(path: str, *, dtype: str = "float32", param_dtype: str = "float32"):
  """Reads a Hugging Face T5 or LongT5 checkpoint -> (T5Config, params as host NumPy arrays).

  `path` is a local directory with config.json and model.safetensors or
  pytorch_model.bin (sharded or not), or a Hub model name when the machine is online.
  """
  for name, value in (("dtype", dtype), ("param_dtype", param_dtype)):
    if value not in DTYPES:
      raise ValueError(f"load_hf_t5 {name}={value!r} is not supported; allowed: {', '.join(DTYPES)}")
  directory = resolve_checkpoint_dir(path)
  config = hf_t5_config(directory).replace(dtype=dtype, param_dtype=param_dtype)
  params = params_from_hf_tensors(config, read_hf_tensors(directory))
  return config, params


def hf_t5_config(path: str) -> T5Config:
  """The T5Config of a checkpoint's config.json alone (its weights are not read): what a
  run's checks compare the vocabulary and exit settings with before anything loads."""
  directory = resolve_checkpoint_dir(path)
  hf = _read_hf_config(directory)
  try:
    return config_from_hf(hf)
  except (TypeError, ValueError, IndexError) as error:
    raise CheckpointError(f"{os.path.join(directory, 'config.json')}: {error}") from error
