"""LongT5 encoders (model/longt5.py) against transformers' LongT5ForConditionalGeneration on
the same random weights: every decoder layer's logits, greedy early-exit decoding, batch
invariance of mixed exits; the checkpoint import, its errors, the config fields and the
params export."""

import json
import os
import re
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.model import longt5
from calm_jax.model.config import T5Config, config_from_hf
from calm_jax.model.hf_export import export_hf_t5
from calm_jax.model.hf_import import CheckpointError, load_hf_t5
from calm_jax.model.t5 import exit_logits, forward, init_params
from calm_jax.modes.memory import decoding_estimate
from calm_jax.training.checkpoints import export_params, load_exported
from calm_jax.training.objectives import AnytimeObjective, Batch, anytime_loss
from calm_jax.training.sharding import logical_axes

# A tiny LongT5 v1.1: blocks of 4 tokens (radius 3), a global token per 2 tokens,
# num_heads * d_kv != d_model, the decoder deeper than the encoder.
LONG_T5 = dict(vocab_size=61, d_model=16, d_kv=6, d_ff=40, num_layers=2, num_decoder_layers=3,
               num_heads=3, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
               relative_attention_num_buckets=8, relative_attention_max_distance=20,
               local_radius=3, global_block_size=2)
GLOBAL_NORM = "encoder.block.1.layer.0.TransientGlobalSelfAttention.global_input_layer_norm.weight"
GLOBAL_BIAS = ("encoder.block.0.layer.0.TransientGlobalSelfAttention."
               "global_relative_attention_bias.weight")


def saved_long_t5(directory, random_hf_t5, attention: str):
  """A random transformers LongT5 (weights x1.5; the embedding, which transformers ties to
  the head, x0.25 so that greedy outputs and confidences vary), saved to `directory` and
  imported: (transformers model, T5Config, params, directory)."""
  model = random_hf_t5(5, 1.5, encoder_attention_type=attention, **LONG_T5)
  with torch.no_grad():
    model.shared.weight.mul_(0.25)
  model.save_pretrained(str(directory))
  config, params = load_hf_t5(str(directory))
  return model, config, params, str(directory)


@pytest.fixture(scope="module")
def local(tmp_path_factory, random_hf_t5):
  return saved_long_t5(tmp_path_factory.mktemp("local"), random_hf_t5, "local")


@pytest.fixture(scope="module")
def tglobal(tmp_path_factory, random_hf_t5):
  return saved_long_t5(tmp_path_factory.mktemp("tglobal"), random_hf_t5, "transient-global")


@pytest.fixture(scope="module", params=["local", "tglobal"])
def imported(request):
  """Each attention type's model, in turn."""
  return request.getfixturevalue(request.param)


def padded_batch(length: int, vocab: int, seed: int = 0):
  """3 rows of `length` random ids: whole, padded after length // 2 + 1, padded after
  length - 1."""
  rng = np.random.RandomState(seed)
  ids = rng.randint(2, vocab, (3, length))
  mask = np.ones_like(ids)
  for row, kept in ((1, length // 2 + 1), (2, length - 1)):
    ids[row, kept:], mask[row, kept:] = 0, 0
  return ids, mask


def transformers_layer_logits(model, ids, mask, decoder_ids) -> np.ndarray:
  """Every decoder layer's state through transformers' own head: [L, B, T, V]."""
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                decoder_input_ids=torch.tensor(decoder_ids), output_hidden_states=True)
    head_input = lambda h: (model.decoder.final_layer_norm(h)
                            * (model.model_dim ** -0.5 if model.config.scale_decoder_outputs else 1.0))
    # decoder_hidden_states: embeddings, layers 1..L-1, then layer L after the final norm.
    layers = [model.lm_head(head_input(h)) for h in out.decoder_hidden_states[1:-1]]
    return np.stack([t.numpy() for t in layers] + [out.logits.numpy()])


def our_layer_logits(config, params, ids, mask, decoder_ids) -> np.ndarray:
  states = forward(config, params, ids, decoder_ids, mask).hidden_states  # [L, B, T, d]
  return np.asarray(exit_logits(config, params, states))


# ----------------------------------------------------------------------------- equivalence

@pytest.mark.parametrize("length", [3, 4, 13], ids=["under_one_block", "one_block",
                                                     "ragged_blocks"])
def test_every_decoder_layer_equals_transformers(imported, length):
  model, config, params, _ = imported
  ids, mask = padded_batch(length, config.vocab_size, seed=length)
  decoder_ids = np.random.RandomState(1).randint(2, config.vocab_size, (3, 5))
  theirs = transformers_layer_logits(model, ids, mask, decoder_ids)
  ours = our_layer_logits(config, params, ids, mask, decoder_ids)
  assert ours.shape == theirs.shape == (3, 3, 5, config.vocab_size)
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=1e-5)


