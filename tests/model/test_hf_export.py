"""Export to a Hugging Face T5 directory: transformers loads it with our logits (T5 v1.0 and
v1.1, tied and untied heads), hf_import reads it back unchanged, tokenizer files travel,
and a bad export leaves nothing behind."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

import calm_jax
from calm_jax.model.config import T5Config
from calm_jax.model.hf_export import export_hf_t5, hf_tensors
from calm_jax.model.hf_import import load_hf_t5
from calm_jax.model.t5 import init_params

TOL = 1e-4
SHAPES = dict(vocab_size=53, d_model=16, d_kv=6, d_ff=24, num_layers=2, num_decoder_layers=3,
              num_heads=3, relative_attention_num_buckets=8, relative_attention_max_distance=20,
              dropout_rate=0.0)
# (feed-forward, tied head, scaled head input): v1.0, v1.0 untied, v1.1 untied, and the
# tied v1.1 transformers 5 writes.
VARIANTS = {
    "v1.0": ("relu", True, True),
    "v1.0-untied": ("relu", False, True),
    "v1.1": ("gated-gelu", False, False),
    "v1.1-tied": ("gated-gelu", True, False),
}


def model_of(variant: str, seed: int = 0):
  feed_forward, tied, scaled = VARIANTS[variant]
  config = T5Config(feed_forward_proj=feed_forward, tie_word_embeddings=tied,
                    scale_decoder_outputs=scaled, **SHAPES)
  return config, init_params(config, jax.random.PRNGKey(seed))


def inputs(vocab: int):
  rng = np.random.default_rng(0)
  ids = rng.integers(2, vocab, size=(2, 7)).astype(np.int32)
  mask = np.ones_like(ids)
  mask[1, 5:] = 0
  decoder_ids = rng.integers(2, vocab, size=(2, 5)).astype(np.int32)
  decoder_ids[:, 0] = 0
  return ids, mask, decoder_ids


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_transformers_loads_the_export_with_our_logits(tmp_path, variant):
  config, params = model_of(variant)
  directory = export_hf_t5(str(tmp_path / "hf"), config, params)
  assert sorted(os.listdir(directory)) == ["config.json", "model.safetensors"]
  model = transformers.T5ForConditionalGeneration.from_pretrained(directory).eval()
  tied = model.lm_head.weight.data_ptr() == model.shared.weight.data_ptr()
  assert tied == config.tie_word_embeddings
  assert model.config.scale_decoder_outputs == config.scale_decoder_outputs
  ids, mask, decoder_ids = inputs(config.vocab_size)
  ours = calm_jax.forward(config, params, ids, decoder_ids, mask).logits
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(ids, dtype=torch.long),
                   attention_mask=torch.tensor(mask, dtype=torch.long),
                   decoder_input_ids=torch.tensor(decoder_ids, dtype=torch.long)).logits
  np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=TOL, rtol=0)
  # hf_import reads the export back to the same configuration and parameters.
  config_back, params_back = load_hf_t5(directory)
  assert config_back == config
  assert jax.tree.structure(params_back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(params_back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, np.asarray(b))


def test_bfloat16_parameters_stay_bfloat16(tmp_path):
  config, params = model_of("v1.1")
  config = config.replace(param_dtype="bfloat16")
  params = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), params)
  directory = export_hf_t5(str(tmp_path / "hf"), config, params)
  with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
    assert json.load(f)["dtype"] == "bfloat16"
  _, params_back = load_hf_t5(directory, param_dtype="bfloat16")
  for a, b in zip(jax.tree.leaves(params_back), jax.tree.leaves(params)):
    assert a.dtype == b.dtype == jax.numpy.bfloat16
    np.testing.assert_array_equal(a, np.asarray(b))


def test_tokenizer_files_are_copied_and_nothing_else(tmp_path):
  tokenizer = tmp_path / "tok"
  tokenizer.mkdir()
  (tokenizer / "tokenizer.json").write_text('{"version": "1.0"}')
  (tokenizer / "spiece.model").write_bytes(b"\x00\x01model")
  (tokenizer / "notes.txt").write_text("not a tokenizer file")
  config, params = model_of("v1.0")
  directory = export_hf_t5(str(tmp_path / "hf"), config, params, tokenizer_dir=str(tokenizer))
  assert sorted(os.listdir(directory)) == ["config.json", "model.safetensors", "spiece.model",
                                           "tokenizer.json"]
  assert (tmp_path / "hf" / "spiece.model").read_bytes() == b"\x00\x01model"


def test_bad_exports_fail_clearly_and_leave_the_old_export(tmp_path):
  config, params = model_of("v1.1")
  target = tmp_path / "hf"
  export_hf_t5(str(target), config, params)
  before = (target / "model.safetensors").read_bytes()
  tied = config.replace(tie_word_embeddings=True)
  with pytest.raises(ValueError, match="tie_word_embeddings is True, but the parameters have "
                     "an lm_head"):
    export_hf_t5(str(target), tied, params)
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="holds none of the tokenizer files"):
    export_hf_t5(str(target), config, params, tokenizer_dir=str(empty))
  with pytest.raises(ValueError, match="tokenizer directory '/no/such' does not exist"):
    export_hf_t5(str(target), config, params, tokenizer_dir="/no/such")
  wider = config.replace(d_ff=25)
  with pytest.raises(ValueError, match=r"parameter encoder/layers/ffn/wi_0/kernel of layer 0 "
                     r"gives encoder.block.0.layer.1.DenseReluDense.wi_0.weight the shape "
                     r"\(24, 16\), but the config expects \(25, 16\)"):
    hf_tensors(wider, params)
  assert sorted(os.listdir(tmp_path)) == ["empty", "hf"]
  assert (target / "model.safetensors").read_bytes() == before
