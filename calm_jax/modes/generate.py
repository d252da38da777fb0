"""The `generate` mode: texts from a file (or stdin) -> early-exit decoding -> JSON Lines.

Reads `generate.input_file` (one input a line, UTF-8; '-' reads standard input), prepends
`generate.input_prefix`, encodes with `data.vocabulary` (inputs longer than
`data.max_input_len` keep their first ids and EOS, and are counted), decodes in batches of
`generate.batch_size` with the `exit` section's early-exit rule, and writes
`<workdir>/generate.jsonl`: one record per non-blank input line with the output text and
ids, each token's exit layer and their mean.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Iterator, List, Optional, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging

from calm_jax.data.vocabulary import Vocabulary
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.free_adaptive import adaptive_threshold_for
from calm_jax.decoding.generate import generate
from calm_jax.decoding.sharded import DecodeMesh
from calm_jax.exit_classifiers.storage import classifier_params_for
from calm_jax.model.config import T5Config
from calm_jax.modes.checks import is_integer
from calm_jax.modes import memory
from calm_jax.modes.context import RunContext, run_context
from calm_jax.modes.mesh import run_mesh

OUTPUT_FILE = "generate.jsonl"
STDIN = "-"


@dataclasses.dataclass(frozen=True)
class GenerateSettings:
  """The `generate` section, checked."""

  input_file: str  # path of the input texts, or '-' for standard input
  batch_size: int  # inputs per decode call; 0 = all at once
  input_prefix: str  # prepended to every input (T5's task prefix)


@dataclasses.dataclass(frozen=True)
class InputLines:
  """The non-blank lines of the input, in order."""

  texts: List[str]  # each input as written (no prefix, no line break)
  line_numbers: List[int]  # 1-based line of each input in the file
  blank_lines: int  # blank lines skipped


def generate_settings(section: ml_collections.ConfigDict) -> GenerateSettings:
  """Checks the `generate` section before anything is read or loaded."""
  if not isinstance(section.input_file, str) or not section.input_file:
    raise ValueError("generate.input_file is empty: name a UTF-8 text file with one input a "
                     "line, or '-' to read standard input")
  batch_size = section.batch_size
  if not is_integer(batch_size) or batch_size < 0:
    raise ValueError(f"generate.batch_size must be an integer >= 0 (0 = all inputs at once), "
                     f"got {batch_size!r}")
  if not isinstance(section.input_prefix, str):
    raise ValueError(f"generate.input_prefix must be a string, got {section.input_prefix!r}")
  return GenerateSettings(section.input_file, int(batch_size), section.input_prefix)


def check_input_file(input_file: str) -> None:
  """Standard input, or an existing regular file (its contents are read later)."""
  if input_file == STDIN:
    if sys.stdin is None or sys.stdin.closed:
      raise ValueError("generate.input_file='-' reads standard input, but this process has "
                       "none (it is closed); pipe the inputs in or name a text file")
    return
  if not os.path.exists(input_file):
    raise ValueError(f"generate.input_file={input_file!r} does not exist; name a text file "
                     "with one input a line, or '-' for standard input")
  if not os.path.isfile(input_file):
    raise ValueError(f"generate.input_file={input_file!r} is not a regular file")


def _read_text(input_file: str) -> str:
  """The whole input as text; a missing file, a directory or bad UTF-8 is a ValueError."""
  check_input_file(input_file)
  if input_file == STDIN:
    return sys.stdin.read()
  try:
    with open(input_file, encoding="utf-8") as f:
      return f.read()
  except UnicodeDecodeError as error:
    raise ValueError(f"generate.input_file={input_file!r} is not UTF-8 text: byte "
                     f"{error.start} cannot be decoded ({error.reason})") from None


def split_lines(text: str) -> InputLines:
  """Inputs from text: split at '\\n' only (a trailing '\\r' is dropped), blank lines
  skipped and counted."""
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines.pop()  # the final line break ends the last line; it starts no new one
  texts, line_numbers, blank = [], [], 0
  for number, line in enumerate(lines, start=1):
    line = line[:-1] if line.endswith("\r") else line
    if not line.strip():
      blank += 1
      continue
    texts.append(line)
    line_numbers.append(number)
  return InputLines(texts, line_numbers, blank)


def read_inputs(input_file: str) -> InputLines:
  """The inputs of `input_file` ('-' = stdin); no input at all is a ValueError."""
  inputs = split_lines(_read_text(input_file))
  if not inputs.texts:
    source = "standard input" if input_file == STDIN else f"generate.input_file={input_file!r}"
    raise ValueError(f"{source} holds no inputs ({inputs.blank_lines} blank line(s)); write "
                     "one input text a line")
  return inputs


def batch_slices(count: int, batch_size: int) -> Iterator[slice]:
  """Consecutive slices of at most `batch_size` (0 = one slice of everything)."""
  size = batch_size or count
  for start in range(0, count, size):
    yield slice(start, min(start + size, count))


def _padded(array: np.ndarray, rows: int) -> np.ndarray:
  """`array` [b, S] grown to [rows, S] with copies of its first row (discarded later), so
  that every batch has one shape and compiles once."""
  if len(array) == rows:
    return array
  return np.concatenate([array, np.repeat(array[:1], rows - len(array), axis=0)])


def decode_in_batches(model_config: T5Config, params: Any, input_ids: np.ndarray,
                      mask: np.ndarray, exit_config: ExitConfig, classifier_params: Any,
                      max_decode_len: int, batch_size: int,
                      mesh: Optional[DecodeMesh] = None) -> Tuple[np.ndarray, np.ndarray]:
  """Tokens and exit layers, each [N, max_decode_len], decoded batch by batch (each batch
  split over `mesh`'s data shards); prints a rate line per batch on process 0. With
  exit.adaptive_threshold='beta_mixture' lambda is refitted between batches
  (decoding.free_adaptive) from the deep layers' verdicts on the real rows."""
  count = len(input_ids)
  rows = min(batch_size or count, count)
  adaptive = adaptive_threshold_for(exit_config)
  tokens, layers, start = [], [], time.perf_counter()
  for part in batch_slices(count, rows):
    if adaptive is not None:
      exit_config = dataclasses.replace(exit_config, threshold=adaptive.threshold)
    out = generate(model_config, params, _padded(input_ids[part], rows),
                   _padded(mask[part], rows), exit=exit_config, max_decode_len=max_decode_len,
                   classifier_params=classifier_params, mesh=mesh)
    size = part.stop - part.start
    out = jax.tree.map(lambda field: np.asarray(field)[:size], out)  # padding rows dropped
    tokens.append(out.tokens)  # [b, T]
    layers.append(out.exit_layers)  # [b, T]
    if adaptive is not None:
      adaptive.observe(out)
    if jax.process_index() == 0:
      rate = part.stop / max(time.perf_counter() - start, 1e-9)
      refit = f"; next lambda {adaptive.threshold:.4g}" if adaptive is not None else ""
      print(f"[generate] {part.stop}/{count} inputs decoded ({rate:.1f} inputs/s){refit}",
            flush=True)
  return np.concatenate(tokens), np.concatenate(layers)


def output_records(inputs: InputLines, tokens: np.ndarray, exit_layers: np.ndarray,
                   vocabulary: Vocabulary) -> List[dict]:
  """One record per input: the ids up to and including EOS (the positions with an exit
  layer; 0 marks the positions after EOS), their text and exit layers."""
  records = []
  for text, line, row, layer_row in zip(inputs.texts, inputs.line_numbers, tokens,
                                        exit_layers):
    layers = layer_row[layer_row > 0]  # [n] positions up to EOS
    records.append({"line": line, "input": text, "output": vocabulary.decode(row),
                    "output_ids": row[:len(layers)].tolist(),
                    "exit_layers": layers.tolist(),
                    "mean_exit_layer": float(layers.mean()) if len(layers) else None})
  return records


def _summary(records: List[dict], inputs: InputLines, truncated: int,
             config: ml_collections.ConfigDict, exit_config: ExitConfig,
             num_layers: int, path: str) -> str:
  layers = np.concatenate([np.asarray(r["exit_layers"], np.float64) for r in records])
  lines = [f"[generate] {len(records)} inputs decoded with {exit_config.measure} "
           f"(lambda={exit_config.threshold}, tau={exit_config.tau}): mean exit layer "
           f"{layers.mean():.2f} of {num_layers} over {layers.size} tokens"]
  if truncated:
    lines.append(f"[generate] {truncated} of {len(records)} inputs were longer than "
                 f"data.max_input_len={config.data.max_input_len} ids and were cut")
  if inputs.blank_lines:
    lines.append(f"[generate] {inputs.blank_lines} blank line(s) skipped")
  lines.append(f"[generate] wrote {path}")
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the generate mode runs on, checked."""

  context: RunContext  # the vocabulary and the model source; no task is read
  generate: GenerateSettings
  exit: ExitConfig


def check(config: ml_collections.ConfigDict, workdir: str) -> Settings:
  """The `generate` and `exit` sections, the input file and the model source, checked
  before the model loads (the inputs themselves are read once, by `run`)."""
  settings = generate_settings(config.generate)
  exit_config = ExitConfig.from_section(config.exit)
  check_input_file(settings.input_file)
  context = run_context(config, workdir, reads_task=False, exits=(exit_config,))
  memory.check_decoding(config, context.model_shape, settings.batch_size,
                        "generate.batch_size")
  return Settings(context, settings, exit_config)


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Runs the generate mode; returns the path of generate.jsonl."""
  settings = check(config, workdir)
  context, exit_config = settings.context, settings.exit
  inputs = read_inputs(settings.generate.input_file)
  model_config, params = context.checked_model(exit_config)
  classifier_params = classifier_params_for(exit_config, model_config)
  input_ids, mask, truncated = context.vocabulary.encode_batch(
      [settings.generate.input_prefix + text for text in inputs.texts],
      config.data.max_input_len)
  tokens, exit_layers = decode_in_batches(model_config, params, input_ids, mask, exit_config,
                                          classifier_params, config.decode.max_decode_len,
                                          settings.generate.batch_size,
                                          run_mesh(config, "generate"))
  records = output_records(inputs, tokens, exit_layers, context.vocabulary)
  path = context.write_jsonl(OUTPUT_FILE, records)
  if context.writes:
    print(_summary(records, inputs, truncated, config, exit_config,
                   model_config.num_decoder_layers, path), flush=True)
    logging.info("wrote %s", path)
  return path
