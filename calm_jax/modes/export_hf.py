"""The `export_hf` mode: the run's model (a `train` export, a Hugging Face import or a fresh
initialisation) written as a Hugging Face T5 directory, <workdir>/hf_export.

It holds config.json and model.safetensors (model/hf_export.py), the tokenizer files of
`data.vocabulary` when that is a tokenizer directory, and every saved exit classifier of the
run under exit_classifiers/<name> (those `train_exit` wrote to <workdir>/exit_classifiers
and `exit.classifier_path`), each checked against the model. The directory is built beside
the target and renamed into place, so it is complete or absent.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Tuple

import ml_collections
from absl import logging

from calm_jax.exit_classifiers.storage import INFO_FILE, load_classifier, save_classifier
from calm_jax.model.hf_export import write_hf_t5
from calm_jax.modes.context import CLASSIFIER_DIR, RunContext, run_context
from calm_jax.utils.files import write_directory_atomically

OUTPUT_DIR = "hf_export"


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the export_hf mode writes, checked."""

  context: RunContext
  tokenizer_dir: str  # data.vocabulary when it is a tokenizer directory, else ""
  classifier_dirs: Tuple[str, ...]  # saved exit classifiers exported beside the model


def _saved_classifiers(config: ml_collections.ConfigDict, workdir: str) -> Tuple[str, ...]:
  """The run's saved classifiers: <workdir>/exit_classifiers/* and exit.classifier_path."""
  root = os.path.join(workdir, CLASSIFIER_DIR)
  found = [os.path.join(root, name) for name in sorted(os.listdir(root))
           if os.path.isfile(os.path.join(root, name, INFO_FILE))] if os.path.isdir(root) else []
  path = config.exit.classifier_path
  if path:
    if not os.path.isfile(os.path.join(path, INFO_FILE)):
      raise ValueError(f"exit.classifier_path={path!r} is not a saved exit classifier "
                       f"({INFO_FILE} is missing)")
    if os.path.abspath(path) not in map(os.path.abspath, found):
      found.append(path)
  return tuple(found)


def check(config: ml_collections.ConfigDict, workdir: str) -> Settings:
  """The model source, the vocabulary and the classifiers to export, before any model work."""
  context = run_context(config, workdir, reads_task=False)
  tokenizer_dir = "" if config.data.vocabulary == "byte" else config.data.vocabulary
  return Settings(context, tokenizer_dir, _saved_classifiers(config, workdir))


def _write_export(settings: Settings, model_config, params, directory: str) -> None:
  write_hf_t5(directory, model_config, params, settings.tokenizer_dir or None)
  names = set()
  for source in settings.classifier_dirs:
    saved = load_classifier(source, model_config)
    if saved.name in names:
      raise ValueError(f"two saved exit classifiers named {saved.name!r} to export "
                       f"({', '.join(settings.classifier_dirs)}); keep one")
    names.add(saved.name)
    save_classifier(os.path.join(directory, CLASSIFIER_DIR, saved.name), saved.name,
                    saved.params)


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes <workdir>/hf_export (process 0); returns its path."""
  settings = check(config, workdir)
  context = settings.context
  model_config, params = context.checked_model()
  path = context.path(OUTPUT_DIR)
  if context.writes:
    write_directory_atomically(path, lambda directory: _write_export(
        settings, model_config, params, directory))
    logging.info("wrote %s", path)
    print(f"[export_hf] {path}: Hugging Face T5 ({model_config.num_layers}+"
          f"{model_config.num_decoder_layers} layers, tied head: "
          f"{model_config.tie_word_embeddings}), tokenizer: {settings.tokenizer_dir or 'none'}, "
          f"exit classifiers: {len(settings.classifier_dirs)}")
  return path
