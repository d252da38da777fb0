"""A memory estimate of a run, checked against the devices before any model work.

Estimates, not measurements: parameters and their gradients and optimizer state (training),
the activations a training step keeps for its backward pass (attention scores, layer
inputs, the anytime loss's logits of every decoder layer), and a decode's caches (self-
and cross-attention K/V, the encoder's attention scores, a few rows of logits). The
devices' memory is JAX's `memory_stats()['bytes_limit']` per accelerator, or the host's RAM
on CPU (where every device shares it). A run whose estimate exceeds what there is stops
with both numbers and the config keys that lower it; `memory_check=False` skips this.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Tuple

import jax
import ml_collections

from calm_jax.model.config import T5Config
from calm_jax.model.longt5 import keys_per_query

GIB = 1 << 30
FLOAT32 = 4
# Adam(W) keeps two float32 moments per parameter; Adafactor's factored second moment is
# a row and a column per matrix (counted as none here).
OPTIMIZER_STATE_PER_PARAMETER = {"adamw": 2 * FLOAT32, "adafactor": 0}
LOWER_TRAINING = "train.batch_size, data.max_input_len or decode.max_decode_len"
SKIP = "memory_check=False"


def _bytes(dtype: str) -> int:
  return 2 if dtype == "bfloat16" else 4


def parameter_count(config: T5Config) -> int:
  """Parameters of a T5 of this shape (embedding, layers, norms, position biases, head)."""
  d, inner, ff = config.d_model, config.inner_dim, config.d_ff
  attention = 4 * d * inner
  feed_forward = (3 if config.is_gated else 2) * d * ff
  encoder = config.num_layers * (attention + feed_forward + 2 * d)
  decoder = config.num_decoder_layers * (2 * attention + feed_forward + 3 * d)
  embeddings = config.vocab_size * d * (1 if config.tie_word_embeddings else 2)
  biases = 2 * config.relative_attention_num_buckets * config.num_heads
  return embeddings + encoder + decoder + biases + 2 * d


@dataclasses.dataclass(frozen=True)
class Estimate:
  """Bytes of one run's parts: `shared` exists once per device (parameters, optimizer
  state), `batch` is split over the devices (activations, caches)."""

  what: str  # e.g. "train", "calibrate"
  shared: Dict[str, int]  # part -> bytes on every device
  batch: Dict[str, int]  # part -> bytes of the whole batch
  settings: str  # the config values the batch parts grow with

  def on_devices(self, devices: int, shares_host: bool) -> int:
    """Bytes per device (accelerators), or of all devices together when they share the
    host's memory (CPU)."""
    shared, batch = sum(self.shared.values()), sum(self.batch.values())
    return shared * devices + batch if shares_host else shared + -(-batch // devices)


def _activation_bytes_per_example(config: T5Config, input_len: int, target_len: int) -> int:
  """What one example's forward pass keeps for the backward pass (every layer's inputs and
  intermediates, attention scores and probabilities, every decoder layer's logits and
  their softmax for the anytime loss)."""
  act, heads = _bytes(config.dtype), config.num_heads
  d, inner, ff = config.d_model, config.inner_dim, config.d_ff
  scores = input_len * keys_per_query(config, input_len)  # input_len ** 2 for full attention
  encoder = input_len * (6 * d + 4 * inner + 3 * ff) + 2 * heads * scores
  decoder = (target_len * (9 * d + 8 * inner + 3 * ff) + 2 * heads * target_len ** 2
             + 2 * heads * target_len * input_len)
  logits = 2 * config.num_decoder_layers * target_len * config.vocab_size * FLOAT32
  return act * (config.num_layers * encoder + config.num_decoder_layers * decoder) + logits


def training_estimate(config: T5Config, batch_size: int, input_len: int, target_len: int,
                      optimizer: str, what: str = "train", trains_model: bool = True) -> Estimate:
  """A training step's memory (`trains_model=False`: a frozen backbone, no gradients or
  optimizer state of its parameters)."""
  params = parameter_count(config)
  shared = {"parameters": params * _bytes(config.param_dtype)}
  if trains_model:
    shared["gradients"] = params * FLOAT32
    shared["optimizer state"] = params * OPTIMIZER_STATE_PER_PARAMETER.get(optimizer, 0)
  batch = {"activations": batch_size * _activation_bytes_per_example(config, input_len,
                                                                     target_len)}
  return Estimate(what, shared, batch, f"batch {batch_size}, input length {input_len}, "
                  f"target length {target_len}")


def decoding_estimate(config: T5Config, batch_size: int, input_len: int, decode_len: int,
                      what: str) -> Estimate:
  """A decode's memory: parameters, the K/V caches, the encoder's attention scores (one
  layer at a time) and a few rows of logits per example."""
  act, heads, inner = _bytes(config.dtype), config.num_heads, config.inner_dim
  layers = config.num_decoder_layers
  caches = 2 * layers * batch_size * (decode_len + input_len) * inner * act
  scores = input_len * keys_per_query(config, input_len)  # input_len ** 2 for full attention
  encoder = batch_size * (2 * heads * scores * FLOAT32 + 4 * input_len * config.d_model * act)
  logits = 4 * batch_size * config.vocab_size * FLOAT32
  return Estimate(what, {"parameters": parameter_count(config) * _bytes(config.param_dtype)},
                  {"K/V caches": caches, "encoder": encoder, "logits": logits},
                  f"batch {batch_size}, input length {input_len}, output length {decode_len}")


def device_memory() -> Tuple[int, int, bool, str]:
  """(bytes per device, local devices, whether they share the host's RAM, a description):
  the accelerator's bytes_limit, or the host's physical memory on CPU."""
  devices = jax.local_devices()
  stats = devices[0].memory_stats() if hasattr(devices[0], "memory_stats") else None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), len(devices), False, f"{devices[0].device_kind} memory"
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  return ram, len(devices), True, "host RAM"


