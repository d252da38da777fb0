"""A few deterministic seq2seq examples (copy, reverse, addition) for the demo decode.

The full generated task family with splits and seqio registration belongs to the data
module; this is the small fixed sample the foundation's demo prints.
"""

from __future__ import annotations

import dataclasses
import random
import string
from typing import List


@dataclasses.dataclass(frozen=True)
class Example:
  inputs: str
  targets: str


def _one(rng: random.Random) -> Example:
  kind = rng.choice(("copy", "reverse", "add"))
  if kind == "add":
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    return Example(f"add: {a}+{b}", str(a + b))
  word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 8)))
  return Example(f"{kind}: {word}", word if kind == "copy" else word[::-1])


def sample_examples(count: int, seed: int) -> List[Example]:
  """`count` examples, the same for the same seed."""
  if count < 1:
    raise ValueError(f"count must be >= 1, got {count}")
  rng = random.Random(seed)
  return [_one(rng) for _ in range(count)]
