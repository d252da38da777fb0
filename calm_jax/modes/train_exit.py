"""The `train_exit` mode: train a learned exit classifier on a frozen backbone.

The backbone is the run's model (usually `--config.model.checkpoint=<workdir>/model`, what
`train` exported). Settings of `train_exit`, `exit` and `mesh` are checked before the model
loads. Checkpoints go to <workdir>/checkpoints/exit_<classifier> (resumable), metrics to
<workdir>/exit_<classifier>_metrics.jsonl and TensorBoard, and the trained classifier to
<workdir>/exit_classifiers/<classifier>, which decoding uses with
--config.exit.measure=<classifier> --config.exit.classifier_path=<that directory>.
"""

from __future__ import annotations

import dataclasses
from typing import Dict

import jax
import ml_collections

from calm_jax.decoding.exit_rule import ExitConfig, exit_point_layers
from calm_jax.decoding.measures import checked_measure
from calm_jax.exit_classifiers.registry import (check_classifier_options, get_classifier,
                                                init_classifier)
from calm_jax.exit_classifiers.storage import save_classifier
from calm_jax.modes import memory
from calm_jax.modes.context import CLASSIFIER_DIR, RunContext, run_context
from calm_jax.modes.training_setup import TrainingSetup, training_data, training_setup
from calm_jax.training.exit_classifier import (ClassifierObjective, asked_layers,
                                               train_classifier)
from calm_jax.training.sharding import make_mesh


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


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the train_exit mode runs on, checked."""

  context: RunContext
  setup: TrainingSetup  # the `train_exit` section's loop and optimizer, and the mesh
  exit: ExitConfig  # where the classifier is asked to exit (its exit points)
  options: Dict[str, int]  # the classifier's options


def check(config: ml_collections.ConfigDict, workdir: str) -> Settings:
  """Every setting of `train_exit`, `exit` and `mesh`, the task and the model source,
  checked before anything loads."""
  section = config.train_exit
  exit_config = ExitConfig.from_section(config.exit)
  setup = training_setup(section, config, "train_exit")
  objective_from(section, ()).validate()
  options = classifier_options_from(section)
  # The options' own checks (d_model only fills a default width, so any value serves).
  check_classifier_options(section.classifier, 1, options)
  context = run_context(config, workdir, splits=("train.split",), exits=(exit_config,))
  layers = context.model_shape.num_decoder_layers
  asked_layers(objective_from(section, exit_point_layers(exit_config, layers)), layers)
  memory.check_training(config, context.model_shape, "train_exit", trains_model=False)
  return Settings(context, setup, exit_config, options)


def run(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Trains config.train_exit.classifier; returns the directory it was saved to."""
  section = config.train_exit
  settings = check(config, workdir)
  context, setup, options = settings.context, settings.setup, settings.options
  model_config, backbone = context.load_model()
  checked_measure(settings.exit, model_config)
  objective = objective_from(section, exit_point_layers(settings.exit,
                                                        model_config.num_decoder_layers))
  asked_layers(objective, model_config.num_decoder_layers)
  params = init_classifier(section.classifier, model_config,
                           jax.random.PRNGKey(config.seed + 1), **options)
  data = training_data(context, model_config.vocab_size)
  if context.writes:
    print(f"Training exit classifier {section.classifier} ({options or 'default options'}) "
          f"on a frozen {model_config.num_decoder_layers}-layer decoder, labels "
          f"{objective.labels}, loss {objective.loss}, exit points {objective.exit_points}",
          flush=True)
  result = train_classifier(model_config, backbone, params, data, objective=objective,
                            optimizer=setup.optimizer, settings=setup.loop, workdir=workdir,
                            mesh=make_mesh(setup.mesh), rules=setup.mesh.rules)
  directory = context.path(CLASSIFIER_DIR, section.classifier)
  if context.writes:
    save_classifier(directory, section.classifier, jax.device_get(result.params))
    _print_summary(result.history, section.classifier, directory)
  return directory


def _print_summary(history, classifier: str, directory: str) -> None:
  """The last logged step's loss and per-layer F1, and how to decode with the classifier."""
  last = history[-1] if history else None
  if last:
    shown = [f"{a:.3f}" if a is not None else "-" for a in last["layer_dont_exit_f1"]]
    print(f"[train_exit] final loss {last['loss']:.4f}; per-layer F1 of 'don't exit': "
          f"{', '.join(shown)}", flush=True)
  print(f"[train_exit] saved to {directory}; decode with --config.exit.measure="
        f"{classifier} --config.exit.classifier_path={directory}", flush=True)
