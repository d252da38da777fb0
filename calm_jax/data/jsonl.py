"""Local JSON Lines tasks: bring your own data, one file per split.

A task directory holds `<split>.jsonl` files (e.g. `train.jsonl`, `validation.jsonl`,
`test.jsonl`). Each non-blank line is a JSON object with at least a string `inputs` and a
non-empty string `targets`; other fields are kept in `extras`. A malformed line (not JSON,
not an object, a missing or non-string field, empty targets, a bad references list, bytes
that are not UTF-8) raises `MalformedLineError` naming the file and line, or is skipped
and counted with `skip_malformed=True`. Inputs longer than `max_input_bytes` (UTF-8
bytes, the byte vocabulary's unit) keep their first bytes, cut at a character boundary,
and are counted.

Plain Python: no NumPy, JAX, seqio or TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging

SPLIT_SUFFIX = ".jsonl"


class MalformedLineError(ValueError):
  """A line of a JSON Lines file that is not a valid example; the message names the file
  and the 1-based line number."""

  def __init__(self, path: str, line: int, reason: str):
    super().__init__(f"{path}:{line}: {reason}; fix the line, or skip and count such lines "
                     f"with --config.data.skip_malformed=True (read_jsonl(..., "
                     "skip_malformed=True) in Python)")
    self.path, self.line, self.reason = path, line, reason


@dataclasses.dataclass(frozen=True)
class JsonlExample:
  """One example read from a JSON Lines file.

  Attributes:
    inputs: the model input (possibly truncated to the reader's max_input_bytes).
    targets: the expected output (non-empty).
    references: every acceptable output: the `references_field` list when the reader was
      given one and the line has it, else (targets,).
    extras: the line's other fields (e.g. id, answers, source_lang), unchanged.
    line: the 1-based line number in the file.
  """
  inputs: str
  targets: str
  references: Tuple[str, ...]
  extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  line: int = 0


@dataclasses.dataclass(frozen=True)
class JsonlSplit:
  """What read_jsonl returns: the examples and what was skipped or cut on the way.

  Attributes:
    path: the file read.
    examples: the valid examples in file order.
    skipped_lines: 1-based numbers of malformed lines skipped (skip_malformed=True only).
    truncated: how many examples had their inputs cut to max_input_bytes.
  """
  path: str
  examples: Tuple[JsonlExample, ...]
  skipped_lines: Tuple[int, ...] = ()
  truncated: int = 0

  @property
  def skipped(self) -> int:
    """How many malformed lines were skipped."""
    return len(self.skipped_lines)


def truncate_utf8(text: str, max_bytes: int) -> str:
  """The longest prefix of `text` whose UTF-8 encoding has at most `max_bytes` bytes."""
  encoded = text.encode("utf-8")
  if len(encoded) <= max_bytes:
    return text
  return encoded[:max_bytes].decode("utf-8", errors="ignore")


def _string_field(record: Mapping[str, Any], name: str) -> str:
  if name not in record:
    raise ValueError(f"missing field {name!r} (fields: {', '.join(sorted(record)) or 'none'})")
  value = record[name]
  if not isinstance(value, str):
    raise ValueError(f"field {name!r} must be a string; got {type(value).__name__} "
                     f"{value!r:.60}")
  return value


def _references(record: Mapping[str, Any], field: Optional[str],
                targets: str) -> Tuple[str, ...]:
  if field is None or field not in record:
    return (targets,)
  value = record[field]
  if (not isinstance(value, list) or not value
      or not all(isinstance(item, str) for item in value)):
    raise ValueError(f"field {field!r} must be a non-empty list of strings; got "
                     f"{value!r:.60}")
  return tuple(value)


def _parse_line(raw: bytes, line: int, references_field: Optional[str]) -> JsonlExample:
  """One example from one line's bytes; ValueError (without the location) when malformed."""
  try:
    text = raw.decode("utf-8-sig" if line == 1 else "utf-8")  # a leading BOM is allowed
  except UnicodeDecodeError as error:
    raise ValueError(f"not valid UTF-8 ({error.reason} at byte {error.start})") from None
  try:
    record = json.loads(text)
  except json.JSONDecodeError as error:
    raise ValueError(f"not valid JSON ({error.msg} at column {error.colno})") from None
  if not isinstance(record, dict):
    raise ValueError(f"a line must be a JSON object; got {type(record).__name__}")
  inputs, targets = _string_field(record, "inputs"), _string_field(record, "targets")
  if not targets.strip():
    raise ValueError("field 'targets' is empty")
  references = _references(record, references_field, targets)
  extras = {k: v for k, v in record.items() if k not in ("inputs", "targets")}
  return JsonlExample(inputs, targets, references, extras, line)


def _check_max_input_bytes(max_input_bytes: Optional[int]) -> None:
  if max_input_bytes is None:
    return
  if (isinstance(max_input_bytes, bool) or not isinstance(max_input_bytes, int)
      or max_input_bytes < 1):
    raise ValueError(f"max_input_bytes must be None or an int >= 1; got {max_input_bytes!r}")


def read_jsonl(path: str, *, skip_malformed: bool = False,
               max_input_bytes: Optional[int] = None,
               references_field: Optional[str] = None,
               max_examples: Optional[int] = None) -> JsonlSplit:
  """Reads one JSON Lines split file.

  Args:
    path: the file; blank lines are ignored.
    skip_malformed: skip malformed lines and count them instead of raising.
    max_input_bytes: cut longer inputs to this many UTF-8 bytes and count them.
    references_field: a field holding a list of acceptable outputs (e.g. SQuAD's
      'answers'); lines without it use (targets,).
    max_examples: stop after this many valid examples (None reads the whole file).

  Raises:
    FileNotFoundError: the file does not exist.
    MalformedLineError: a malformed line while skip_malformed is False.
  """
  _check_max_input_bytes(max_input_bytes)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"JSON Lines file {path!r} does not exist")
  examples: List[JsonlExample] = []
  skipped: List[int] = []
  truncated = 0
  with open(path, "rb") as handle:
    for line, raw in enumerate(handle, start=1):
      if max_examples is not None and len(examples) >= max_examples:
        break
      if not raw.strip():
        continue
      try:
        example = _parse_line(raw, line, references_field)
      except ValueError as error:
        if not skip_malformed:
          raise MalformedLineError(path, line, str(error)) from None
        skipped.append(line)
        continue
      if max_input_bytes is not None:
        cut = truncate_utf8(example.inputs, max_input_bytes)
        if cut != example.inputs:
          truncated += 1
          example = dataclasses.replace(example, inputs=cut)
      examples.append(example)
  if skipped:
    logging.warning("%s: skipped %d malformed lines (first: line %d)", path, len(skipped),
                    skipped[0])
  if truncated:
    logging.info("%s: truncated %d inputs to %d bytes", path, truncated, max_input_bytes)
  return JsonlSplit(path, tuple(examples), tuple(skipped), truncated)


def split_files(directory: str) -> Dict[str, str]:
  """{split: path} for every `<split>.jsonl` in `directory`, sorted by split name."""
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"JSON Lines task directory {directory!r} does not exist")
  names = sorted(name for name in os.listdir(directory) if name.endswith(SPLIT_SUFFIX))
  return {name[:-len(SPLIT_SUFFIX)]: os.path.join(directory, name) for name in names}


def split_path(directory: str, split: str) -> str:
  """The file of `split` in `directory`; a missing split names the splits that exist."""
  files = split_files(directory)
  if split not in files:
    existing = ", ".join(files) or f"none (no *{SPLIT_SUFFIX} files)"
    raise ValueError(f"split={split!r} does not exist in {directory!r}; splits there: "
                     f"{existing}")
  return files[split]


def read_split(directory: str, split: str, **options) -> JsonlSplit:
  """read_jsonl on `<directory>/<split>.jsonl`; options are read_jsonl's."""
  return read_jsonl(split_path(directory, split), **options)
