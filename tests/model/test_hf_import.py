"""Import of Hugging Face T5 checkpoints: formats, the parameter tree, and every refusal."""

import json
import os
import re
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from calm_jax.model.hf_import import CheckpointError, load_hf_t5

UNUSED = "decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"


# ----------------------------------------------------------------------------- helpers

def hf_config(model) -> dict:
  return json.loads(model.config.to_json_string())


def state_dict(model) -> dict:
  return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def write_checkpoint(directory, config: dict, tensors: dict) -> str:
  """config.json plus model.safetensors; every tensor cloned (tied ones share memory)."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w", encoding="utf-8") as f:
    json.dump(config, f, indent=2)
  save_file({name: t.detach().clone().contiguous() for name, t in tensors.items()},
            os.path.join(directory, "model.safetensors"))
  return str(directory)


def assert_trees_identical(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def linear(model, name: str) -> np.ndarray:
  return model.state_dict()[name].detach().float().numpy().T


def message(*parts: str) -> str:
  return ".*".join(re.escape(p) for p in parts)


@pytest.fixture(scope="module")
def v10(tmp_path_factory, save_random_hf_t5, t5_v10):
  directory = tmp_path_factory.mktemp("v10")
  model = save_random_hf_t5(directory, seed=1, **t5_v10)
  return model, str(directory)


@pytest.fixture(scope="module")
def v11(tmp_path_factory, save_random_hf_t5, t5_v11):
  directory = tmp_path_factory.mktemp("v11")
  model = save_random_hf_t5(directory, seed=2, **t5_v11)
  return model, str(directory)


@pytest.fixture(scope="module")
def v11_params(v11):
  return load_hf_t5(v11[1])


# ----------------------------------------------------------------------------- formats

def test_single_safetensors_file(v10):
  model, directory = v10
  assert sorted(f for f in os.listdir(directory) if "safetensors" in f) == ["model.safetensors"]
  config, params = load_hf_t5(directory)
  assert (config.vocab_size, config.d_model, config.d_kv, config.d_ff) == (61, 16, 6, 40)
  assert (config.num_layers, config.num_decoder_layers, config.num_heads) == (2, 3, 3)
  assert config.feed_forward_proj == "relu" and not config.is_gated
  assert config.tie_word_embeddings and config.scale_decoder_outputs
  assert "lm_head" not in params
  np.testing.assert_array_equal(params["shared"]["embedding"],
                                model.shared.weight.detach().numpy())
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))


def test_gated_config_and_unscaled_head(v11, v11_params):
  config, params = v11_params
  assert config.feed_forward_proj == "gated-gelu" and config.is_gated
  assert not config.scale_decoder_outputs
  ffn = params["decoder"]["layers"]["ffn"]
  assert sorted(ffn) == ["wi_0", "wi_1", "wo"]
  assert ffn["wi_0"]["kernel"].shape == (4, 20, 24)
  assert ffn["wo"]["kernel"].shape == (4, 24, 20)
  np.testing.assert_array_equal(ffn["wi_1"]["kernel"][3],
                                linear(v11[0], "decoder.block.3.layer.2.DenseReluDense.wi_1.weight"))


def assert_imports_as(directory, expected):
  """The checkpoint in `directory` imports to exactly the expected (config, params)."""
  config, params = load_hf_t5(str(directory))
  assert config == expected[0]
  assert_trees_identical(params, expected[1])


def test_sharded_safetensors_equals_unsharded(tmp_path, v11, v11_params):
  model, _ = v11
  model.save_pretrained(str(tmp_path), max_shard_size="20KB")
  shards = [f for f in os.listdir(tmp_path) if f.endswith(".safetensors")]
  assert "model.safetensors.index.json" in os.listdir(tmp_path)
  assert len(shards) > 1 and "model.safetensors" not in shards
  assert_imports_as(tmp_path, v11_params)


def test_pytorch_bin_equals_safetensors(tmp_path, v11, v11_params):
  model, directory = v11
  shutil.copy(os.path.join(directory, "config.json"), tmp_path / "config.json")
  torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
  assert not any("safetensors" in f for f in os.listdir(tmp_path))
  assert_imports_as(tmp_path, v11_params)


def test_sharded_pytorch_bin_equals_safetensors(tmp_path, v11, v11_params):
  model, directory = v11
  shutil.copy(os.path.join(directory, "config.json"), tmp_path / "config.json")
  tensors = state_dict(model)
  names = sorted(tensors)
  halves = {"pytorch_model-00001-of-00002.bin": names[:len(names) // 2],
            "pytorch_model-00002-of-00002.bin": names[len(names) // 2:]}
  for shard, shard_names in halves.items():
    torch.save({n: tensors[n] for n in shard_names}, tmp_path / shard)
  weight_map = {n: shard for shard, shard_names in halves.items() for n in shard_names}
  (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
  assert_trees_identical(load_hf_t5(str(tmp_path))[1], v11_params[1])


def test_safetensors_preferred_over_pytorch_bin(tmp_path, v11, v11_params):
  _, directory = v11
  shutil.copytree(directory, tmp_path, dirs_exist_ok=True)
  (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle")  # never opened
  assert_trees_identical(load_hf_t5(str(tmp_path))[1], v11_params[1])


def test_bfloat16_checkpoint(tmp_path, random_hf_t5, t5_v10):
  model = random_hf_t5(3, **t5_v10).to(torch.bfloat16)
  model.save_pretrained(str(tmp_path))
  config, params = load_hf_t5(str(tmp_path))
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
  np.testing.assert_array_equal(params["shared"]["embedding"],
                                model.shared.weight.detach().float().numpy())
  np.testing.assert_array_equal(params["encoder"]["layers"]["ffn"]["wi"]["kernel"][1],
                                linear(model, "encoder.block.1.layer.1.DenseReluDense.wi.weight"))
  # Kept in bfloat16 when asked: the same values, no rounding.
  _, bf16 = load_hf_t5(str(tmp_path), param_dtype="bfloat16")
  assert all(leaf.dtype == ml_dtypes.bfloat16 for leaf in jax.tree.leaves(bf16))
  np.testing.assert_array_equal(bf16["shared"]["embedding"].astype(np.float32),
                                params["shared"]["embedding"])
  assert config.param_dtype == "float32"


def test_bfloat16_pytorch_bin(tmp_path, random_hf_t5, t5_v10):
  model = random_hf_t5(3, **t5_v10).to(torch.bfloat16)
  model.save_pretrained(str(tmp_path / "safetensors"))
  os.makedirs(tmp_path / "bin")
  shutil.copy(tmp_path / "safetensors" / "config.json", tmp_path / "bin" / "config.json")
  torch.save(model.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
  _, params = load_hf_t5(str(tmp_path / "bin"), param_dtype="bfloat16")
  assert_trees_identical(params, load_hf_t5(str(tmp_path / "safetensors"), param_dtype="bfloat16")[1])


# ----------------------------------------------------------------------------- parameter tree

def test_param_tree_paths(v10):
  _, params = load_hf_t5(v10[1])
  paths = {jax.tree_util.keystr(path, simple=True, separator="/")
           for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  encoder = [f"self_attn/{proj}/kernel" for proj in "qkvo"] + [
      "self_attn_norm/scale", "ffn/wi/kernel", "ffn/wo/kernel", "ffn_norm/scale"]
  decoder = encoder + [f"cross_attn/{proj}/kernel" for proj in "qkvo"] + ["cross_attn_norm/scale"]
  assert paths == ({"shared/embedding"}
                   | {f"{stack}/{leaf}" for stack in ("encoder", "decoder")
                      for leaf in ("relative_bias", "final_norm/scale")}
                   | {f"encoder/layers/{leaf}" for leaf in encoder}
                   | {f"decoder/layers/{leaf}" for leaf in decoder})


def test_stacked_shapes_and_transposed_weights(v10):
  model, directory = v10
  config, params = load_hf_t5(directory)
  decoder = params["decoder"]["layers"]
  # num_heads * d_kv = 18 differs from d_model = 16, so a wrong transpose cannot pass.
  assert decoder["self_attn"]["q"]["kernel"].shape == (3, 16, 18)
  assert decoder["self_attn"]["q"]["kernel"].shape == (
      config.num_decoder_layers, config.d_model, config.num_heads * config.d_kv)
  assert decoder["cross_attn"]["o"]["kernel"].shape == (3, 18, 16)
  assert params["encoder"]["layers"]["self_attn"]["k"]["kernel"].shape == (2, 16, 18)
  assert "cross_attn" not in params["encoder"]["layers"]
  np.testing.assert_array_equal(decoder["cross_attn"]["k"]["kernel"][2],
                                linear(model, "decoder.block.2.layer.1.EncDecAttention.k.weight"))
  np.testing.assert_array_equal(decoder["self_attn"]["o"]["kernel"][0],
                                linear(model, "decoder.block.0.layer.0.SelfAttention.o.weight"))
  hf = {name: tensor.numpy() for name, tensor in model.state_dict().items()}
  np.testing.assert_array_equal(decoder["ffn_norm"]["scale"][1],
                                hf["decoder.block.1.layer.2.layer_norm.weight"])
  np.testing.assert_array_equal(decoder["cross_attn_norm"]["scale"][2],
                                hf["decoder.block.2.layer.1.layer_norm.weight"])
  assert params["decoder"]["relative_bias"].shape == (8, 3)
  np.testing.assert_array_equal(
      params["decoder"]["relative_bias"],
      hf["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"])
  np.testing.assert_array_equal(params["encoder"]["final_norm"]["scale"],
                                hf["encoder.final_layer_norm.weight"])


# ----------------------------------------------------------------------------- LM head

def untied_tensors(model) -> dict:
  tensors = state_dict(model)
  torch.manual_seed(7)
  tensors["lm_head.weight"] = torch.randn_like(tensors["shared.weight"])
  return tensors


def test_untied_lm_head(tmp_path, v11):
  model, _ = v11
  tensors = untied_tensors(model)
  config = dict(hf_config(model), tie_word_embeddings=False)
  config.pop("scale_decoder_outputs")  # an older v1.1 config.json
  cfg, params = load_hf_t5(write_checkpoint(tmp_path, config, tensors))
  assert cfg.tie_word_embeddings is False and cfg.scale_decoder_outputs is False
  assert params["lm_head"]["kernel"].shape == (20, 67)
  np.testing.assert_array_equal(params["lm_head"]["kernel"], tensors["lm_head.weight"].numpy().T)
  np.testing.assert_array_equal(params["shared"]["embedding"], tensors["shared.weight"].numpy())
  assert not np.array_equal(params["lm_head"]["kernel"], params["shared"]["embedding"].T)


def test_untied_config_without_lm_head_tensor(tmp_path, v11):
  model, _ = v11
  tensors = state_dict(model)
  del tensors["lm_head.weight"]
  config = dict(hf_config(model), tie_word_embeddings=False)
  with pytest.raises(CheckpointError,
                     match=re.escape("missing tensor lm_head.weight (expected shape (67, 20))")):
    load_hf_t5(write_checkpoint(tmp_path, config, tensors))


def test_tied_config_with_differing_lm_head(tmp_path, v11):
  model, _ = v11
  config = dict(hf_config(model), tie_word_embeddings=True)
  with pytest.raises(CheckpointError,
                     match=message("tensor lm_head.weight differs from shared.weight",
                                   "tie_word_embeddings is true")):
    load_hf_t5(write_checkpoint(tmp_path, config, untied_tensors(model)))


def test_differing_embedding_alias(tmp_path, v10):
  model, _ = v10
  tensors = state_dict(model)
  tensors["decoder.embed_tokens.weight"] = tensors["decoder.embed_tokens.weight"] + 1.0
  with pytest.raises(CheckpointError,
                     match="tensor decoder.embed_tokens.weight differs from shared.weight; "
                     "T5 shares one embedding"):
    load_hf_t5(write_checkpoint(tmp_path, hf_config(model), tensors))


def test_embedding_aliases_are_optional(tmp_path, v10):
  model, directory = v10
  tensors = state_dict(model)
  for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight"):
    del tensors[name]
  _, params = load_hf_t5(write_checkpoint(tmp_path, hf_config(model), tensors))
  assert_trees_identical(params, load_hf_t5(directory)[1])


# ----------------------------------------------------------------------------- unused tensors

def test_unused_cross_attention_bias_is_ignored(tmp_path, v10):
  model, directory = v10
  tensors = state_dict(model)
  assert UNUSED not in tensors
  tensors[UNUSED] = torch.randn(8, 3)
  _, params = load_hf_t5(write_checkpoint(tmp_path, hf_config(model), tensors))
  assert_trees_identical(params, load_hf_t5(directory)[1])


# ----------------------------------------------------------------------------- locating errors

def test_missing_directory(tmp_path):
  path = str(tmp_path / "absent")
  with pytest.raises(CheckpointError, match=message(f"no such directory: {path!r}",
                                                    "not a Hub model name")):
    load_hf_t5(path)


def test_path_is_a_file(tmp_path):
  path = tmp_path / "model.safetensors"
  path.write_bytes(b"")
  with pytest.raises(CheckpointError, match=message(f"{str(path)!r} is a file",
                                                    "expected a Hugging Face T5 directory")):
    load_hf_t5(str(path))


def test_hub_name_offline():
  assert os.environ.get("HF_HUB_OFFLINE") == "1"
  name = "google/t5-nonexistent-xyz"
  with pytest.raises(CheckpointError,
                     match=message(f"{name!r} is not a local directory and could not be fetched "
                                   "from the Hugging Face Hub",
                                   "Pass the path of a local T5 directory")) as caught:
    load_hf_t5(name)
  assert caught.value.__cause__ is not None


# ----------------------------------------------------------------------------- config errors

def test_missing_config_json(tmp_path):
  with pytest.raises(CheckpointError,
                     match=message(f"missing file {tmp_path / 'config.json'}", "needs config.json")):
    load_hf_t5(str(tmp_path))


def test_invalid_json(tmp_path):
  path = tmp_path / "config.json"
  path.write_text('{\n  "model_type": "t5",\n  "d_model": 16,,\n}\n')
  with pytest.raises(CheckpointError, match=message(f"{path} line 3: not valid JSON (")):
    load_hf_t5(str(tmp_path))


def test_wrong_model_type(tmp_path, v10):
  config = dict(hf_config(v10[0]), model_type="bart")
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError,
                     match=message(f"{tmp_path / 'config.json'}: model_type is 'bart'; only 't5'")):
    load_hf_t5(str(tmp_path))


def test_unsupported_feed_forward_proj(tmp_path, v10):
  config = dict(hf_config(v10[0]), feed_forward_proj="swish-glu")
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(CheckpointError,
                     match=message(f"{tmp_path / 'config.json'}: T5Config.feed_forward_proj='swish-glu' "
                                   "is not supported", "allowed: relu, gated-gelu")) as caught:
    load_hf_t5(str(tmp_path))
  assert isinstance(caught.value.__cause__, ValueError)


def test_no_weights(tmp_path, v10):
  shutil.copy(os.path.join(v10[1], "config.json"), tmp_path / "config.json")
  with pytest.raises(CheckpointError,
                     match=message(f"no weights in {tmp_path}: expected one of model.safetensors",
                                   "pytorch_model.bin")):
    load_hf_t5(str(tmp_path))


# ----------------------------------------------------------------------------- tensor errors

def _drop(name):
  def change(tensors, config):
    del tensors[name]
    return config
  return change


def _add(name, tensor):
  def change(tensors, config):
    tensors[name] = tensor
    return config
  return change


def _narrow(name, width):
  def change(tensors, config):
    tensors[name] = tensors[name][:, :width]
    return config
  return change


def _config(**fields):
  return lambda tensors, config: dict(config, **fields)


V_WEIGHT = "encoder.block.1.layer.0.SelfAttention.v.weight"


@pytest.mark.parametrize("which, change, message", [
    ("v11", _drop("decoder.block.1.layer.2.DenseReluDense.wo.weight"),
     "missing tensor decoder.block.1.layer.2.DenseReluDense.wo.weight "
     "(expected shape (20, 24))"),
    ("v10", _add("decoder.block.5.layer.0.SelfAttention.q.weight", torch.zeros(18, 16)),
     "1 tensor(s) in the checkpoint that a T5 with this config does not have: "
     "decoder.block.5.layer.0.SelfAttention.q.weight"),
    # A gated checkpoint under a ReLU config.
    ("v11", _config(feed_forward_proj="relu"),
     "missing tensor encoder.block.0.layer.1.DenseReluDense.wi.weight (expected shape (24, 20))"),
    ("v10", _narrow(V_WEIGHT, 15),
     f"tensor {V_WEIGHT} has shape (18, 15) but the config expects (18, 16)"),
    ("v10", _config(d_kv=5),
     "tensor encoder.block.0.layer.0.SelfAttention.q.weight has shape (18, 16) but the "
     "config expects (15, 16)"),
], ids=["missing", "extra", "gated_under_relu", "shape", "shape_from_config"])
def test_tensor_errors(tmp_path, request, which, change, message):
  model, _ = request.getfixturevalue(which)
  tensors = state_dict(model)
  config = change(tensors, hf_config(model))
  with pytest.raises(CheckpointError, match=re.escape(message)):
    load_hf_t5(write_checkpoint(tmp_path, config, tensors))


def test_sharded_index_names_missing_shard(tmp_path, v11):
  model, _ = v11
  model.save_pretrained(str(tmp_path), max_shard_size="20KB")
  index = tmp_path / "model.safetensors.index.json"
  shard = sorted(set(json.loads(index.read_text())["weight_map"].values()))[1]
  os.remove(tmp_path / shard)
  with pytest.raises(CheckpointError,
                     match=re.escape(f"{index} names shard files that are missing: [{shard!r}]")):
    load_hf_t5(str(tmp_path))


def test_sharded_index_without_shards(tmp_path, v11):
  shutil.copy(os.path.join(v11[1], "config.json"), tmp_path / "config.json")
  index = tmp_path / "model.safetensors.index.json"
  index.write_text(json.dumps({"metadata": {}, "weight_map": {}}))
  with pytest.raises(CheckpointError,
                     match=re.escape(f"{index} names shard files that are missing: none listed")):
    load_hf_t5(str(tmp_path))


# ----------------------------------------------------------------------------- malformed inputs

def test_config_json_not_an_object(tmp_path):
  path = tmp_path / "config.json"
  path.write_text("[]")
  with pytest.raises(CheckpointError, match=re.escape(f"{path}: expected a JSON object, got list")):
    load_hf_t5(str(tmp_path))


def test_empty_eos_token_id_list(tmp_path, v10):
  config = dict(hf_config(v10[0]), eos_token_id=[])
  (tmp_path / "config.json").write_text(json.dumps(config))
  expected = f"{tmp_path / 'config.json'}: field eos_token_id must be an integer or a non-empty list"
  with pytest.raises(CheckpointError, match=re.escape(expected)):
    load_hf_t5(str(tmp_path))


@pytest.mark.parametrize("index_name", ["model.safetensors.index.json",
                                        "pytorch_model.bin.index.json"])
def test_index_invalid_json(tmp_path, v11, index_name):
  shutil.copy(os.path.join(v11[1], "config.json"), tmp_path / "config.json")
  index = tmp_path / index_name
  index.write_text('{\n  "metadata": {},\n  "weight_map": {"a": "b",,}\n}\n')
  with pytest.raises(CheckpointError, match=message(f"{index} line 3: not valid JSON (")) as caught:
    load_hf_t5(str(tmp_path))
  assert isinstance(caught.value.__cause__, json.JSONDecodeError)


@pytest.mark.parametrize("content", [{"metadata": {}}, {"weight_map": ["model.safetensors"]},
                                     {"weight_map": None}, []],
                         ids=["no-weight-map", "list-weight-map", "null-weight-map", "list"])
def test_index_without_weight_map_object(tmp_path, v11, content):
  shutil.copy(os.path.join(v11[1], "config.json"), tmp_path / "config.json")
  index = tmp_path / "model.safetensors.index.json"
  index.write_text(json.dumps(content))
  with pytest.raises(CheckpointError,
                     match=re.escape(f"{index}: expected an object with a 'weight_map' object")):
    load_hf_t5(str(tmp_path))


@pytest.mark.parametrize("weight_file", ["model.safetensors", "pytorch_model.bin"])
def test_corrupt_weight_file(tmp_path, v10, weight_file):
  shutil.copy(os.path.join(v10[1], "config.json"), tmp_path / "config.json")
  path = tmp_path / weight_file
  path.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(CheckpointError,
                     match=re.escape(f"{path} cannot be read as a weight file (")) as caught:
    load_hf_t5(str(tmp_path))
  assert caught.value.__cause__ is not None


def test_home_directory_is_expanded(tmp_path, monkeypatch, v10):
  _, directory = v10
  shutil.copytree(directory, tmp_path / "m")
  monkeypatch.setenv("HOME", str(tmp_path))
  config, params = load_hf_t5("~/m")
  expected_config, expected_params = load_hf_t5(directory)
  assert config == expected_config
  assert_trees_identical(params, expected_params)


def test_home_directory_missing(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  with pytest.raises(CheckpointError,
                     match=re.escape(f"no such directory: {str(tmp_path / 'absent')!r}")):
    load_hf_t5("~/absent")


@pytest.mark.parametrize("argument", ["dtype", "param_dtype"])
def test_unsupported_dtype_comes_before_reading(tmp_path, argument):
  with pytest.raises(ValueError,
                     match=re.escape(f"load_hf_t5 {argument}='float16' is not supported; "
                                     "allowed: float32, bfloat16")) as caught:
    load_hf_t5(str(tmp_path / "absent"), **{argument: "float16"})
  assert not isinstance(caught.value, CheckpointError)
