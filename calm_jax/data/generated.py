"""The generated offline task family: the embedded demo's training and evaluation data.

Every example is a short ASCII seq2seq pair whose target mixes easy bytes (fixed format
words, spans copied from the input) with hard ones (the digits of a sum with carries, a
sorted multiset, a count). A small model trained on it needs few layers for the easy bytes
and many for the hard ones, which is what makes per-token early exit worth measuring.

Kinds (inputs -> targets; hard bytes in brackets):
  copy        'copy: gold river'       -> 'gold river'
  add         'add: 57+68'             -> 'sum: [125]'
  sort        'sort: qdkab'            -> 'sorted: [abdkq]'
  count       'count b in abbcabdb'    -> 'b: [4] times'
  tagged_sum  'tag lamp: 93+9'         -> 'lamp = [102]'

Splits are disjoint by construction: each possible input string belongs to exactly one
split, chosen by a stable hash of the input (10% test, 10% validation, 80% train), and
the generator for a split keeps only candidates of that split. The seed picks a stream
within a split; the same (split, seed, kinds) always yields the same examples.

Plain Python (no NumPy, JAX, seqio or TensorFlow), so training code and tests can use it
anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import random
import string
from typing import Iterator, List, Sequence, Tuple

KINDS = ("copy", "add", "sort", "count", "tagged_sum")
SPLITS = ("train", "validation", "test")
MAX_INPUT_BYTES = 48
MAX_TARGET_BYTES = 24

# Hash bucket (of 10) -> split: bucket 0 is test, 1 is validation, the rest train.
_TEST_BUCKETS, _VALIDATION_BUCKETS = frozenset({0}), frozenset({1})

# Everyday words for the copy and tagged_sum kinds: after a word's first byte the rest is
# predictable from the list itself, as in natural text.
WORDS = (
    "able", "acid", "aunt", "bake", "bell", "bird", "blue", "boat", "bold", "cake", "calm",
    "card", "cold", "corn", "dark", "dawn", "deer", "dust", "east", "echo", "farm", "fern",
    "fire", "fish", "gold", "gray", "hill", "home", "iron", "jazz", "kind", "lake", "lamp",
    "leaf", "lime", "moon", "mint", "nest", "oak", "owl", "pear", "pine", "rain", "river",
    "road", "rose", "salt", "sand", "ship", "snow", "star", "stone", "sun", "tide", "tree",
    "vine", "wave", "west", "wind", "wolf", "wood", "yarn", "zinc", "zone",
)


@dataclasses.dataclass(frozen=True)
class Example:
  """One generated seq2seq pair.

  Attributes:
    inputs: the model input, at most MAX_INPUT_BYTES ASCII bytes.
    targets: the expected output, at most MAX_TARGET_BYTES ASCII bytes.
    kind: which task of KINDS produced it.
    hard_spans: [start, end) byte offsets into `targets` of the hard bytes (computed
      answers); every other target byte is a format word or a copy from the input.
  """
  inputs: str
  targets: str
  kind: str
  hard_spans: Tuple[Tuple[int, int], ...] = ()

  @property
  def references(self) -> Tuple[str, ...]:
    """The acceptable outputs (one: the target)."""
    return (self.targets,)


def hard_byte_mask(example: Example) -> List[bool]:
  """True for each target byte inside a hard span (EOS not included)."""
  mask = [False] * len(example.targets.encode("utf-8"))
  for start, end in example.hard_spans:
    mask[start:end] = [True] * (end - start)
  return mask


def split_of(inputs: str) -> str:
  """The split an input string belongs to (a stable hash, the same on every machine)."""
  digest = hashlib.blake2b(inputs.encode("utf-8"), digest_size=8).digest()
  bucket = int.from_bytes(digest, "big") % 10
  if bucket in _TEST_BUCKETS:
    return "test"
  if bucket in _VALIDATION_BUCKETS:
    return "validation"
  return "train"


def _build(inputs: str, kind: str, parts: Sequence[Tuple[str, bool]]) -> Example:
  """An Example whose target is the concatenation of (text, is_hard) parts."""
  spans, offset = [], 0
  for text, is_hard in parts:
    if is_hard and text:
      spans.append((offset, offset + len(text)))
    offset += len(text)
  return Example(inputs, "".join(text for text, _ in parts), kind, tuple(spans))


def _number(rng: random.Random) -> int:
  """1 digit (a third of the time) or 2 digits: carries are frequent, yet a tiny model
  learns the sums in a few thousand steps (3-digit operands take several times longer)."""
  digits = rng.choice((1, 2, 2))
  return rng.randint(0 if digits == 1 else 10**(digits - 1), 10**digits - 1)


def _copy(rng: random.Random) -> Example:
  words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 3)))
  return _build(f"copy: {words}", "copy", [(words, False)])


def _add(rng: random.Random) -> Example:
  a, b = _number(rng), _number(rng)
  return _build(f"add: {a}+{b}", "add", [("sum: ", False), (str(a + b), True)])


def _sort(rng: random.Random) -> Example:
  letters = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 7)))
  return _build(f"sort: {letters}", "sort",
                [("sorted: ", False), ("".join(sorted(letters)), True)])


def _count(rng: random.Random) -> Example:
  alphabet = "abcd"
  text = "".join(rng.choice(alphabet) for _ in range(rng.randint(5, 16)))
  letter = rng.choice(alphabet)
  return _build(f"count {letter} in {text}", "count",
                [(f"{letter}: ", False), (str(text.count(letter)), True), (" times", False)])


def _tagged_sum(rng: random.Random) -> Example:
  tag, a, b = rng.choice(WORDS), _number(rng), _number(rng)
  return _build(f"tag {tag}: {a}+{b}", "tagged_sum",
                [(f"{tag} = ", False), (str(a + b), True)])


_GENERATORS = {"copy": _copy, "add": _add, "sort": _sort, "count": _count,
               "tagged_sum": _tagged_sum}


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"split={split!r} is not a split of the generated tasks; allowed: "
                     f"{', '.join(SPLITS)}")


def _check_kinds(kinds: Sequence[str]) -> Tuple[str, ...]:
  if isinstance(kinds, str):
    kinds = (kinds,)
  kinds = tuple(kinds)
  if not kinds:
    raise ValueError(f"kinds is empty; choose one or more of {', '.join(KINDS)}")
  unknown = [kind for kind in kinds if kind not in _GENERATORS]
  if unknown:
    raise ValueError(f"kinds={unknown!r} are not generated kinds; allowed: {', '.join(KINDS)}")
  return kinds


def _check_seed(seed: int) -> None:
  if isinstance(seed, bool) or not isinstance(seed, int):
    raise ValueError(f"seed must be an int; got {type(seed).__name__} {seed!r}")


def example_stream(split: str, seed: int = 0,
                   kinds: Sequence[str] = KINDS) -> Iterator[Example]:
  """An endless, deterministic stream of `split` examples; each example's kind is drawn
  uniformly from `kinds`."""
  _check_split(split)
  kinds = _check_kinds(kinds)
  _check_seed(seed)
  rng = random.Random(f"calm_jax.generated/{split}/{seed}")
  while True:
    example = _GENERATORS[rng.choice(kinds)](rng)
    if split_of(example.inputs) == split:
      yield example


def examples(split: str, count: int, seed: int = 0,
             kinds: Sequence[str] = KINDS) -> List[Example]:
  """The first `count` examples of `example_stream(split, seed, kinds)`.

  Args:
    split: 'train', 'validation' or 'test'; no input string occurs in two splits.
    count: how many examples (>= 1).
    seed: picks the stream within the split; the same arguments give the same list.
    kinds: the kinds to mix (a subset of KINDS), drawn uniformly.
  """
  if isinstance(count, bool) or not isinstance(count, int) or count < 1:
    raise ValueError(f"count must be an int >= 1; got {count!r}")
  return list(itertools.islice(example_stream(split, seed, kinds), count))
