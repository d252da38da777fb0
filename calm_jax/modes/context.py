"""The run context every mode shares, built once per run: the examples of `data.task`'s
splits through `data.vocabulary` (so every mode sees the same data the same way), the model
source, and the workdir, which only process 0 writes.

Splits: `train` trains; `data.calibration_split` (validation) calibrates; `data.test_split`
(test) decodes, evaluates and analyses.

`data.task` names a task of data/tasks.py or, with the `calm_` prefix, a seqio task of
data/seqio_tasks.py (optional: seqio and TensorFlow are imported only then). Both become a
RunTask, so no mode knows where its examples came from.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging

from calm_jax.data import metrics
from calm_jax.data.tasks import get_task
from calm_jax.data.vocabulary import Vocabulary, get_vocabulary
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.measures import checked_measure
from calm_jax.model.config import T5Config
from calm_jax.model.source import describe_source, is_random, load_model, source_config
from calm_jax.modes.checks import is_integer
from calm_jax.utils.files import (write_json_atomically, write_jsonl_atomically,
                                  write_text_atomically)

SEQIO_TASK_PREFIX = "calm_"  # seqio_tasks.TASK_PREFIX, known here without importing seqio
SEQIO_REQUIREMENTS = "requirements-seqio.txt"
CLASSIFIER_DIR = "exit_classifiers"  # <workdir>/<this>/<name>: train_exit's output
TRAINING_MODES = ("train", "all")  # modes that start from fresh weights on purpose


class Example(Protocol):
  """What a run reads of an example, whichever registry made it (tasks.Example,
  seqio_tasks.TextExample)."""

  @property
  def inputs(self) -> str: ...

  @property
  def targets(self) -> str: ...

  @property
  def references(self) -> Sequence[str]: ...


@dataclasses.dataclass(frozen=True)
class RunTask:
  """data.task as the run modes see it, from the plain registry or from seqio.

  Attributes:
    name: the task's name (data.task).
    metric_names: corpus metrics scoring it (keys of metrics.CORPUS_METRICS).
    read: (split, count, seed) -> the first `count` examples of `split`, each with
      inputs, targets and references.
  """
  name: str
  metric_names: Tuple[str, ...]
  read: Callable[[str, int, int], Sequence[Example]]
  # (split, seed) -> None: the split read once before any model work (files whole); a
  # seqio split is read only when the run reads it (TFDS would load the dataset here)
  check_split: Callable[[str, int], None] = lambda split, seed: None

  def examples(self, split: str, count: int, seed: int) -> List[Example]:
    """The first `count` examples of `split` (`seed` picks a generated stream)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
      raise ValueError(f"task {self.name!r}: count must be an int >= 1; got {count!r}")
    return list(self.read(split, count, seed))

  def evaluate(self, predictions: Sequence[str],
               examples: Sequence[Example]) -> Dict[str, float]:
    """The task's corpus metrics of predictions against the examples' references."""
    return metrics.evaluate(self.metric_names, predictions, [e.references for e in examples])


def _seqio_tasks(name: str):
  """calm_jax.data.seqio_tasks, imported on first use; without seqio / TensorFlow, an
  error naming the task and the install command."""
  try:
    from calm_jax.data import seqio_tasks  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(f"data.task={name!r} is a seqio task, but seqio / TensorFlow cannot "
                      f"be imported ({error}); install them with `pip install -r "
                      f"{SEQIO_REQUIREMENTS}`") from error
  return seqio_tasks


def run_task(name: str, skip_malformed: bool = False) -> RunTask:
  """The task `name`: a seqio task when it starts with `calm_`, else a tasks.py task (a
  JSON Lines task skips and counts malformed lines with `skip_malformed`). An unknown name
  lists the known ones of its registry."""
  if isinstance(name, str) and name.startswith(SEQIO_TASK_PREFIX):
    seqio_tasks = _seqio_tasks(name)
    return RunTask(name, seqio_tasks.metric_names(name),
                   functools.partial(seqio_tasks.text_examples, name))
  task = get_task(name)
  if skip_malformed:
    task = task.skipping_malformed()
  return RunTask(name, task.metric_names, task.examples, task.check_split)


