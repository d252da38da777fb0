"""Vocabularies: byte-level and a local Hugging Face tokenizer directory."""

import numpy as np
import pytest

from calm_jax.data import byte_vocab
from calm_jax.data.vocabulary import BYTE, get_vocabulary


def test_byte_vocabulary_cuts_long_inputs_keeping_eos_and_counts_them():
  ids, mask, truncated = BYTE.encode_batch(["abcdef", "ab"], 4)
  assert truncated == 1
  np.testing.assert_array_equal(ids[0], [100, 101, 102, byte_vocab.EOS_ID])
  np.testing.assert_array_equal(ids[1], [100, 101, byte_vocab.EOS_ID, 0])
  np.testing.assert_array_equal(mask[1], [1, 1, 1, 0])
  assert BYTE.decode(ids[0]) == "abc"


def _word_tokenizer(directory):
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=import-outside-toplevel
  from transformers import PreTrainedTokenizerFast  # pylint: disable=import-outside-toplevel
  words = ["<pad>", "</s>", "<unk>", "the", "cat", "sat"]
  tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                          unk_token="<unk>").save_pretrained(str(directory))


def test_tokenizer_directory_encodes_with_eos_and_decodes_up_to_it(tmp_path):
  _word_tokenizer(tmp_path)
  vocabulary = get_vocabulary(str(tmp_path))
  assert (vocabulary.size, vocabulary.pad_id, vocabulary.eos_id) == (6, 0, 1)
  assert vocabulary.encode("the cat sat") == [3, 4, 5, 1]
  assert vocabulary.decode([3, 4, 1, 5, 0]) == "the cat"
  ids, _, truncated = vocabulary.encode_batch(["the cat sat", "cat"], 3)
  np.testing.assert_array_equal(ids, [[3, 4, 1], [4, 1, 0]])
  assert truncated == 1
  with pytest.raises(ValueError, match="model has 5 ids, data.vocabulary '.*' has 6: pass "
                     "the checkpoint's tokenizer directory in data.vocabulary"):
    vocabulary.check_model(5)
  vocabulary.check_model(6 + 128)  # T5 pads its 32100 ids to 32128 rows
  with pytest.raises(ValueError, match="model has 135 ids"):
    vocabulary.check_model(6 + 129)


def test_the_byte_vocabulary_needs_a_model_of_its_size():
  vocabulary = get_vocabulary("byte")
  vocabulary.check_model(259)
  for size in (258, 260, 32128):
    with pytest.raises(ValueError, match=f"model has {size} ids, data.vocabulary 'byte' has "
                       "259: pass the checkpoint's tokenizer directory in data.vocabulary"):
      vocabulary.check_model(size)


def test_unknown_vocabulary_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="data.vocabulary='bytes' is neither 'byte' nor a local"):
    get_vocabulary("bytes")
  with pytest.raises(ValueError, match="no tokenizer could be loaded there"):
    get_vocabulary(str(tmp_path))
