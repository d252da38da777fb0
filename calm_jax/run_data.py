"""The examples a run reads: `data.task`'s splits through `data.vocabulary`, in one place,
so every mode (train, decode, calibrate, evaluate, analyze) sees the same data the same way.

Splits: `train` trains; `data.calibration_split` (validation) calibrates; `data.test_split`
(test) decodes, evaluates and analyses.
"""

from __future__ import annotations

import dataclasses
from typing import List, Sequence

import ml_collections
import numpy as np
from absl import logging

from calm_jax.data.tasks import Example, get_task
from calm_jax.data.vocabulary import Vocabulary, get_vocabulary


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
  """The task exists and the vocabulary loads (before any model work)."""
  get_task(config.data.task)
  if config.data.max_input_len < 1:
    raise ValueError(f"data.max_input_len must be >= 1, got {config.data.max_input_len!r}")
  return get_vocabulary(config.data.vocabulary)


def split_examples(config: ml_collections.ConfigDict, split: str, count: int) -> List[Example]:
  """The first `count` examples of `split` of data.task (the run's seed picks a generated
  stream)."""
  return get_task(config.data.task).examples(split, count, config.seed)


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
