"""The generated offline task family: determinism, disjoint splits, length limits, correct
targets, hard spans that cover exactly the computed answers, and the input checks."""

import collections
import os
import re
import subprocess
import sys

import pytest

from calm_jax.data import byte_vocab, generated
from calm_jax.data.generated import (KINDS, MAX_INPUT_BYTES, MAX_TARGET_BYTES, SPLITS,
                                     Example, example_stream, examples, hard_byte_mask,
                                     split_of)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _hard_text(example):
  return "".join(example.targets[start:end] for start, end in example.hard_spans)


def _easy_text(example):
  mask = hard_byte_mask(example)
  return "".join(ch for ch, hard in zip(example.targets, mask) if not hard)


# --- determinism ------------------------------------------------------------------------


def test_pinned_examples():
  # random.Random(str) and blake2b are stable across machines and Python versions, so these
  # literals pin the generator: a change here changes every trained demo model's data.
  assert examples("test", 5, seed=0) == [
      Example("tag bird: 6+52", "bird = 58", "tagged_sum", ((7, 9),)),
      Example("sort: mlkb", "sorted: bklm", "sort", ((8, 12),)),
      Example("count b in badadbabaaacbbdb", "b: 6 times", "count", ((3, 4),)),
      Example("sort: aveenjl", "sorted: aeejlnv", "sort", ((8, 15),)),
      Example("copy: wolf able", "wolf able", "copy", ()),
  ]


@pytest.mark.parametrize("split", SPLITS)
def test_same_arguments_same_examples(split):
  assert examples(split, 200, seed=3) == examples(split, 200, seed=3)


def test_seeds_give_different_streams():
  first, second = examples("train", 100, seed=0), examples("train", 100, seed=1)
  assert first != second
  assert len({e.inputs for e in first} & {e.inputs for e in second}) < 10


def test_a_shorter_list_is_a_prefix_of_a_longer_one():
  assert examples("validation", 30, seed=2) == examples("validation", 90, seed=2)[:30]
  stream = example_stream("validation", seed=2)
  assert [next(stream) for _ in range(30)] == examples("validation", 30, seed=2)


# --- splits -----------------------------------------------------------------------------


def test_splits_are_disjoint_across_seeds():
  inputs = {split: set() for split in SPLITS}
  for seed in range(3):
    for split, count in (("train", 3000), ("validation", 800), ("test", 800)):
      inputs[split] |= {e.inputs for e in examples(split, count, seed)}
  assert not inputs["train"] & inputs["validation"]
  assert not inputs["train"] & inputs["test"]
  assert not inputs["validation"] & inputs["test"]


@pytest.mark.parametrize("split", SPLITS)
def test_every_example_belongs_to_its_split(split):
  assert all(split_of(e.inputs) == split for e in examples(split, 500, seed=7))


def test_split_of_proportions():
  counts = collections.Counter(split_of(f"input {i}") for i in range(20_000))
  assert counts["test"] / 20_000 == pytest.approx(0.1, abs=0.01)
  assert counts["validation"] / 20_000 == pytest.approx(0.1, abs=0.01)
  assert counts["train"] / 20_000 == pytest.approx(0.8, abs=0.015)


# --- shape of the data ------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
def test_lengths_and_alphabet(split):
  for example in examples(split, 3000, seed=0):
    assert example.inputs.isascii() and example.targets.isascii()
    assert 0 < len(example.inputs.encode()) <= MAX_INPUT_BYTES
    assert 0 < len(example.targets.encode()) <= MAX_TARGET_BYTES
    assert example.targets == example.targets.strip()


def test_kinds_are_mixed_uniformly():
  counts = collections.Counter(e.kind for e in examples("train", 5000, seed=0))
  assert set(counts) == set(KINDS)
  for kind in KINDS:
    assert counts[kind] / 5000 == pytest.approx(1 / len(KINDS), abs=0.03)


def test_easy_and_hard_bytes_are_both_common():
  batch = examples("train", 3000, seed=0)
  mask = [hard for e in batch for hard in hard_byte_mask(e)]
  assert 0.15 < sum(mask) / len(mask) < 0.4


@pytest.mark.parametrize("kind", KINDS)
def test_kinds_filter(kind):
  assert {e.kind for e in examples("train", 100, seed=0, kinds=(kind,))} == {kind}
  assert examples("train", 20, seed=0, kinds=kind) == examples("train", 20, seed=0,
                                                               kinds=[kind])


def test_byte_vocabulary_round_trip():
  for example in examples("test", 300, seed=0):
    for text, limit in ((example.inputs, MAX_INPUT_BYTES), (example.targets,
                                                            MAX_TARGET_BYTES)):
      ids = byte_vocab.encode(text)
      assert len(ids) <= limit + 1 and ids[-1] == byte_vocab.EOS_ID
      assert byte_vocab.decode(ids) == text


