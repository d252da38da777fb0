"""The `train_exit` mode: train a learned exit classifier on a frozen backbone.

The backbone is the run's model (usually `--config.model.checkpoint=<workdir>/model`, what
`train` exported). Settings of `train_exit`, `exit` and `mesh` are checked before the model
loads. Checkpoints go to <workdir>/checkpoints/exit_<classifier> (resumable), metrics to
<workdir>/exit_<classifier>_metrics.jsonl and TensorBoard, and the trained classifier to
<workdir>/exit_classifiers/<classifier>, which decoding uses with
--config.exit.measure=<classifier> --config.exit.classifier_path=<that directory>.
"""

from __future__ import annotations

import os
from typing import Dict

import jax
import ml_collections

from calm_jax.decoding.classifiers import (check_classifier_options, get_classifier,
                                           init_classifier, save_classifier)
from calm_jax.decoding.exit_rule import ExitConfig, exit_point_layers
from calm_jax.model.source import check_source, load_model
from calm_jax.run_data import check_data
from calm_jax.train_mode import (loop_settings_from, mesh_config_from, optimizer_from,
                                 training_data)
from calm_jax.training.exit_classifier import (ClassifierObjective, asked_layers,
                                               train_classifier)
from calm_jax.training.sharding import make_mesh

CLASSIFIER_DIR = "exit_classifiers"


def classifier_options_from(section: ml_collections.ConfigDict) -> Dict[str, int]:
  """The options of `section.classifier` from the section's option fields."""
  name = section.classifier
  get_classifier(name)
  if name in ("meta_mlp", "three_state_mlp"):
    return {"hidden_width": section.hidden_width} if section.hidden_width else {}
  if name == "lstm":
    return {"num_layers": section.lstm_layers, "width": section.width}
  if name == "attention":
    return {"width": section.width, "num_heads": section.num_heads}
  return {}


def objective_from(section: ml_collections.ConfigDict, exit_points) -> ClassifierObjective:
  return ClassifierObjective(classifier=section.classifier, labels=section.labels,
                             balancing=section.balancing, loss=section.loss,
                             exit_points=tuple(exit_points))


def check_train_exit_config(config: ml_collections.ConfigDict):
  """Every setting of `train_exit`, `exit` and `mesh` checked before anything loads;
  returns (loop settings, optimizer, exit config, classifier options, mesh config)."""
  section = config.train_exit
  exit_config = ExitConfig.from_section(config.exit)
  settings = loop_settings_from(section, config.seed)
  optimizer = optimizer_from(section)
  optimizer.validate()
  objective_from(section, ()).validate()
  options = classifier_options_from(section)
  # The options' own checks (d_model only fills a default width, so any value serves).
  check_classifier_options(section.classifier, 1, options)
  mesh_config = mesh_config_from(config.mesh)
  settings.validate(make_mesh(mesh_config))
  check_source(config.model)
  check_data(config)
  return settings, optimizer, exit_config, options, mesh_config


def train_exit_examples(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains config.train_exit.classifier; returns the directory it was saved to."""
  section = config.train_exit
  settings, optimizer, exit_config, options, mesh_config = check_train_exit_config(config)
  model_config, backbone = load_model(config.model, config.seed)
  exit_config.validate(model_config.num_decoder_layers)
  objective = objective_from(section, exit_point_layers(exit_config,
                                                        model_config.num_decoder_layers))
  asked_layers(objective, model_config.num_decoder_layers)
  params = init_classifier(section.classifier, model_config,
                           jax.random.PRNGKey(config.seed + 1), **options)
  data = training_data(config, model_config.vocab_size)
  if jax.process_index() == 0:
    print(f"Training exit classifier {section.classifier} ({options or 'default options'}) "
          f"on a frozen {model_config.num_decoder_layers}-layer decoder, labels "
          f"{objective.labels}, loss {objective.loss}, exit points {objective.exit_points}",
          flush=True)
  result = train_classifier(model_config, backbone, params, data, objective=objective,
                            optimizer=optimizer, settings=settings, workdir=workdir,
                            mesh=make_mesh(mesh_config), rules=mesh_config.rules)
  directory = os.path.join(workdir, CLASSIFIER_DIR, section.classifier)
  if jax.process_index() == 0:
    save_classifier(directory, section.classifier, jax.device_get(result.params))
    last = result.history[-1] if result.history else None
    if last:
      shown = [f"{a:.3f}" if a is not None else "-" for a in last["layer_dont_exit_f1"]]
      print(f"[train_exit] final loss {last['loss']:.4f}; per-layer F1 of 'don't exit': "
            f"{', '.join(shown)}", flush=True)
    print(f"[train_exit] saved to {directory}; decode with --config.exit.measure="
          f"{section.classifier} --config.exit.classifier_path={directory}", flush=True)
  return directory
