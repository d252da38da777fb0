"""The export_hf mode: <workdir>/hf_export holds the run's model as transformers loads it
(same logits), the run's tokenizer files and its saved exit classifiers."""

import os

import jax
import numpy as np
import torch
import transformers

import calm_jax
from calm_jax import modes
from calm_jax.exit_classifiers.registry import init_classifier
from calm_jax.exit_classifiers.storage import load_classifier, save_classifier
from calm_jax.model.source import load_model


def _word_tokenizer(directory) -> None:
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=import-outside-toplevel
  words = ["<pad>", "</s>", "<unk>", "the", "cat", "sat"]
  tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>",
                                       eos_token="</s>", unk_token="<unk>").save_pretrained(
                                           str(directory))


def test_export_hf_writes_model_tokenizer_and_classifiers(tmp_path, demo_config):
  workdir, tokenizer = tmp_path / "run", tmp_path / "tok"
  _word_tokenizer(tokenizer)
  config = demo_config()
  with config.unlocked():
    config.mode = "export_hf"
    config.data.vocabulary = str(tokenizer)
    config.model.num_layers = 1
    config.model.num_decoder_layers = 2
    config.model.vocab_size = 32  # the tokenizer's 6 ids and padding rows (must fit it)
  model_config, params = load_model(config.model, config.seed)
  trained = init_classifier("meta_linear", model_config, jax.random.PRNGKey(3))
  save_classifier(str(workdir / "exit_classifiers" / "meta_linear"), "meta_linear", trained)
  other = tmp_path / "elsewhere"
  save_classifier(str(other), "meta_mlp",
                  init_classifier("meta_mlp", model_config, jax.random.PRNGKey(4)))
  with config.unlocked():
    config.exit.classifier_path = str(other)

  path = modes.run(config, str(workdir))

  assert path == str(workdir / "hf_export")
  assert sorted(os.listdir(workdir)) == ["exit_classifiers", "hf_export", "run_record.json"]
  assert {"config.json", "model.safetensors", "tokenizer.json",
          "exit_classifiers"} <= set(os.listdir(path))
  assert sorted(os.listdir(os.path.join(path, "exit_classifiers"))) == ["meta_linear", "meta_mlp"]
  saved = load_classifier(os.path.join(path, "exit_classifiers", "meta_linear"), model_config)
  for a, b in zip(jax.tree.leaves(saved.params), jax.tree.leaves(trained)):
    np.testing.assert_array_equal(a, b)
  assert transformers.AutoTokenizer.from_pretrained(path)("the cat").input_ids == [3, 4]

  model = transformers.T5ForConditionalGeneration.from_pretrained(path).eval()
  ids = np.array([[5, 9, 17, 1]], np.int32)
  decoder_ids = np.array([[0, 7, 8]], np.int32)
  ours = calm_jax.forward(model_config, params, ids, decoder_ids, np.ones_like(ids)).logits
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(ids, dtype=torch.long),
                   decoder_input_ids=torch.tensor(decoder_ids, dtype=torch.long)).logits
  np.testing.assert_allclose(np.asarray(ours), theirs.numpy(), atol=1e-4, rtol=0)
