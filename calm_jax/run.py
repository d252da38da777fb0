"""Library entry of the main job: one function per mode, chosen by `config.mode`."""

from __future__ import annotations

import os
from typing import Callable, Dict

import jax
import ml_collections
import numpy as np
from absl import logging

from calm_jax.all_mode import run_all
from calm_jax.analyze_mode import analyze_examples
from calm_jax.calibrate_mode import calibrate_examples
from calm_jax.evaluate_mode import evaluate_examples
from calm_jax.decoding.classifiers import classifier_params_for
from calm_jax.decoding.exit_rule import ExitConfig
from calm_jax.decoding.generate import generate
from calm_jax.files import write_jsonl_atomically
from calm_jax.generate_mode import generate_texts
from calm_jax.model.source import load_model
from calm_jax.run_data import check_data, encode_split
from calm_jax.train_exit_mode import train_exit_examples
from calm_jax.train_mode import train_examples


def exit_config_from(config: ml_collections.ConfigDict) -> ExitConfig:
  """ExitConfig from the `exit` section of a run config."""
  return ExitConfig.from_section(config.exit)


def decode_examples(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Greedy early-exit decoding of data.num_examples test examples; writes decode.jsonl
  with the exit layer of every token."""
  exit_config = exit_config_from(config)
  vocabulary = check_data(config)
  model_config, params = load_model(config.model, config.seed)
  exit_config.validate(model_config.num_decoder_layers)
  vocabulary.check_model(model_config.vocab_size)
  split = encode_split(config, config.data.test_split, config.data.num_examples, vocabulary)
  examples, input_ids, mask = split.examples, split.input_ids, split.attention_mask
  out = generate(model_config, params, input_ids, mask, exit=exit_config,
                 classifier_params=classifier_params_for(exit_config, model_config),
                 max_decode_len=config.decode.max_decode_len)
  tokens, exit_layers = np.asarray(out.tokens), np.asarray(out.exit_layers)
  records = [{"inputs": e.inputs, "targets": e.targets, "output": vocabulary.decode(row),
              "output_ids": row.tolist(), "exit_layers": layers[layers > 0].tolist()}
             for e, row, layers in zip(examples, tokens, exit_layers)]
  path = os.path.join(workdir, "decode.jsonl")
  if jax.process_index() == 0:
    write_jsonl_atomically(path, records)
    source = config.model.hf_path or f"fresh random initialisation (seed {config.seed}, untrained)"
    print(f"Early-exit greedy decoding ({exit_config.measure}, lambda={exit_config.threshold}) "
          f"with a {model_config.num_decoder_layers}-layer decoder; model: {source}")
    for record in records:
      print(f"{record['inputs']!r:28} -> {record['output']!r} (target {record['targets']!r}); "
            f"exit layers {record['exit_layers']}")
    logging.info("wrote %s", path)
  return path


MODES: Dict[str, Callable[[ml_collections.ConfigDict, str], str]] = {
    "decode": decode_examples,
    "train": train_examples,
    "train_exit": train_exit_examples,
    "calibrate": calibrate_examples,
    "analyze": analyze_examples,
    "evaluate": evaluate_examples,
    "all": run_all,
    "generate": generate_texts,
}


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Validates the mode and workdir, then runs the mode; returns its main output path."""
  if config.mode not in MODES:
    raise ValueError(f"config.mode={config.mode!r} is not a mode; allowed: {', '.join(MODES)}")
  if not workdir:
    raise ValueError("--workdir is required: the directory where outputs are written")
  os.makedirs(workdir, exist_ok=True)
  return MODES[config.mode](config, workdir)
