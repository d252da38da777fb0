"""Local JSON Lines tasks: reading, malformed lines (error naming file and line, or skipped
and counted), truncation, references, splits; and the real sets in ../shared/data when
that folder is present."""

import json
import os

import pytest

from calm_jax.data import jsonl, tasks
from calm_jax.data.jsonl import (JsonlExample, MalformedLineError, read_jsonl, read_split,
                                 split_files, split_path, truncate_utf8)

SHARED_DATA = tasks.default_data_dir()


def _write(path, lines):
  """Writes str lines (JSON text) or bytes lines verbatim, one per line."""
  with open(path, "wb") as handle:
    for line in lines:
      handle.write(line if isinstance(line, bytes) else line.encode("utf-8"))
      handle.write(b"\n")
  return str(path)


def _line(**fields):
  return json.dumps(fields, ensure_ascii=False)


# --- reading ------------------------------------------------------------------------------


def test_reads_examples_in_order_with_extras_and_line_numbers(tmp_path):
  path = _write(tmp_path / "train.jsonl", [
      _line(inputs="add: 1+2", targets="3", id="a"),
      "",
      "   ",
      _line(inputs="héllo", targets="wörld", id="b", score=0.5, tags=["x"]),
  ])
  split = read_jsonl(path)
  assert split.path == path
  assert split.examples == (
      JsonlExample("add: 1+2", "3", ("3",), {"id": "a"}, 1),
      JsonlExample("héllo", "wörld", ("wörld",), {"id": "b", "score": 0.5, "tags": ["x"]}, 4),
  )
  assert split.skipped == 0 and split.skipped_lines == () and split.truncated == 0


def test_windows_line_ends_and_a_byte_order_mark(tmp_path):
  path = tmp_path / "train.jsonl"
  path.write_bytes(b"\xef\xbb\xbf" + _line(inputs="a", targets="b").encode() + b"\r\n"
                   + _line(inputs="c", targets="d").encode() + b"\r\n")
  assert [(e.inputs, e.targets) for e in read_jsonl(str(path)).examples] == [("a", "b"),
                                                                             ("c", "d")]


def test_max_examples(tmp_path):
  path = _write(tmp_path / "t.jsonl", [_line(inputs=str(i), targets=str(i)) for i in range(5)]
                + ["not json"])
  assert [e.inputs for e in read_jsonl(path, max_examples=3).examples] == ["0", "1", "2"]


def test_references_field(tmp_path):
  path = _write(tmp_path / "v.jsonl", [
      _line(inputs="q1", targets="a", answers=["a", "the a", "a"]),
      _line(inputs="q2", targets="b"),
  ])
  first, second = read_jsonl(path, references_field="answers").examples
  assert first.references == ("a", "the a", "a")
  assert second.references == ("b",)
  assert read_jsonl(path).examples[0].references == ("a",)
  assert read_jsonl(path).examples[0].extras["answers"] == ["a", "the a", "a"]


# --- malformed lines ----------------------------------------------------------------------

MALFORMED = [
    ("{not json", r"not valid JSON"),
    ('["inputs", "targets"]', r"a line must be a JSON object; got list"),
    ('"just a string"', r"a line must be a JSON object; got str"),
    (_line(targets="t"), r"missing field 'inputs' \(fields: targets\)"),
    (_line(inputs="i"), r"missing field 'targets' \(fields: inputs\)"),
    (_line(inputs=3, targets="t"), r"field 'inputs' must be a string; got int 3"),
    (_line(inputs="i", targets=None), r"field 'targets' must be a string; got NoneType"),
    (_line(inputs="i", targets=["t"]), r"field 'targets' must be a string; got list"),
    (_line(inputs="i", targets=""), r"field 'targets' is empty"),
    (_line(inputs="i", targets=" \n\t"), r"field 'targets' is empty"),
    (b'{"inputs": "\xff\xfe", "targets": "t"}', r"not valid UTF-8"),
]


@pytest.mark.parametrize("bad,reason", MALFORMED)
def test_malformed_line_names_file_and_line(tmp_path, bad, reason):
  path = _write(tmp_path / "validation.jsonl",
                [_line(inputs="a", targets="b"), "", bad, _line(inputs="c", targets="d")])
  with pytest.raises(MalformedLineError, match=reason) as info:
    read_jsonl(path)
  assert str(info.value).startswith(f"{path}:3: ")
  assert "skip_malformed=True" in str(info.value)
  assert (info.value.path, info.value.line) == (path, 3)
  assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("answers", [[], "a", ["a", 3], None])
def test_malformed_references(tmp_path, answers):
  path = _write(tmp_path / "v.jsonl", [_line(inputs="q", targets="a", answers=answers)])
  with pytest.raises(MalformedLineError, match=r":1: field 'answers' must be a non-empty list"):
    read_jsonl(path, references_field="answers")


def test_skip_malformed_counts_the_lines(tmp_path):
  lines = [_line(inputs="ok 1", targets="t")] + [bad for bad, _ in MALFORMED]
  lines.append(_line(inputs="ok 2", targets="t"))
  path = _write(tmp_path / "train.jsonl", lines)
  split = read_jsonl(path, skip_malformed=True)
  assert [e.inputs for e in split.examples] == ["ok 1", "ok 2"]
  assert [e.line for e in split.examples] == [1, len(lines)]
  assert split.skipped == len(MALFORMED)
  assert split.skipped_lines == tuple(range(2, len(MALFORMED) + 2))


# --- truncation ---------------------------------------------------------------------------