def test_the_comparison_sees_the_attention_pattern(imported):
  """Controls for the test above: the next simpler attention (full for local, local for
  transient-global) gives other logits on inputs of several blocks."""
  model, config, params, _ = imported
  simpler = {"local": "full", "transient-global": "local"}[config.encoder_attention_type]
  ids, mask = padded_batch(13, config.vocab_size, seed=13)
  decoder_ids = np.random.RandomState(1).randint(2, config.vocab_size, (3, 5))
  theirs = transformers_layer_logits(model, ids, mask, decoder_ids)
  ours = our_layer_logits(config.replace(encoder_attention_type=simpler), params, ids, mask,
                          decoder_ids)
  assert np.abs(ours - theirs).max() > 1e-2


def test_never_exiting_decoder_equals_transformers_greedy_generate(imported, padded_inputs):
  model, config, params, _ = imported
  ids, mask = padded_inputs(config.vocab_size, seed=2)  # 4 rows of 13, row 2 padded after 7
  ours = np.asarray(generate(config, params, ids, mask, exit=ExitConfig(threshold=1.0),
                             max_decode_len=10).tokens)
  with torch.no_grad():
    # use_cache=False: transformers 5.23's cache breaks when the decoder is the deeper stack.
    theirs = model.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                            max_new_tokens=10, do_sample=False, num_beams=1,
                            use_cache=False).numpy()[:, 1:]  # drop the start token
  assert len(set(ours.ravel().tolist())) >= 4, "degenerate test model: outputs do not vary"
  np.testing.assert_array_equal(ours[:, :theirs.shape[1]], theirs)


def test_batch_with_mixed_exits_equals_each_example_alone(tglobal, eos_batch,
                                                          assert_mixed_batch_equals_each_alone):
  _, config, params, _ = tglobal
  model = eos_batch(config, params, decode_len=8, batch=4, eos_position=5)
  full = generate(model[0], params, model[2], model[3], exit=ExitConfig(threshold=1.0),
                  max_decode_len=8, return_trace=True)
  generated = np.asarray(full.exit_layers) > 0
  lam = float(np.median(np.asarray(full.trace)[generated][:, :-1]))  # exits vary around it
  assert_mixed_batch_equals_each_alone(model, ExitConfig(threshold=lam), lam, 8)


def test_training_reaches_the_global_parameters_through_dropout(tglobal):
  """The anytime loss with dropout (attention weights included) has finite gradients that
  reach the transient-global parts: the global bias table and every layer's global norm."""
  _, config, params, _ = tglobal
  ids, _ = padded_batch(13, config.vocab_size, seed=3)
  targets = np.random.RandomState(4).randint(2, config.vocab_size, (3, 5))
  batch = Batch(inputs=ids.astype(np.int32), targets=targets.astype(np.int32))
  loss = lambda p: anytime_loss(config.replace(dropout_rate=0.1), AnytimeObjective(), p, batch,
                                rng=jax.random.PRNGKey(0))[0]
  value, grads = jax.jit(jax.value_and_grad(loss))(params)
  assert np.isfinite(value)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert np.abs(grads["encoder"]["global_relative_bias"]).max() > 0
  assert (np.abs(grads["encoder"]["layers"]["global_norm"]["scale"]).max(-1) > 0).all()


def test_global_parameters_have_logical_axis_names(tglobal):
  axes = logical_axes(tglobal[2])["encoder"]
  assert axes["global_relative_bias"] == axes["relative_bias"] == ("relpos_buckets", "heads")
  assert axes["layers"]["global_norm"]["scale"] == ("layers", "embed")


# ----------------------------------------------------------------------------- blocks

