"""Vocabularies that turn text into model ids and back, without seqio or TensorFlow.

- 'byte': the byte-level vocabulary of byte_vocab.py (the offline demo's).
- a local Hugging Face tokenizer directory (e.g. a T5 checkpoint's, holding tokenizer.json
  or spiece.model): loaded with transformers' AutoTokenizer, never from the network.

Both append EOS to encoded text and stop decoding at EOS, as T5 expects.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, List, Sequence, Tuple

import numpy as np

from calm_jax.data import byte_vocab


MAX_PADDING_ROWS = 128  # embedding rows a model may have beyond its tokenizer's ids


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Text <-> ids with T5's conventions (pad, EOS)."""

  name: str
  size: int  # ids in [0, size)
  pad_id: int
  eos_id: int
  _tokenizer: Any = dataclasses.field(default=None, compare=False, repr=False)

  def encode(self, text: str) -> List[int]:
    """Ids of `text` followed by EOS."""
    if self._tokenizer is None:
      return byte_vocab.encode(text)
    return list(self._tokenizer(text, add_special_tokens=False)["input_ids"]) + [self.eos_id]

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ids up to the first EOS (padding and special ids dropped)."""
    if self._tokenizer is None:
      return byte_vocab.decode(ids)
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self._tokenizer.decode(ids, skip_special_tokens=True)

  def encode_batch(self, texts: Sequence[str], max_length: int) -> Tuple[np.ndarray, np.ndarray, int]:
    """(ids [B, max_length] int32, mask [B, max_length] int32, number of texts cut short).
    A text longer than max_length keeps its first max_length - 1 ids and its EOS."""
    if max_length < 1:
      raise ValueError(f"max_length must be >= 1, got {max_length}")
    ids = np.full((len(texts), max_length), self.pad_id, np.int32)
    truncated = 0
    for row, text in enumerate(texts):
      encoded = self.encode(text)
      if len(encoded) > max_length:
        encoded = encoded[:max_length - 1] + [self.eos_id]
        truncated += 1
      ids[row, :len(encoded)] = encoded
    return ids, (ids != self.pad_id).astype(np.int32), truncated

  def check_model(self, vocab_size: int) -> None:
    """The model's embedding holds every id this vocabulary produces, and every id the
    model can emit decodes: the byte vocabulary needs a model of exactly its size, a
    tokenizer allows up to MAX_PADDING_ROWS unused rows (T5's 32128 rows for 32100 ids)."""
    extra = 0 if self._tokenizer is None else MAX_PADDING_ROWS
    if not self.size <= vocab_size <= self.size + extra:
      raise ValueError(f"model has {vocab_size} ids, data.vocabulary {self.name!r} has "
                       f"{self.size}: pass the checkpoint's tokenizer directory in "
                       "data.vocabulary (or a model of that vocabulary size: "
                       f"model.vocab_size={self.size})")


BYTE = Vocabulary("byte", byte_vocab.VOCAB_SIZE, byte_vocab.PAD_ID, byte_vocab.EOS_ID)


def get_vocabulary(spec: str) -> Vocabulary:
  """'byte', or a local Hugging Face tokenizer directory."""
  if spec == "byte":
    return BYTE
  if not isinstance(spec, str) or not os.path.isdir(spec):
    raise ValueError(f"data.vocabulary={spec!r} is neither 'byte' nor a local tokenizer "
                     "directory (a Hugging Face checkpoint folder with tokenizer.json or "
                     "spiece.model)")
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel
  try:
    tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=True)
  except (OSError, ValueError) as error:
    raise ValueError(f"data.vocabulary={spec!r}: no tokenizer could be loaded there "
                     f"({error})") from None
  if tokenizer.eos_token_id is None or tokenizer.pad_token_id is None:
    raise ValueError(f"the tokenizer in {spec!r} defines no EOS or pad token; T5 needs both")
  return Vocabulary(spec, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id,
                    tokenizer)
