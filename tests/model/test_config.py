"""T5Config validation, its derived properties, and the translation of HF config.json dicts."""

import dataclasses
import re

import pytest

from calm_jax.model.config import FEED_FORWARD_KINDS, T5Config, config_from_hf

SMALL = dict(vocab_size=100, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_decoder_layers=3,
             num_heads=4)


# ----------------------------------------------------------------------------- validation

@pytest.mark.parametrize("field,value,text", [
    ("d_model", 0, "T5Config.d_model must be a positive integer, got 0"),
    ("d_model", -16, "T5Config.d_model must be a positive integer, got -16"),
    ("num_heads", True, "T5Config.num_heads must be a positive integer, got True"),
    ("d_ff", 32.0, "T5Config.d_ff must be a positive integer, got 32.0"),
    ("dropout_rate", 1.0, "T5Config.dropout_rate must be in [0, 1), got 1.0"),
    ("dropout_rate", -0.1, "T5Config.dropout_rate must be in [0, 1), got -0.1"),
    ("layer_norm_epsilon", 0.0, "T5Config.layer_norm_epsilon must be > 0, got 0.0"),
    ("feed_forward_proj", "swish",
     "T5Config.feed_forward_proj='swish' is not supported; allowed: " + ", ".join(FEED_FORWARD_KINDS)),
    ("dtype", "float16", "T5Config.dtype='float16' is not supported; allowed: float32, bfloat16"),
    ("param_dtype", "float16",
     "T5Config.param_dtype='float16' is not supported; allowed: float32, bfloat16"),
    ("eos_token_id", 100, "T5Config.eos_token_id=100 must be an integer id in the vocabulary [0, 100)"),
    ("pad_token_id", -1, "T5Config.pad_token_id=-1 must be an integer id in the vocabulary [0, 100)"),
    ("decoder_start_token_id", 250,
     "T5Config.decoder_start_token_id=250 must be an integer id in the vocabulary [0, 100)"),
    ("relative_attention_num_buckets", 2,
     "T5Config.relative_attention_num_buckets must be at least 4, got 2"),
])
def test_invalid_field(field, value, text):
  with pytest.raises(ValueError, match=re.escape(text)):
    T5Config(**dict(SMALL, **{field: value}))


def test_valid_config_and_defaults():
  config = T5Config(**SMALL)
  assert config.num_decoder_layers == 3 and config.feed_forward_proj == "relu"
  assert T5Config() == T5Config.from_dict({})


def test_frozen_and_replace_validates():
  config = T5Config(**SMALL)
  with pytest.raises(dataclasses.FrozenInstanceError):
    config.d_model = 32  # type: ignore[misc]
  assert config.replace(dtype="bfloat16").dtype == "bfloat16"
  with pytest.raises(ValueError, match=re.escape("T5Config.eos_token_id=100 must be an integer id")):
    config.replace(eos_token_id=100)


def test_from_dict_round_trip():
  config = T5Config(**SMALL, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
  assert T5Config.from_dict(dataclasses.asdict(config)) == config


def test_from_dict_refuses_unknown_keys():
  with pytest.raises(ValueError, match=re.escape("unknown T5Config fields ['model_type', 'n_positions']; "
                                                 "allowed: [")) as caught:
    T5Config.from_dict(dict(SMALL, model_type="t5", n_positions=512))
  assert "'vocab_size'" in str(caught.value)


# ----------------------------------------------------------------------------- properties

@pytest.mark.parametrize("proj,gated,activation", [
    ("relu", False, "relu"), ("gelu", False, "gelu"), ("silu", False, "silu"),
    ("gated-gelu", True, "gelu"), ("gated-relu", True, "relu"), ("gated-silu", True, "silu"),
])
def test_feed_forward_properties(proj, gated, activation):
  config = T5Config(**SMALL, feed_forward_proj=proj)
  assert config.is_gated is gated
  assert config.activation == activation


def test_inner_dim_may_differ_from_d_model():
  config = T5Config(**dict(SMALL, num_heads=3, d_kv=6))
  assert config.inner_dim == 18 and config.d_model == 16


# ----------------------------------------------------------------------------- config_from_hf

V10_HF = {"model_type": "t5", "vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048,
          "num_layers": 6, "num_decoder_layers": 6, "num_heads": 8,
          "relative_attention_num_buckets": 32, "dropout_rate": 0.1,
          "layer_norm_epsilon": 1e-6, "feed_forward_proj": "relu", "pad_token_id": 0,
          "eos_token_id": 1, "decoder_start_token_id": 0}


def test_v10_dict_ties_and_scales():
  config = config_from_hf(V10_HF)
  assert config.tie_word_embeddings is True and config.scale_decoder_outputs is True
  assert config == T5Config(relative_attention_num_buckets=32, feed_forward_proj="relu")


def test_old_v11_dict_unties_and_does_not_scale():
  hf = dict(V10_HF, feed_forward_proj="gated-gelu", tie_word_embeddings=False, d_model=768,
            d_ff=2048, num_layers=12, num_decoder_layers=12, num_heads=12)
  config = config_from_hf(hf)
  assert config.tie_word_embeddings is False and config.scale_decoder_outputs is False
  assert config.is_gated and config.num_layers == 12 and config.d_model == 768


def test_transformers5_dict_ties_without_scaling():
  hf = dict(V10_HF, feed_forward_proj="gated-gelu", tie_word_embeddings=True,
            scale_decoder_outputs=False)
  config = config_from_hf(hf)
  assert config.tie_word_embeddings is True and config.scale_decoder_outputs is False


def test_missing_num_decoder_layers_equals_num_layers():
  hf = dict(V10_HF, num_layers=4)
  del hf["num_decoder_layers"]
  assert config_from_hf(hf).num_decoder_layers == 4


def test_eos_token_id_list_takes_first():
  assert config_from_hf(dict(V10_HF, eos_token_id=[5, 1])).eos_token_id == 5


def test_missing_decoder_start_is_pad():
  hf = dict(V10_HF, pad_token_id=3)
  del hf["decoder_start_token_id"]
  config = config_from_hf(hf)
  assert config.pad_token_id == 3 and config.decoder_start_token_id == 3


def test_null_token_ids_use_defaults():
  config = config_from_hf(dict(V10_HF, pad_token_id=None, eos_token_id=None,
                               decoder_start_token_id=None))
  assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (0, 1, 0)


def test_unknown_hf_keys_are_ignored():
  config = config_from_hf(dict(V10_HF, architectures=["T5ForConditionalGeneration"],
                               n_positions=512, use_cache=True))
  assert config == config_from_hf(V10_HF)


def test_hf_validation_errors_propagate():
  with pytest.raises(ValueError, match=re.escape("T5Config.feed_forward_proj='swish-glu'")):
    config_from_hf(dict(V10_HF, feed_forward_proj="swish-glu"))
  with pytest.raises(ValueError,
                     match=re.escape("T5Config.eos_token_id=32128 must be an integer id in the vocabulary")):
    config_from_hf(dict(V10_HF, eos_token_id=[32128]))