def test_global_blocks_join_orphans_to_the_last_complete_block_and_skip_padding():
  valid = np.zeros((3, 9), bool)
  valid[0, :] = True  # 9 real tokens, blocks of 2: four complete blocks, token 8 joins block 3
  valid[1, :6] = True  # 6 real tokens: three blocks; globals 3 (all padding) is unused
  valid[2, :1] = True  # 1 real token: no complete block, so no global token at all
  block, used = longt5.global_blocks(jax.numpy.asarray(valid), 2)
  np.testing.assert_array_equal(block, [[0, 0, 1, 1, 2, 2, 3, 3, 3],
                                        [0, 0, 1, 1, 2, 2, -1, -1, -1],
                                        [-1] * 9])
  np.testing.assert_array_equal(used, [[True] * 4, [True] * 3 + [False], [False] * 4])


def test_padded_length_rounds_up_to_whole_blocks():
  config = T5Config(encoder_attention_type="local", local_radius=3)
  assert [longt5.padded_length(config, n) for n in (1, 4, 5, 13)] == [4, 4, 8, 16]


def test_scores_per_query_and_the_memory_estimate_follow_the_attention():
  full = T5Config(d_model=768, num_heads=12, d_ff=2048)  # local_radius 127, global blocks 16
  local, tglobal = (full.replace(encoder_attention_type=kind)
                    for kind in ("local", "transient-global"))
  assert [longt5.keys_per_query(c, 16384) for c in (full, local, tglobal)] == [
      16384, 384, 384 + 1024]
  encoder = lambda config: decoding_estimate(config, 1, 16384, 8, "decode").batch["encoder"]
  d_model_part = 4 * 16384 * 768 * 4  # the encoder states beside the scores
  assert encoder(full) == 2 * 12 * 16384 * 16384 * 4 + d_model_part
  assert encoder(tglobal) == 2 * 12 * 16384 * (384 + 1024) * 4 + d_model_part


# ----------------------------------------------------------------------------- config

def test_config_fields_from_a_longt5_config_json(imported):
  _, config, _, directory = imported
  hf = json.load(open(os.path.join(directory, "config.json"), encoding="utf-8"))
  assert hf["model_type"] == "longt5"
  assert (config.local_radius, config.global_block_size) == (3, 2)
  assert config.encoder_attention_type == hf["encoder_attention_type"]
  assert config.is_long and config.has_global_tokens == (hf["encoder_attention_type"]
                                                         == "transient-global")
  # transformers' defaults where the file is silent; a T5 config.json is full attention.
  bare = config_from_hf({"model_type": "longt5"})
  assert (bare.encoder_attention_type, bare.local_radius, bare.global_block_size) == (
      "local", 127, 16)
  assert config_from_hf({"model_type": "t5"}).encoder_attention_type == "full"


@pytest.mark.parametrize("fields, message", [
    (dict(encoder_attention_type="sparse"),
     "T5Config.encoder_attention_type='sparse' is not supported; allowed: full, local, "
     "transient-global"),
    (dict(local_radius=0), "T5Config.local_radius must be a positive integer, got 0"),
    (dict(global_block_size=2.0), "T5Config.global_block_size must be a positive integer, got 2.0"),
])
def test_config_refuses_bad_long_fields(fields, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    T5Config(**fields)


def test_config_json_with_an_unknown_attention_type(tmp_path, local):
  directory = local[3]
  hf = json.load(open(os.path.join(directory, "config.json"), encoding="utf-8"))
  (tmp_path / "config.json").write_text(json.dumps(dict(hf, encoder_attention_type="full")))
  with pytest.raises(CheckpointError, match=re.escape(
      f"{tmp_path / 'config.json'}: field encoder_attention_type='full' is not supported; "
      "allowed: local, transient-global")):
    load_hf_t5(str(tmp_path))


def test_params_export_round_trips_config_and_params(tmp_path, imported):
  _, config, params, _ = imported
  loaded_config, loaded = load_exported(export_params(str(tmp_path / "model"), config, params))
  assert loaded_config == config
  assert jax.tree.structure(loaded) == jax.tree.structure(params)
  for ours, theirs in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(ours), theirs)


def test_hugging_face_export_round_trips_and_loads_in_transformers(tmp_path, imported):
  model, config, params, _ = imported
  directory = export_hf_t5(str(tmp_path / "hf"), config, params)
  loaded_config, loaded = load_hf_t5(directory)
  assert loaded_config == config
  for ours, theirs in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
    np.testing.assert_array_equal(ours, theirs)
  exported = transformers.AutoModelForSeq2SeqLM.from_pretrained(directory).eval()
  assert type(exported) is type(model)
  ids, mask = padded_batch(13, config.vocab_size, seed=13)
  decoder_ids = np.random.RandomState(1).randint(2, config.vocab_size, (3, 5))
  np.testing.assert_allclose(transformers_layer_logits(exported, ids, mask, decoder_ids),
                             transformers_layer_logits(model, ids, mask, decoder_ids),
                             atol=1e-5)


