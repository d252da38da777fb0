"""A byte-level vocabulary for offline work (ByT5's layout: pad 0, EOS 1, UNK 2, then the
256 byte values)."""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
NUM_SPECIAL = 3
VOCAB_SIZE = NUM_SPECIAL + 256


def encode(text: str) -> List[int]:
  """UTF-8 bytes shifted past the special ids, followed by EOS."""
  return [b + NUM_SPECIAL for b in text.encode("utf-8")] + [EOS_ID]


def decode(ids: Sequence[int]) -> str:
  """Ids back to text, stopping at EOS; special ids are dropped, invalid UTF-8 replaced."""
  data = bytearray()
  for token in ids:
    token = int(token)
    if token == EOS_ID:
      break
    if token >= NUM_SPECIAL:
      data.append(token - NUM_SPECIAL)
  return data.decode("utf-8", errors="replace")


def encode_batch(texts: Sequence[str], max_length: int):
  """Pads/truncates encoded texts to [B, max_length]; returns ids and a 1/0 mask."""
  if max_length < 1:
    raise ValueError(f"max_length must be >= 1, got {max_length}")
  ids = np.full((len(texts), max_length), PAD_ID, np.int32)
  for row, text in enumerate(texts):
    encoded = encode(text)[:max_length]
    ids[row, :len(encoded)] = encoded
  return ids, (ids != PAD_ID).astype(np.int32)