def config_task(config: ml_collections.ConfigDict) -> RunTask:
  """data.task as the config reads it (data.skip_malformed applied)."""
  return run_task(config.data.task, bool(config.data.get("skip_malformed", False)))


def read_examples(name: str, split: str, count: int, seed: int) -> List[Example]:
  """The first `count` examples of `split` of task `name` (either registry), in a fixed
  order: `seed` picks a generated stream; files and TFDS are read unshuffled."""
  return run_task(name).examples(split, count, seed)


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
  """Examples of one split with their encoded inputs."""

  examples: List[Example]
  input_ids: np.ndarray  # [N, S] int32, padding = the vocabulary's pad id
  attention_mask: np.ndarray  # [N, S] int32, 1 at real ids
  truncated: int  # inputs cut to data.max_input_len

  @property
  def references(self) -> List[Sequence[str]]:
    return [e.references for e in self.examples]


def config_value(config: ml_collections.ConfigDict, key: str) -> Any:
  """The value of a dotted config key ('data.test_split')."""
  value = config
  for part in key.split("."):
    value = value[part]
  return value


def check_split(config: ml_collections.ConfigDict, task: RunTask, key: str) -> None:
  """The split named by config `key` reads (a file task: the file is there, not empty,
  every line well-formed); the error names the key."""
  split = config_value(config, key)
  try:
    task.check_split(split, config.seed)
  except (OSError, ValueError) as error:
    kind = OSError if isinstance(error, OSError) else ValueError
    raise kind(f"{key}={split!r} of data.task={task.name!r}: {error}") from None


def check_data(config: ml_collections.ConfigDict, split_keys: Sequence[str] = ()) -> Vocabulary:
  """The task exists (seqio importable for a `calm_` task), the splits named by
  `split_keys` (config keys such as 'data.test_split') can be read, and the vocabulary
  loads (before any model work)."""
  task = config_task(config)
  if not is_integer(config.data.max_input_len) or config.data.max_input_len < 1:
    raise ValueError(f"data.max_input_len must be >= 1, got {config.data.max_input_len!r} "
                     "(an integer: input ids kept per example)")
  for key in split_keys:
    check_split(config, task, key)
  return get_vocabulary(config.data.vocabulary)


def check_max_decode_len(config: ml_collections.ConfigDict) -> None:
  value = config.decode.max_decode_len
  if not is_integer(value) or value < 1:
    raise ValueError(f"decode.max_decode_len must be an integer >= 1 (output positions "
                     f"per example), got {value!r}")


def check_exit(exit_config: ExitConfig, model_config: T5Config) -> None:
  """The exit rule and its measure valid for the model; the message names the config's
  keys (ExitConfig's fields are the `exit` section's, one for one)."""
  try:
    checked_measure(exit_config, model_config)
  except ValueError as error:
    message = str(error).replace("ExitConfig.", "exit.")
    if message.startswith("unknown confidence measure"):
      message = f"exit.measure: {message}"
    raise ValueError(message) from None


def check_workdir(workdir: str) -> None:
  """The workdir is a directory that can be written (an existing one is probed with a file
  that is removed at once), or can be created: the first existing folder above it is a
  writable directory. "" (no outputs, tests) is not checked."""
  if not workdir:
    return
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"--workdir={workdir} is a file, not a directory; name a directory "
                     "(it is created if missing)")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ValueError(f"--workdir={workdir} cannot be created: {existing} is a file")
  try:
    handle, probe = tempfile.mkstemp(dir=existing, prefix=".calm_jax_probe-")
    os.close(handle)
    os.unlink(probe)
  except OSError as error:
    raise ValueError(f"--workdir={workdir} is not writable ({existing}: "
                     f"{error.strerror}); name a directory you can write to") from None


def split_examples(config: ml_collections.ConfigDict, split: str, count: int) -> List[Example]:
  """The first `count` examples of `split` of data.task (the run's seed picks a generated
  stream)."""
  return config_task(config).examples(split, count, config.seed)


def encode_split(config: ml_collections.ConfigDict, split: str, count: int,
                 vocabulary: Vocabulary) -> EncodedSplit:
  """`count` examples of `split` with their inputs encoded to data.max_input_len."""
  examples = split_examples(config, split, count)
  ids, mask, truncated = vocabulary.encode_batch([e.inputs for e in examples],
                                                 config.data.max_input_len)
  if truncated:
    logging.warning("%d of %d %s inputs were longer than data.max_input_len=%d and were cut",
                    truncated, len(examples), split, config.data.max_input_len)
  return EncodedSplit(examples, ids, mask, truncated)