def test_fresh_parameters_have_the_imported_tree(imported):
  _, config, params, _ = imported
  fresh = jax.eval_shape(lambda key: init_params(config, key), jax.random.PRNGKey(0))
  shapes = lambda tree: jax.tree.map(np.shape, tree)
  assert shapes(fresh) == shapes(params)
  assert ("global_relative_bias" in fresh["encoder"]) == config.has_global_tokens
  assert ("global_norm" in fresh["encoder"]["layers"]) == config.has_global_tokens


# ----------------------------------------------------------------------------- import

def test_sharded_bfloat16_safetensors_and_bin_import_alike(tmp_path, random_hf_t5):
  model = random_hf_t5(3, encoder_attention_type="transient-global",
                       **LONG_T5).to(torch.bfloat16)
  model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
  assert "model.safetensors.index.json" in os.listdir(tmp_path / "sharded")
  os.makedirs(tmp_path / "bin")
  shutil.copy(tmp_path / "sharded" / "config.json", tmp_path / "bin" / "config.json")
  torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  _, sharded = load_hf_t5(str(tmp_path / "sharded"), param_dtype="bfloat16")
  _, pickled = load_hf_t5(str(tmp_path / "bin"), param_dtype="bfloat16")
  assert all(leaf.dtype == ml_dtypes.bfloat16 for leaf in jax.tree.leaves(sharded))
  for ours, theirs in zip(jax.tree.leaves(sharded), jax.tree.leaves(pickled)):
    np.testing.assert_array_equal(ours, theirs)
  state = model.state_dict()
  np.testing.assert_array_equal(sharded["encoder"]["layers"]["global_norm"]["scale"][1],
                                state[GLOBAL_NORM].float().numpy().astype(ml_dtypes.bfloat16))
  np.testing.assert_array_equal(sharded["encoder"]["global_relative_bias"],
                                state[GLOBAL_BIAS].float().numpy().astype(ml_dtypes.bfloat16))


def _resaved(source: str, target, drop=None, narrow=None, add=None, **fields) -> str:
  """The checkpoint in `source` written to `target` without tensor `drop`, with tensor
  `narrow` cut to 2 columns, with the tensors of `add`, and config.json `fields` replaced."""
  tensors = load_file(os.path.join(source, "model.safetensors"))
  if drop:
    del tensors[drop]
  if narrow:
    tensors[narrow] = tensors[narrow][:, :2]
  tensors.update(add or {})
  config = json.load(open(os.path.join(source, "config.json"), encoding="utf-8"))
  os.makedirs(target, exist_ok=True)
  (target / "config.json").write_text(json.dumps(dict(config, **fields)))
  save_file({name: t.contiguous() for name, t in tensors.items()},
            str(target / "model.safetensors"))
  return str(target)


@pytest.mark.parametrize("change, message", [
    (dict(drop=GLOBAL_NORM), f"missing tensor {GLOBAL_NORM} (expected shape (16,))"),
    (dict(narrow=GLOBAL_BIAS),
     f"tensor {GLOBAL_BIAS} has shape (8, 2) but the config expects (8, 3)"),
    # A transient-global checkpoint under a local config.json.
    (dict(encoder_attention_type="local"),
     "missing tensor encoder.block.0.layer.0.LocalSelfAttention.relative_attention_bias.weight "
     "(expected shape (8, 3))"),
], ids=["missing", "shape", "local_config"])
def test_tensor_errors_name_the_tensor(tmp_path, tglobal, change, message):
  directory = tglobal[3]
  with pytest.raises(CheckpointError, match=re.escape(message)):
    load_hf_t5(_resaved(directory, tmp_path / "changed", **change))


def test_a_local_checkpoint_with_global_tensors_is_refused(tmp_path, local):
  directory = local[3]
  extra = "encoder.block.0.layer.0.LocalSelfAttention.global_input_layer_norm.weight"
  with pytest.raises(CheckpointError, match=re.escape(
      f"1 tensor(s) in the checkpoint that a T5 with this config does not have: {extra}")):
    load_hf_t5(_resaved(directory, tmp_path / "changed", add={extra: torch.ones(16)}))