def _gib(value: int) -> str:
  return f"{value / GIB:.1f} GiB"


def check_fits(estimate: Estimate, lower: str) -> None:
  """Refuses an estimate beyond the devices' memory, with the numbers and what to lower."""
  available, devices, shares_host, where = device_memory()
  need = estimate.on_devices(devices, shares_host)
  if need <= available:
    return
  parts = ", ".join(f"{name} {_gib(size)}" for name, size in
                    {**estimate.shared, **estimate.batch}.items())
  scope = "on all devices together" if shares_host else "per device"
  raise ValueError(f"{estimate.what} needs about {_gib(need)} {scope} ({parts}; "
                   f"{estimate.settings}) but there is {_gib(available)} ({where}, "
                   f"{devices} device(s)); lower {lower}, or set --config.{SKIP} to run "
                   "anyway")


def enabled(config: ml_collections.ConfigDict) -> bool:
  return bool(config.get("memory_check", True))


def check_training(config: ml_collections.ConfigDict, model: T5Config, section: str,
                   trains_model: bool = True) -> None:
  """The training step of `section` ('train' or 'train_exit') fits."""
  if not enabled(config):
    return
  fields = config[section]
  estimate = training_estimate(model, fields.batch_size, config.data.max_input_len,
                               config.decode.max_decode_len, fields.optimizer, section,
                               trains_model)
  check_fits(estimate, LOWER_TRAINING.replace("train.", f"{section}."))


def check_decoding(config: ml_collections.ConfigDict, model: T5Config, batch_size: int,
                   batch_key: str) -> None:
  """A decode of `batch_size` examples (set by config key `batch_key`) fits."""
  if not enabled(config) or batch_size < 1:
    return
  estimate = decoding_estimate(model, batch_size, config.data.max_input_len,
                               config.decode.max_decode_len, config.mode)
  check_fits(estimate, f"{batch_key}, data.max_input_len or decode.max_decode_len")
