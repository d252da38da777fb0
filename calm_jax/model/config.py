"""T5 hyperparameters as a frozen, validated dataclass.

One `T5Config` describes every checkpoint family calm_jax supports:

- T5 v1.0: ReLU feed-forward, LM head tied to the shared embedding, decoder output
  scaled by d_model**-0.5 before the head.
- T5 v1.1 / Flan-T5 / the CALM paper's model: gated-GELU feed-forward, untied LM head,
  no output scaling.
- LongT5: a T5 v1.1 whose encoder attends locally ('local': within `local_radius` tokens
  on each side) or locally plus to one global token per `global_block_size` inputs
  ('transient-global'); the decoder is T5's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax.numpy as jnp

FEED_FORWARD_KINDS = ("relu", "gated-gelu", "gelu", "gated-relu", "gated-silu", "silu")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Encoder self-attention: T5's full attention, or LongT5's two kinds (calm_jax/model/longt5.py).
ENCODER_ATTENTION_TYPES = ("full", "local", "transient-global")


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Shape and numerics of a T5 encoder-decoder."""

  vocab_size: int = 32128  # rows of the shared embedding (and the LM head)
  d_model: int = 512  # width of the residual stream
  d_kv: int = 64  # width of one attention head; num_heads * d_kv may differ from d_model
  d_ff: int = 2048  # hidden width of the feed-forward block
  num_layers: int = 6  # encoder layers
  num_decoder_layers: int = 6  # decoder layers (L in the CALM papers)
  num_heads: int = 8  # attention heads
  relative_attention_num_buckets: int = 32  # relative position buckets
  relative_attention_max_distance: int = 128  # distance beyond which buckets saturate
  dropout_rate: float = 0.1  # dropout used only when deterministic=False
  layer_norm_epsilon: float = 1e-6  # RMSNorm epsilon
  feed_forward_proj: str = "relu"  # 'relu' (v1.0) or 'gated-gelu' (v1.1, Flan-T5)
  tie_word_embeddings: bool = True  # LM head is the transposed shared embedding
  scale_decoder_outputs: bool = True  # multiply the head's input by d_model**-0.5 (v1.0)
  pad_token_id: int = 0  # padding id, also T5's decoder start id
  eos_token_id: int = 1  # end-of-sequence id
  decoder_start_token_id: int = 0  # first decoder input id
  dtype: str = "float32"  # activation dtype: 'float32' or 'bfloat16'
  param_dtype: str = "float32"  # parameter dtype: 'float32' or 'bfloat16'
  encoder_attention_type: str = "full"  # 'full' (T5), 'local' or 'transient-global' (LongT5)
  local_radius: int = 127  # LongT5: tokens attended on each side (blocks of radius + 1)
  global_block_size: int = 16  # LongT5 transient-global: input tokens per global token

  def __post_init__(self):
    positive = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers",
                "num_decoder_layers", "num_heads", "relative_attention_num_buckets",
                "relative_attention_max_distance", "local_radius", "global_block_size")
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"T5Config.{name} must be a positive integer, got {value!r}")
    if self.relative_attention_num_buckets < 4:
      raise ValueError("T5Config.relative_attention_num_buckets must be at least 4, got "
                       f"{self.relative_attention_num_buckets}")
    for name in ("dropout_rate", "layer_norm_epsilon"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"T5Config.{name} must be a number, got {value!r}")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"T5Config.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")
    if self.layer_norm_epsilon <= 0:
      raise ValueError(f"T5Config.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}")
    if self.feed_forward_proj not in FEED_FORWARD_KINDS:
      raise ValueError(f"T5Config.feed_forward_proj={self.feed_forward_proj!r} is not supported; "
                       f"allowed: {', '.join(FEED_FORWARD_KINDS)}")
    if self.encoder_attention_type not in ENCODER_ATTENTION_TYPES:
      raise ValueError(f"T5Config.encoder_attention_type={self.encoder_attention_type!r} is not "
                       f"supported; allowed: {', '.join(ENCODER_ATTENTION_TYPES)}")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"T5Config.{name}={getattr(self, name)!r} is not supported; "
                         f"allowed: {', '.join(DTYPES)}")
    for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < self.vocab_size:
        raise ValueError(f"T5Config.{name}={value!r} must be an integer id in the vocabulary "
                         f"[0, {self.vocab_size})")

  @property
  def is_gated(self) -> bool:
    return self.feed_forward_proj.startswith("gated-")

  @property
  def activation(self) -> str:
    return self.feed_forward_proj.split("-")[-1]

  @property
  def is_long(self) -> bool:
    """True for a LongT5 encoder (local or transient-global attention)."""
    return self.encoder_attention_type != "full"

  @property
  def has_global_tokens(self) -> bool:
    return self.encoder_attention_type == "transient-global"

  @property
  def inner_dim(self) -> int:
    """Width of the concatenated attention heads."""
    return self.num_heads * self.d_kv

  @property
  def jnp_dtype(self):
    return DTYPES[self.dtype]

  @property
  def jnp_param_dtype(self):
    return DTYPES[self.param_dtype]

  def replace(self, **changes) -> "T5Config":
    return dataclasses.replace(self, **changes)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "T5Config":
    """Builds a config from a mapping, refusing keys this dataclass does not have."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown T5Config fields {unknown}; allowed: {sorted(known)}")
    return cls(**dict(values))


def _hf_int(hf: Mapping[str, Any], name: str, default: Optional[int]) -> Optional[int]:
  """An integer field of config.json; null means the default; a list means its first item."""
  value = hf.get(name)
  if isinstance(value, list) and name == "eos_token_id":
    if not value:
      raise ValueError("field eos_token_id must be an integer or a non-empty list, got []")
    value = value[0]
  if value is None:
    return default
  if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
    raise ValueError(f"field {name} must be an integer, got {value!r}")
  return int(value)


def _hf_bool(hf: Mapping[str, Any], name: str, default: bool) -> bool:
  value = hf.get(name)
  if value is None:
    return default
  if not isinstance(value, bool):
    raise ValueError(f"field {name} must be true or false, got {value!r}")
  return value


def _hf_float(hf: Mapping[str, Any], name: str, default: float) -> float:
  value = hf.get(name, default)
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"field {name} must be a number, got {value!r}")
  return float(value)


def _hf_long_fields(hf: Mapping[str, Any]) -> dict:
  """LongT5's encoder fields of a `model_type: longt5` config.json (transformers' defaults
  where absent); none for a T5."""
  if hf.get("model_type") != "longt5":
    return {}
  attention = hf.get("encoder_attention_type", "local")
  if attention not in ENCODER_ATTENTION_TYPES[1:]:
    raise ValueError(f"field encoder_attention_type={attention!r} is not supported; allowed: "
                     f"{', '.join(ENCODER_ATTENTION_TYPES[1:])}")
  return dict(encoder_attention_type=attention,
              local_radius=_hf_int(hf, "local_radius", 127),
              global_block_size=_hf_int(hf, "global_block_size", 16))


def config_from_hf(hf: Mapping[str, Any]) -> T5Config:
  """Translates a Hugging Face `config.json` dictionary of a T5 or LongT5 model.

  Older configs mark v1.1 models with `tie_word_embeddings: false`; transformers 5 writes
  `tie_word_embeddings: true` with `scale_decoder_outputs: false` instead. Both are read.
  Fields of the wrong type are errors that name the field.
  """
  num_layers = _hf_int(hf, "num_layers", 6)
  tie = _hf_bool(hf, "tie_word_embeddings", True)
  pad = _hf_int(hf, "pad_token_id", 0)
  feed_forward = hf.get("feed_forward_proj", "relu")
  if not isinstance(feed_forward, str):
    raise ValueError(f"field feed_forward_proj must be a string, got {feed_forward!r}")
  return T5Config(
      vocab_size=_hf_int(hf, "vocab_size", 32128),
      d_model=_hf_int(hf, "d_model", 512),
      d_kv=_hf_int(hf, "d_kv", 64),
      d_ff=_hf_int(hf, "d_ff", 2048),
      num_layers=num_layers,
      num_decoder_layers=_hf_int(hf, "num_decoder_layers", num_layers),
      num_heads=_hf_int(hf, "num_heads", 8),
      relative_attention_num_buckets=_hf_int(hf, "relative_attention_num_buckets", 32),
      relative_attention_max_distance=_hf_int(hf, "relative_attention_max_distance", 128),
      dropout_rate=_hf_float(hf, "dropout_rate", 0.1),
      layer_norm_epsilon=_hf_float(hf, "layer_norm_epsilon", 1e-6),
      feed_forward_proj=feed_forward,
      tie_word_embeddings=tie,
      scale_decoder_outputs=_hf_bool(hf, "scale_decoder_outputs", tie),
      pad_token_id=pad,
      eos_token_id=_hf_int(hf, "eos_token_id", 1),
      decoder_start_token_id=_hf_int(hf, "decoder_start_token_id", pad),
      **_hf_long_fields(hf),
  )
