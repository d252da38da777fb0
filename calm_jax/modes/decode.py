"""The `decode` mode: greedy early-exit decoding of `data.num_examples` examples of the test
split; writes <workdir>/decode.jsonl with every token's exit layer and prints each example.
With exit.adaptive_threshold='beta_mixture' (FREE) the examples are decoded one per call and
lambda is refitted between calls."""

from __future__ import annotations

import dataclasses
import functools

import ml_collections
import numpy as np
from absl import logging

from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.free_adaptive import (AdaptiveThreshold, adaptive_threshold_for,
                                             decode_batches, describe)
from calm_jax.decoding.generate import generate
from calm_jax.exit_classifiers.storage import classifier_params_for
from calm_jax.model.source import describe_source
from calm_jax.modes import memory
from calm_jax.modes.context import RunContext, run_context
from calm_jax.modes.mesh import run_mesh

OUTPUT_FILE = "decode.jsonl"


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the decode mode runs on, checked."""

  context: RunContext
  exit: ExitConfig


def check(config: ml_collections.ConfigDict, workdir: str) -> Settings:
  """The `exit` section, the task and its test split, the model source, the exit rule and
  vocabulary against the model, and the decode's memory, checked before the model loads."""
  exit_config = ExitConfig.from_section(config.exit)
  context = run_context(config, workdir, splits=("data.test_split",), exits=(exit_config,))
  memory.check_decoding(config, context.model_shape, config.data.num_examples,
                        "data.num_examples")
  return Settings(context, exit_config)


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Decodes the examples; returns the path of decode.jsonl."""
  settings = check(config, workdir)
  context, exit_config = settings.context, settings.exit
  mesh = run_mesh(config, "decode")
  model_config, params = context.checked_model(exit_config)
  split = context.split(config.data.test_split, config.data.num_examples)
  decode = functools.partial(generate, model_config, params,
                             classifier_params=classifier_params_for(exit_config, model_config),
                             max_decode_len=config.decode.max_decode_len, mesh=mesh)
  adaptive = adaptive_threshold_for(exit_config)
  if adaptive is None:
    out = decode(split.input_ids, split.attention_mask, exit=exit_config)
    tokens, exit_layers = np.asarray(out.tokens), np.asarray(out.exit_layers)
  else:
    tokens, exit_layers = _decode_adaptively(decode, split, exit_config, adaptive)
    if context.writes:
      print(f"[decode] {describe(adaptive, exit_config.threshold)}")
  records = [{"inputs": e.inputs, "targets": e.targets,
              "output": context.vocabulary.decode(row), "output_ids": row.tolist(),
              "exit_layers": layers[layers > 0].tolist()}
             for e, row, layers in zip(split.examples, tokens, exit_layers)]
  path = context.write_jsonl(OUTPUT_FILE, records)
  if context.writes:
    source = describe_source(config.model, config.seed)
    print(f"Early-exit greedy decoding ({exit_config.measure}, lambda={exit_config.threshold}) "
          f"with a {model_config.num_decoder_layers}-layer decoder; model: {source}")
    for record in records:
      print(f"{record['inputs']!r:28} -> {record['output']!r} (target {record['targets']!r}); "
            f"exit layers {record['exit_layers']}")
    logging.info("wrote %s", path)
  return path


def _decode_adaptively(decode, split, exit_config: ExitConfig, adaptive: AdaptiveThreshold):
  """Tokens and exit layers [N, T] of the examples decoded one per call, FREE's
  beta_mixture lambda refitted after each (exit.adaptive_threshold)."""
  batches = [(split.input_ids[i:i + 1], split.attention_mask[i:i + 1])
             for i in range(len(split.input_ids))]
  outputs = decode_batches(lambda ids, mask, current: decode(ids, mask, exit=current),
                           batches, exit_config, adaptive)
  return (np.concatenate([np.asarray(out.tokens) for out in outputs]),
          np.concatenate([np.asarray(out.exit_layers) for out in outputs]))
