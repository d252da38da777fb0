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
from calm_jax.model.source import check_source, load_model
from calm_jax.utils.files import (write_json_atomically, write_jsonl_atomically,
                                  write_text_atomically)

SEQIO_TASK_PREFIX = "calm_"  # seqio_tasks.TASK_PREFIX, known here without importing seqio
SEQIO_REQUIREMENTS = "requirements-seqio.txt"
CLASSIFIER_DIR = "exit_classifiers"  # <workdir>/<this>/<name>: train_exit's output


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


def run_task(name: str) -> RunTask:
  """The task `name`: a seqio task when it starts with `calm_`, else a tasks.py task. An
  unknown name lists the known ones of its registry."""
  if isinstance(name, str) and name.startswith(SEQIO_TASK_PREFIX):
    seqio_tasks = _seqio_tasks(name)
    return RunTask(name, seqio_tasks.metric_names(name),
                   functools.partial(seqio_tasks.text_examples, name))
  task = get_task(name)
  return RunTask(name, task.metric_names, task.examples)


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


def check_data(config: ml_collections.ConfigDict) -> Vocabulary:
  """The task exists (seqio importable for a `calm_` task) and the vocabulary loads (before
  any model work)."""
  run_task(config.data.task)
  if config.data.max_input_len < 1:
    raise ValueError(f"data.max_input_len must be >= 1, got {config.data.max_input_len!r}")
  return get_vocabulary(config.data.vocabulary)


def split_examples(config: ml_collections.ConfigDict, split: str, count: int) -> List[Example]:
  """The first `count` examples of `split` of data.task (the run's seed picks a generated
  stream)."""
  return read_examples(config.data.task, split, count, config.seed)


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

  def split(self, split: str, count: int) -> EncodedSplit:
    """`count` examples of `split` of data.task, their inputs encoded."""
    return encode_split(self.config, split, count, self.vocabulary)

  def load_model(self) -> Tuple[T5Config, Any]:
    """(config, params) of the run's model (`model` section), unchecked."""
    return load_model(self.config.model, self.config.seed)

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


def run_context(config: ml_collections.ConfigDict, workdir: str,
                reads_task: bool = True) -> RunContext:
  """The context of a run, every part checked before any model work: data.task and
  data.max_input_len (when the mode reads the task), the vocabulary and the model source."""
  vocabulary = check_data(config) if reads_task else get_vocabulary(config.data.vocabulary)
  check_source(config.model)
  return RunContext(config, workdir, vocabulary)