def encode_targets(examples: Sequence[Example], vocabulary: Vocabulary,
                   max_length: int) -> np.ndarray:
  """Target ids [N, max_length] ending in EOS where they fit, for teacher forcing."""
  return vocabulary.encode_batch([e.targets for e in examples], max_length)[0]


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What a mode's run reads and writes, checked before any model work and built once: the
  config, the workdir, the vocabulary and the model source (loaded on demand)."""

  config: ml_collections.ConfigDict
  workdir: str
  vocabulary: Vocabulary
  model_shape: Optional[T5Config] = None  # the model's config, read before any loading

  def split(self, split: str, count: int) -> EncodedSplit:
    """`count` examples of `split` of data.task, their inputs encoded."""
    return encode_split(self.config, split, count, self.vocabulary)

  def load_model(self) -> Tuple[T5Config, Any]:
    """(config, params) of the run's model (`model` section), unchecked; says on process 0
    what was loaded, with a warning when a mode other than training runs random weights."""
    model_config, params = load_model(self.config.model, self.config.seed)
    if self.writes:
      print(f"[{self.config.mode}] model: {describe_source(self.config.model, self.config.seed)}"
            f" ({model_config.num_layers}+{model_config.num_decoder_layers} layers, "
            f"d_model {model_config.d_model}, vocabulary {model_config.vocab_size})", flush=True)
      if is_random(self.config.model) and self.config.mode not in TRAINING_MODES:
        logging.warning("%s runs a randomly initialised, untrained model: its outputs are "
                        "noise. Set model.checkpoint (a calm_jax export) or model.hf_path "
                        "(a Hugging Face T5 directory).", self.config.mode)
    return model_config, params

  def checked_model(self, exit_config: Optional[ExitConfig] = None) -> Tuple[T5Config, Any]:
    """The run's model, with `exit_config` and its measure (when given) valid for it and
    every id of the vocabulary inside its embedding."""
    model_config, params = self.load_model()
    if exit_config is not None:
      checked_measure(exit_config, model_config)
    self.vocabulary.check_model(model_config.vocab_size)
    return model_config, params

  def path(self, *names: str) -> str:
    """<workdir>/<name>/..."""
    return os.path.join(self.workdir, *names)

  @property
  def writes(self) -> bool:
    """Whether this process writes outputs and prints reports (process 0 only)."""
    return jax.process_index() == 0

  def write_json(self, name: str, value: Any) -> str:
    """Writes <workdir>/<name> (on process 0); returns its path."""
    path = self.path(name)
    if self.writes:
      write_json_atomically(path, value)
    return path

  def write_jsonl(self, name: str, records: Sequence[Any]) -> str:
    """Writes <workdir>/<name>, one JSON object a line (on process 0); returns its path."""
    path = self.path(name)
    if self.writes:
      write_jsonl_atomically(path, records)
    return path

  def write_text(self, name: str, text: str) -> str:
    """Writes <workdir>/<name> (on process 0); returns its path."""
    path = self.path(name)
    if self.writes:
      write_text_atomically(path, text)
    return path


def run_context(config: ml_collections.ConfigDict, workdir: str, reads_task: bool = True, *,
                splits: Sequence[str] = (), exits: Sequence[ExitConfig] = ()) -> RunContext:
  """The context of a run, every part checked before any model work: the workdir,
  decode.max_decode_len, the vocabulary, the model source (its config.json, not its
  weights), the vocabulary against the model's, each of `exits` against the model, then
  data.task and data.max_input_len (when the mode reads the task) with the splits named by
  the config keys `splits`."""
  check_workdir(workdir)
  check_max_decode_len(config)
  vocabulary = get_vocabulary(config.data.vocabulary)
  model_shape = source_config(config.model)
  vocabulary.check_model(model_shape.vocab_size)
  for exit_config in exits:
    check_exit(exit_config, model_shape)
  if reads_task:
    check_data(config, splits)
  return RunContext(config, workdir, vocabulary, model_shape)