# --- targets are right and the hard spans cover the answers -----------------------------


def _check_copy(example):
  words = example.inputs[len("copy: "):]
  assert example.targets == words
  assert all(word in generated.WORDS for word in words.split(" "))
  assert 2 <= len(words.split(" ")) <= 3
  assert example.hard_spans == ()


def _check_add(example):
  a, b = map(int, re.fullmatch(r"add: (\d+)\+(\d+)", example.inputs).groups())
  assert example.targets == f"sum: {a + b}"
  assert _hard_text(example) == str(a + b) and _easy_text(example) == "sum: "


def _check_sort(example):
  letters = re.fullmatch(r"sort: ([a-z]{3,7})", example.inputs).group(1)
  assert example.targets == "sorted: " + "".join(sorted(letters))
  assert _hard_text(example) == "".join(sorted(letters))
  assert _easy_text(example) == "sorted: "


def _check_count(example):
  letter, text = re.fullmatch(r"count ([a-d]) in ([a-d]{5,16})", example.inputs).groups()
  assert example.targets == f"{letter}: {text.count(letter)} times"
  assert _hard_text(example) == str(text.count(letter))
  assert _easy_text(example) == f"{letter}:  times"


def _check_tagged_sum(example):
  tag, a, b = re.fullmatch(r"tag ([a-z]+): (\d+)\+(\d+)", example.inputs).groups()
  assert tag in generated.WORDS
  assert example.targets == f"{tag} = {int(a) + int(b)}"
  assert _hard_text(example) == str(int(a) + int(b)) and _easy_text(example) == f"{tag} = "


CHECKS = {"copy": _check_copy, "add": _check_add, "sort": _check_sort, "count": _check_count,
          "tagged_sum": _check_tagged_sum}


def test_every_target_is_correct():
  assert set(CHECKS) == set(KINDS)
  for example in examples("train", 2000, seed=5):
    CHECKS[example.kind](example)


def test_numbers_use_one_or_two_digits_and_carry():
  adds = examples("train", 2000, seed=0, kinds=("add",))
  operands = [int(n) for e in adds for n in re.findall(r"\d+", e.inputs)]
  lengths = collections.Counter(len(str(n)) for n in operands)
  assert set(lengths) == {1, 2}
  assert lengths[2] / len(operands) == pytest.approx(2 / 3, abs=0.03)
  assert {len(str(a + b)) for a, b in zip(operands[::2], operands[1::2])} == {1, 2, 3}
  # A carry out of the units digit happens often (the hard case for early layers).
  pairs = [tuple(map(int, re.findall(r"\d+", e.inputs))) for e in adds]
  carries = sum((a % 10 + b % 10) >= 10 for a, b in pairs)
  assert carries / len(pairs) > 0.3


def test_counts_cover_zero_and_large_values():
  counts = {int(re.search(r": (\d+) ", e.targets).group(1))
            for e in examples("train", 3000, seed=0, kinds=("count",))}
  assert 0 in counts and max(counts) >= 8


def test_hard_byte_mask():
  example = Example("add: 8+5", "sum: 13", "add", ((5, 7),))
  assert hard_byte_mask(example) == [False] * 5 + [True, True]
  assert hard_byte_mask(Example("copy: a b", "a b", "copy")) == [False] * 3
  assert Example("x", "y", "copy").references == ("y",)


# --- bad input ----------------------------------------------------------------------------


def test_unknown_split():
  with pytest.raises(ValueError, match=r"split='dev' is not a split.*train, validation, test"):
    examples("dev", 3)


def test_unknown_kind():
  with pytest.raises(ValueError, match=r"kinds=\['divide'\] are not generated kinds.*copy"):
    examples("train", 3, kinds=("add", "divide"))
  with pytest.raises(ValueError, match="kinds is empty"):
    examples("train", 3, kinds=())


@pytest.mark.parametrize("count", [0, -1, 2.0, True, "3", None])
def test_bad_count(count):
  with pytest.raises(ValueError, match="count must be an int >= 1"):
    examples("train", count)


@pytest.mark.parametrize("seed", [1.5, "0", None, True])
def test_bad_seed(seed):
  with pytest.raises(ValueError, match="seed must be an int"):
    examples("train", 3, seed=seed)


def test_data_modules_load_without_jax_or_tensorflow():
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
  code = ("import sys, calm_jax.data.generated, calm_jax.data.jsonl, calm_jax.data.tasks; "
          "loaded = [m for m in ('jax', 'tensorflow', 'seqio') if m in sys.modules]; "
          "assert not loaded, loaded")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr
