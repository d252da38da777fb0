"""The memory estimate (calm_jax.modes.memory): the parameter count of a T5 shape, what
training and decoding add, how the parts spread over devices, and the refusal naming the
numbers and the config keys to lower."""

import jax
import ml_collections
import numpy as np
import pytest

from calm_jax.model.config import T5Config
from calm_jax.model.t5 import init_params
from calm_jax.modes import memory

SHAPES = [
    T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=24, num_layers=2, num_decoder_layers=3,
             num_heads=2, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    T5Config(vocab_size=70, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=2,
             num_heads=3, feed_forward_proj="relu", tie_word_embeddings=True),
]


@pytest.mark.parametrize("config", SHAPES, ids=["v1.1 untied", "v1.0 tied"])
def test_the_parameter_count_is_the_initialised_models(config):
  shapes = jax.eval_shape(lambda key: init_params(config, key), jax.random.PRNGKey(0))
  assert memory.parameter_count(config) == sum(int(np.prod(leaf.shape))
                                                for leaf in jax.tree.leaves(shapes))


def test_training_and_decoding_parts():
  config = SHAPES[0]
  count = memory.parameter_count(config)
  adam = memory.training_estimate(config, batch_size=2, input_len=10, target_len=6,
                                  optimizer="adamw")
  assert adam.shared == {"parameters": 4 * count, "gradients": 4 * count,
                         "optimizer state": 8 * count}
  assert memory.training_estimate(config, 2, 10, 6, "adafactor").shared["optimizer state"] == 0
  frozen = memory.training_estimate(config, 2, 10, 6, "adamw", trains_model=False)
  assert frozen.shared == {"parameters": 4 * count}
  double = memory.training_estimate(config, 4, 10, 6, "adamw")
  assert double.batch["activations"] == 2 * adam.batch["activations"]
  # every decoder layer's logits and their softmax, float32, per example
  assert adam.batch["activations"] > 2 * 2 * 3 * 6 * 64 * 4
  decode = memory.decoding_estimate(config, batch_size=5, input_len=10, decode_len=6,
                                    what="decode")
  assert decode.batch["K/V caches"] == 2 * 3 * 5 * (6 + 10) * config.inner_dim * 4
  assert decode.batch["logits"] == 4 * 5 * 64 * 4


def test_parts_spread_over_devices():
  estimate = memory.Estimate("x", {"parameters": 100}, {"activations": 1000}, "")
  assert estimate.on_devices(4, shares_host=False) == 100 + 250  # per accelerator
  assert estimate.on_devices(4, shares_host=True) == 4 * 100 + 1000  # CPU devices share RAM


def test_a_run_beyond_the_devices_memory_is_refused_with_the_numbers(monkeypatch):
  config = ml_collections.ConfigDict({
      "mode": "train", "memory_check": True, "data": {"max_input_len": 10},
      "decode": {"max_decode_len": 6}, "train": {"batch_size": 2, "optimizer": "adamw"}})
  need = memory.training_estimate(SHAPES[0], 2, 10, 6, "adamw").on_devices(1, True)
  monkeypatch.setattr(memory, "device_memory", lambda: (need, 1, True, "host RAM"))
  memory.check_training(config, SHAPES[0], "train")  # exactly enough
  monkeypatch.setattr(memory, "device_memory", lambda: (need - 1, 1, True, "host RAM"))
  with pytest.raises(ValueError, match=r"^train needs about 0.0 GiB on all devices together "
                     r"\(parameters 0.0 GiB, gradients 0.0 GiB, optimizer state 0.0 GiB, "
                     r"activations 0.0 GiB; batch 2, input length 10, target length 6\) but "
                     r"there is 0.0 GiB \(host RAM, 1 device\(s\)\); lower train.batch_size, "
                     r"data.max_input_len or decode.max_decode_len, or set "
                     r"--config.memory_check=False to run anyway$"):
    memory.check_training(config, SHAPES[0], "train")
  with pytest.raises(ValueError, match=r"^decode needs .* per device .*; lower "
                     r"data.num_examples, data.max_input_len or decode.max_decode_len"):
    monkeypatch.setattr(memory, "device_memory", lambda: (1, 1, False, "H100 memory"))
    config.mode = "decode"
    memory.check_decoding(config, SHAPES[0], 3, "data.num_examples")
  config.memory_check = False
  memory.check_training(config, SHAPES[0], "train")
  memory.check_decoding(config, SHAPES[0], 3, "data.num_examples")