def test_truncate_utf8_cuts_at_a_character_boundary():
  assert truncate_utf8("abcdef", 4) == "abcd"
  assert truncate_utf8("abc", 3) == "abc"
  assert truncate_utf8("abc", 10) == "abc"
  assert truncate_utf8("aé", 2) == "a"  # é is two bytes: no half character
  assert truncate_utf8("aé", 3) == "aé"
  assert truncate_utf8("€€", 5) == "€"  # three bytes each


def test_long_inputs_are_truncated_and_counted(tmp_path):
  path = _write(tmp_path / "test.jsonl", [
      _line(inputs="short", targets="t"),
      _line(inputs="x" * 20, targets="t"),
      _line(inputs="ü" * 10, targets="t"),  # 20 bytes
      _line(inputs="y" * 8, targets="t"),  # exactly the limit
  ])
  split = read_jsonl(path, max_input_bytes=8)
  assert [e.inputs for e in split.examples] == ["short", "x" * 8, "ü" * 4, "y" * 8]
  assert split.truncated == 2
  assert read_jsonl(path).truncated == 0
  assert split.examples[1].targets == "t"


@pytest.mark.parametrize("limit", [0, -3, 2.5, True, "8"])
def test_bad_max_input_bytes(tmp_path, limit):
  path = _write(tmp_path / "t.jsonl", [_line(inputs="a", targets="b")])
  with pytest.raises(ValueError, match="max_input_bytes must be None or an int >= 1"):
    read_jsonl(path, max_input_bytes=limit)


# --- files and splits ---------------------------------------------------------------------


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.jsonl' does not exist"):
    read_jsonl(str(tmp_path / "nope.jsonl"))


def test_split_files_and_paths(tmp_path):
  for split in ("validation", "train"):
    _write(tmp_path / f"{split}.jsonl", [_line(inputs=split, targets="t")])
  _write(tmp_path / "notes.txt", ["ignored"])
  assert split_files(str(tmp_path)) == {"train": str(tmp_path / "train.jsonl"),
                                        "validation": str(tmp_path / "validation.jsonl")}
  assert split_path(str(tmp_path), "train") == str(tmp_path / "train.jsonl")
  assert read_split(str(tmp_path), "validation").examples[0].inputs == "validation"


def test_missing_split_lists_the_existing_ones(tmp_path):
  for split in ("validation", "train"):
    _write(tmp_path / f"{split}.jsonl", [_line(inputs="i", targets="t")])
  with pytest.raises(ValueError, match=r"split='test' does not exist in .*; splits there: "
                     r"train, validation"):
    read_split(str(tmp_path), "test")


def test_missing_split_in_an_empty_directory(tmp_path):
  with pytest.raises(ValueError, match=r"splits there: none \(no \*\.jsonl files\)"):
    split_path(str(tmp_path), "train")


def test_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="task directory .*absent' does not exist"):
    split_files(str(tmp_path / "absent"))


# --- the real evaluation sets in ../shared/data -------------------------------------------

needs_shared_data = pytest.mark.skipif(not os.path.isdir(SHARED_DATA),
                                       reason=f"{SHARED_DATA} is absent")

# Line counts stated in ../shared/data/README.md.
SHARED_COUNTS = {
    ("squad_v1.1", "validation"): 10570,
    ("cnn_dailymail", "test"): 574,
    ("cnn_dailymail", "validation"): 668,
    ("samsum", "test"): 819,
    ("samsum", "validation"): 818,
    ("wmt14_en_de", "test"): 3003,
    ("wmt14_en_de", "validation"): 3000,
    ("wmt14_en_fr", "test"): 3003,
    ("wmt14_en_fr", "validation"): 3000,
    ("wmt15_en_fr", "test"): 1500,
}


@needs_shared_data
@pytest.mark.parametrize("folder,split", sorted(SHARED_COUNTS))
def test_shared_data_reads_cleanly(folder, split):
  directory = os.path.join(SHARED_DATA, folder)
  if not os.path.isdir(directory):
    pytest.skip(f"{directory} is absent")
  read = read_split(directory, split, references_field="answers")
  assert len(read.examples) == SHARED_COUNTS[folder, split]
  assert read.skipped == 0 and read.truncated == 0
  assert all(e.targets.strip() and isinstance(e.inputs, str) for e in read.examples)
  assert len({e.extras["id"] for e in read.examples}) == len(read.examples)


@needs_shared_data
def test_shared_squad_references_and_truncation():
  directory = os.path.join(SHARED_DATA, "squad_v1.1")
  full = read_split(directory, "validation", references_field="answers")
  read = read_split(directory, "validation", references_field="answers", max_input_bytes=256)
  first = read.examples[0]
  assert first.inputs.startswith("question: Which NFL team represented the AFC")
  assert first.targets == "Denver Broncos" and "Denver Broncos" in first.references
  assert all(len(e.inputs.encode()) <= 256 for e in read.examples)
  assert read.truncated == sum(len(e.inputs.encode()) > 256 for e in full.examples) > 0
  assert all(cut.inputs == whole.inputs[:len(cut.inputs)]
             for cut, whole in zip(read.examples, full.examples))
  with pytest.raises(ValueError, match="splits there: validation"):
    read_split(directory, "train")


@needs_shared_data
def test_shared_cnn_dailymail_targets_keep_newlines():
  read = read_split(os.path.join(SHARED_DATA, "cnn_dailymail"), "test", max_examples=5)
  assert len(read.examples) == 5
  assert all("\n" in e.targets for e in read.examples)
  assert jsonl.SPLIT_SUFFIX == ".jsonl"
